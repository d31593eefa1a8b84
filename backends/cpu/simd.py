"""Explicit SIMD vectors for Numba kernels: one 64-byte register of float32 (16 lanes) or
float64 (8 lanes) as a value, with masked loads and stores and +, -, * .

Why: LLVM vectorises a loop only when it can prove the accesses simple, and the Winograd
tile transforms (``winograd.py``) read tiles at a stride of 2 or 4 along a row and scatter
each tile over 16 or 36 position planes: written one tile at a time they ran scalar, about as
long as the GEMMs they feed. Written on ``Vector`` values, one tile per lane (gathered, so a
vector can span several short rows), they are the same arithmetic on 16 tiles at once: each
lane computes exactly what the scalar code did, in the same order (no fused multiply-adds
are formed), so results are the same bits.

- ``load(a, i, count)``: lanes a[i : i + lanes], only the first ``count`` lanes read (the
  rest are zero), so a partial vector never reads past an array's end.
- ``load_gather(a, i, offsets, count)``: lane l = a[i + offsets[l]], first ``count`` lanes
  (a hardware gather; offsets an int32 array).
- ``load_lanes(a, i, step, bits)``: lane l = a[i + l * step] where bit l of ``bits`` is set,
  the others zero and never read (a row of a padded or strided convolution window;
  ``window_bits(start, stop)`` makes the bits of lanes start to stop).
- ``store(a, i, v, count)``: the first ``count`` lanes of v to a[i:].
- ``store_interleaved(a, i, (v0, ..., vk-1), start, stop)``: a[i + e] = element e of
  v0[0], v1[0], ..., vk-1[0], v0[1], ... for start <= e < stop (k = 2 or 4: one output row of
  2x2 or 4x4 tiles, lane = tile; a window of it when the lanes span several rows).
- ``transpose(a, i, stride, rows, columns, out, j)``: out[j + c * lanes + k] = a[i + k * stride
  + c] for rows k < ``rows`` and columns c < ``columns`` (zero elsewhere in the lanes x lanes
  block; nothing past them read): the block turned around in registers (log2(lanes) rounds of
  shuffles), so channel-first planes become vectors of one pixel's channels and back without
  a gather or scatter per vector.
- ``relu(v)``: 0 where v <= 0, else v (NaN stays NaN, as torch.relu); ``clamp(v, low,
  high)``: low where v < low, high where v > high, else v (hardtanh's, NaN stays NaN): the
  epilogue's comparisons (``epilogue.py``), so the same bits.
- ``v + w``, ``v - w``, ``v * w``, ``-v``: lane by lane; a scalar operand is cast to the vector's
  type and repeated in every lane (exact for the small integer and power-of-two constants and
  float32 biases the kernels use).
- ``load_double(a, i, count)``: 8 lanes of float64 from a float32 or float64 array;
  ``broadcast(x)``: x in every lane; ``total(v)``: the lanes' sum, in lane order.
- ``lanes(a)``: lanes of a vector of ``a``'s dtype, a compile-time constant.

Arrays are 1-D and contiguous; indices are element offsets. The lane count is fixed at 64
bytes whatever the machine: LLVM splits the operations where the CPU lacks AVX-512, so the
code stays correct everywhere and fast on this one.
"""

from __future__ import annotations

import operator

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic, models, overload, register_model

VECTOR_BYTES = 64
_i32 = ir.IntType(32)


class Vector(types.Type):
    """A 64-byte SIMD register of ``dtype`` (float32 or float64) as one value."""

    def __init__(self, dtype: types.Float) -> None:
        self.dtype = dtype
        self.lanes = VECTOR_BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


def _element_pointer(context, builder, array_type, array, index_type, index):
    """Pointer to ``array[index]`` (a 1-D contiguous array)."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [context.cast(builder, index, index_type, types.intp)])


def _window_mask(context, builder, types_, values, elements):
    """<elements x i1>: element e on where start <= e < stop (``values`` = start, stop)."""
    below_stop = _lane_mask(context, builder, types_[1], values[1], elements)
    below_start = _lane_mask(context, builder, types_[0], values[0], elements)
    return builder.and_(below_stop, builder.not_(below_start))


def _lane_mask(context, builder, count_type, count, elements):
    """<elements x i1> (elements <= 64): element e on where e < count, built as an integer's
    low bits (a k-register move, where comparing index vectors took one instruction per 8
    elements)."""
    i64 = ir.IntType(64)
    needed = context.cast(builder, count, count_type, types.int64)
    zero, full = ir.Constant(i64, 0), ir.Constant(i64, elements)
    needed = builder.select(builder.icmp_signed("<", needed, zero), zero, needed)
    low = builder.sub(builder.shl(ir.Constant(i64, 1), needed), ir.Constant(i64, 1))
    low = builder.select(builder.icmp_signed(">=", needed, full), ir.Constant(i64, -1), low)
    bits = builder.trunc(low, ir.IntType(elements)) if elements < 64 else low
    return builder.bitcast(bits, ir.VectorType(ir.IntType(1), elements))


def _splat(builder, value, vector_type):
    one = builder.insert_element(ir.Constant(vector_type, None), value, ir.Constant(_i32, 0))
    return builder.shuffle_vector(
        one, one, ir.Constant(ir.VectorType(_i32, vector_type.count), [0] * vector_type.count)
    )


def _masked_load(builder, pointer, vector_type, mask):
    name = f"llvm.masked.load.v{vector_type.count}{_suffix(vector_type.element)}.p0"
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector_type, [pointer.type, _i32, mask.type, vector_type]),
        name,
    )
    zeros = ir.Constant(vector_type, [0.0] * vector_type.count)
    return builder.call(function, [pointer, ir.Constant(_i32, 1), mask, zeros])


def _masked_store(builder, value, pointer, mask):
    vector_type = value.type
    name = f"llvm.masked.store.v{vector_type.count}{_suffix(vector_type.element)}.p0"
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vector_type, pointer.type, _i32, mask.type]),
        name,
    )
    builder.call(function, [value, pointer, ir.Constant(_i32, 1), mask])


def _suffix(element) -> str:
    return "f32" if isinstance(element, ir.FloatType) else "f64"


def _vector_of(context, array_type):
    """(the 64-byte LLVM vector type of ``array_type``'s elements, its lane count)."""
    element = context.get_value_type(array_type.dtype)
    lanes = VECTOR_BYTES * 8 // array_type.dtype.bitwidth
    return ir.VectorType(element, lanes), lanes


def _fma(builder, vector_type):
    """The ``llvm.fma`` intrinsic of ``vector_type`` (a fused multiply-add per lane)."""
    return cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector_type, [vector_type] * 3),
        f"llvm.fma.v{vector_type.count}{_suffix(vector_type.element)}",
    )


def _vector_pointer(builder, pointer, vector_type):
    return builder.bitcast(pointer, vector_type.as_pointer())


@intrinsic
def load(typingctx, array, index, count):
    vector = Vector(array.dtype)
    sig = vector(array, index, count)

    def codegen(context, builder, signature, args):
        array_type, index_type, count_type = signature.args
        vector_type = context.get_value_type(vector)
        pointer = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        mask = _lane_mask(context, builder, count_type, args[2], vector.lanes)
        return _masked_load(
            builder, _vector_pointer(builder, pointer, vector_type), vector_type, mask
        )

    return sig, codegen


@intrinsic
def store(typingctx, array, index, value, count):
    sig = types.none(array, index, value, count)

    def codegen(context, builder, signature, args):
        array_type, index_type, value_type, count_type = signature.args
        pointer = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        mask = _lane_mask(context, builder, count_type, args[3], value_type.lanes)
        value = args[2]
        _masked_store(builder, value, _vector_pointer(builder, pointer, value.type), mask)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_interleaved(typingctx, array, index, values, start, stop):
    """See the module docstring; ``values`` is a tuple of 2 or 4 vectors."""
    if not isinstance(values, types.UniTuple) or values.count not in (2, 4):
        return None
    sig = types.none(array, index, values, start, stop)

    def codegen(context, builder, signature, args):
        array_type, index_type, tuple_type = signature.args[:3]
        k, lanes = tuple_type.count, tuple_type.dtype.lanes
        parts = [builder.extract_value(args[2], j) for j in range(k)]
        while len(parts) > 1:  # concatenate: v0 | v1 | ... (k lanes-wide vectors in a row)
            width = parts[0].type.count
            both = ir.Constant(ir.VectorType(_i32, 2 * width), list(range(2 * width)))
            parts = [
                builder.shuffle_vector(a, b, both)
                for a, b in zip(parts[::2], parts[1::2], strict=True)
            ]
        order = [j * lanes + lane for lane in range(lanes) for j in range(k)]
        wide = builder.shuffle_vector(
            parts[0], parts[0], ir.Constant(ir.VectorType(_i32, k * lanes), order)
        )
        pointer = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        mask = _window_mask(context, builder, signature.args[3:], args[3:], k * lanes)
        _masked_store(builder, wide, _vector_pointer(builder, pointer, wide.type), mask)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def lanes(typingctx, array):
    sig = types.intp(array)
    count = VECTOR_BYTES * 8 // array.dtype.bitwidth

    def codegen(context, builder, signature, args):
        return ir.Constant(cgutils.intp_t, count)

    return sig, codegen


def _binary(instruction: str):
    """An intrinsic for ``instruction`` (fadd, fsub, fmul) on two vectors, or a vector and a
    scalar (cast to the vector's type, in every lane)."""

    @intrinsic
    def apply(typingctx, left, right):
        vector = left if isinstance(left, Vector) else right
        sig = vector(left, right)

        def codegen(context, builder, signature, args):
            operands = []
            for kind, value in zip(signature.args, args, strict=True):
                if not isinstance(kind, Vector):
                    scalar = context.cast(builder, value, kind, vector.dtype)
                    vector_type = context.get_value_type(vector)
                    value = _splat(builder, scalar, vector_type)
                operands.append(value)
            return getattr(builder, instruction)(*operands)

        return sig, codegen

    return apply


def _scalar(kind) -> bool:
    return isinstance(kind, (types.Float, types.Integer))


def _overload_binary(operation, instruction: str) -> None:
    apply = _binary(instruction)

    @overload(operation)
    def _vector_operation(left, right):
        vectors = isinstance(left, Vector), isinstance(right, Vector)
        if vectors == (True, True) and left == right:
            return lambda left, right: apply(left, right)
        if (
            vectors == (True, False)
            and _scalar(right)
            or vectors == (False, True)
            and _scalar(left)
        ):
            return lambda left, right: apply(left, right)
        return None


_overload_binary(operator.add, "fadd")
_overload_binary(operator.sub, "fsub")
_overload_binary(operator.mul, "fmul")


@intrinsic
def _negate(typingctx, value):
    sig = value(value)

    def codegen(context, builder, signature, args):
        return builder.fneg(args[0])

    return sig, codegen


@overload(operator.neg)
def _vector_negation(value):
    if isinstance(value, Vector):
        return lambda value: _negate(value)
    return None


@intrinsic
def load_gather(typingctx, array, index, offsets, count):
    """lane l = array[index + offsets[l]] (offsets: an int32 array of at least lanes
    entries) for the first ``count`` lanes, the others zero: a hardware gather."""
    vector = Vector(array.dtype)
    sig = vector(array, index, offsets, count)

    def codegen(context, builder, signature, args):
        array_type, index_type, offsets_type, count_type = signature.args
        lanes = vector.lanes
        base = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        table = context.make_array(offsets_type)(context, builder, args[2]).data
        int_vector = ir.VectorType(_i32, lanes)
        shifts = builder.load(builder.bitcast(table, int_vector.as_pointer()), align=4)
        shifts = builder.sext(shifts, ir.VectorType(ir.IntType(64), lanes))
        mask = _lane_mask(context, builder, count_type, args[3], lanes)
        return _gather(builder, base, shifts, mask, context.get_value_type(vector))

    return sig, codegen


@intrinsic
def transpose(typingctx, array, index, stride, rows, columns, out, at):
    """See the module docstring."""
    vector = Vector(array.dtype)
    sig = types.none(array, index, stride, rows, columns, out, at)

    def codegen(context, builder, signature, args):
        array_type, index_type, stride_type, rows_type, columns_type = signature.args[:5]
        out_type, at_type = signature.args[5:]
        lanes, wide = vector.lanes, context.get_value_type(vector)
        base = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        stride = context.cast(builder, args[2], stride_type, types.intp)
        rows = context.cast(builder, args[3], rows_type, types.intp)
        within = _lane_mask(context, builder, columns_type, args[4], lanes)
        none = ir.Constant(within.type, [0] * lanes)
        vectors = []
        for k in range(lanes):  # rows past ``rows``: an all-off mask, so no address is read
            k_ = ir.Constant(cgutils.intp_t, k)
            pointer = _vector_pointer(builder, builder.gep(base, [builder.mul(stride, k_)]), wide)
            mask = builder.select(builder.icmp_signed("<", k_, rows), within, none)
            vectors.append(_masked_load(builder, pointer, wide, mask))
        target = _element_pointer(context, builder, out_type, args[5], at_type, args[6])
        for c, value in enumerate(_transpose(builder, vectors)):
            pointer = builder.gep(target, [ir.Constant(cgutils.intp_t, c * lanes)])
            builder.store(value, _vector_pointer(builder, pointer, wide), align=1)
        return context.get_dummy_value()

    return sig, codegen


def _transpose(builder, vectors):
    """The n x n block of n vectors of n lanes turned around: each round swaps, in every pair
    of rows i and i + s, the elements whose column differs from the row in bit s (one
    two-input shuffle a row); after the rounds for every bit, element (r, c) holds (c, r)."""
    n = len(vectors)
    span = n // 2
    while span:
        low = [j if j & span == 0 else n + j - span for j in range(n)]
        high = [j + span if j & span == 0 else n + j for j in range(n)]
        low, high = (ir.Constant(ir.VectorType(_i32, n), order) for order in (low, high))
        turned = list(vectors)
        for i in range(n):
            if i & span == 0:
                a, b = vectors[i], vectors[i + span]
                turned[i] = builder.shuffle_vector(a, b, low)
                turned[i + span] = builder.shuffle_vector(a, b, high)
        vectors, span = turned, span // 2
    return vectors


@intrinsic
def relu(typingctx, value):
    if not isinstance(value, Vector):
        return None
    sig = value(value)

    def codegen(context, builder, signature, args):
        return _relu(builder, args[0])

    return sig, codegen


@intrinsic
def clamp(typingctx, value, low, high):
    if not isinstance(value, Vector):
        return None
    sig = value(value, low, high)

    def codegen(context, builder, signature, args):
        low_, high_ = (
            _splat(builder, context.cast(builder, bound, kind, value.dtype), args[0].type)
            for bound, kind in zip(args[1:], signature.args[1:], strict=True)
        )
        return _clamp(builder, args[0], low_, high_)

    return sig, codegen


def _relu(builder, value):
    """0 where value <= 0, else value (NaN kept): ``epilogue.py``'s ReLU on a vector."""
    zeros = ir.Constant(value.type, [0.0] * value.type.count)
    return builder.select(builder.fcmp_ordered("<=", value, zeros), zeros, value)


def _clamp(builder, value, low, high):
    """low where value < low, high where value > high, else value (NaN kept; low and high
    vectors): ``epilogue.py``'s hardtanh on a vector."""
    above = builder.select(builder.fcmp_ordered(">", value, high), high, value)
    return builder.select(builder.fcmp_ordered("<", value, low), low, above)


@intrinsic
def load_lanes(typingctx, array, index, step, bits):
    """lane l = array[index + l * step] where bit l of the integer ``bits`` is set, the others
    zero and never read: a masked load at step 1; at step 2 a masked load of twice the lanes
    (the odd elements masked off) and a shuffle, several times faster than the gather taken
    at other steps. A row window of a padded or strided convolution, its lanes computed once
    as bits (``window_bits``)."""
    vector = Vector(array.dtype)
    sig = vector(array, index, step, bits)

    def codegen(context, builder, signature, args):
        array_type, index_type, step_type, bits_type = signature.args
        lanes, wide = vector.lanes, context.get_value_type(vector)
        i64 = ir.IntType(64)
        base = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        bits = context.cast(builder, args[3], bits_type, types.int64)
        mask = builder.bitcast(
            builder.trunc(bits, ir.IntType(lanes)), ir.VectorType(ir.IntType(1), lanes)
        )
        step = context.cast(builder, args[2], step_type, types.int64)
        with builder.if_else(builder.icmp_signed("==", step, ir.Constant(i64, 1))) as branches:
            (contiguous, strided) = branches
            with contiguous:
                loaded = _masked_load(builder, _vector_pointer(builder, base, wide), wide, mask)
                loaded_in = builder.block
            with strided:
                two = builder.icmp_signed("==", step, ir.Constant(i64, 2))
                with builder.if_else(two) as (pairs, other):
                    with pairs:
                        even = _load_even(builder, base, mask, wide)
                        even_in = builder.block
                    with other:
                        positions = ir.Constant(ir.VectorType(i64, lanes), list(range(lanes)))
                        shifts = builder.mul(positions, _splat(builder, step, positions.type))
                        gathered = _gather(builder, base, shifts, mask, wide)
                        gathered_in = builder.block
                strided_value = builder.phi(wide)
                strided_value.add_incoming(even, even_in)
                strided_value.add_incoming(gathered, gathered_in)
                strided_in = builder.block
        value = builder.phi(wide)
        value.add_incoming(loaded, loaded_in)
        value.add_incoming(strided_value, strided_in)
        return value

    return sig, codegen


@njit(cache=True)
def window_bits(start, stop):
    """The ``bits`` of lanes start <= l < stop (at most 64 lanes)."""
    if stop <= start:
        return 0
    ones = -1 if stop - start >= 64 else (1 << (stop - start)) - 1
    return ones << start


def _load_even(builder, base, mask, wide):
    """lane l = base[2 l] where mask lane l is on: one masked load of twice the lanes (odd
    elements masked off, never read), then a shuffle keeping the even elements."""
    lanes = wide.count
    double = ir.VectorType(wide.element, 2 * lanes)
    off = ir.Constant(mask.type, [0] * lanes)
    spread = ir.Constant(
        ir.VectorType(_i32, 2 * lanes), [lanes if e % 2 else e // 2 for e in range(2 * lanes)]
    )
    pairs = _masked_load(
        builder,
        _vector_pointer(builder, base, double),
        double,
        builder.shuffle_vector(mask, off, spread),
    )
    even = ir.Constant(ir.VectorType(_i32, lanes), list(range(0, 2 * lanes, 2)))
    return builder.shuffle_vector(pairs, pairs, even)


def _gather(builder, base, shifts, mask, wide):
    """Masked gather of lanes base[shifts[l]] (shifts: <lanes x i64> element offsets)."""
    lanes, element = wide.count, wide.element
    i64 = ir.IntType(64)
    address = _splat(builder, builder.ptrtoint(base, i64), ir.VectorType(i64, lanes))
    size = ir.Constant(ir.VectorType(i64, lanes), [VECTOR_BYTES // lanes] * lanes)
    address = builder.add(address, builder.mul(shifts, size))
    pointers = builder.inttoptr(address, ir.VectorType(element.as_pointer(), lanes))
    function = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(wide, [pointers.type, _i32, mask.type, wide]),
        f"llvm.masked.gather.v{lanes}{_suffix(element)}.v{lanes}p0",
    )
    zeros = ir.Constant(wide, [0.0] * lanes)
    return builder.call(function, [pointers, ir.Constant(_i32, 4), mask, zeros])


@intrinsic
def load_double(typingctx, array, index, count):
    """Lanes of float64 (8) from array[index:] of float32 or float64, first ``count`` lanes
    (the rest zero): float32 data summed in float64 without a scalar conversion each."""
    vector = Vector(types.float64)
    sig = vector(array, index, count)

    def codegen(context, builder, signature, args):
        array_type, index_type, count_type = signature.args
        element = context.get_value_type(array_type.dtype)
        narrow = ir.VectorType(element, vector.lanes)
        pointer = _element_pointer(context, builder, array_type, args[0], index_type, args[1])
        mask = _lane_mask(context, builder, count_type, args[2], vector.lanes)
        values = _masked_load(builder, _vector_pointer(builder, pointer, narrow), narrow, mask)
        if isinstance(element, ir.DoubleType):
            return values
        return builder.fpext(values, ir.VectorType(ir.DoubleType(), vector.lanes))

    return sig, codegen


@intrinsic
def broadcast(typingctx, value):
    """``value`` (a float) in every lane of a vector of its type."""
    if not isinstance(value, types.Float):
        return None
    vector = Vector(value)
    sig = vector(value)

    def codegen(context, builder, signature, args):
        return _splat(builder, args[0], context.get_value_type(vector))

    return sig, codegen


@intrinsic
def total(typingctx, value):
    """The sum of a vector's lanes, added in lane order (a fixed order: the same bits on
    every run)."""
    if not isinstance(value, Vector):
        return None
    sig = value.dtype(value)

    def codegen(context, builder, signature, args):
        lanes = [builder.extract_element(args[0], ir.Constant(_i32, k)) for k in range(value.lanes)]
        result = lanes[0]
        for lane in lanes[1:]:
            result = builder.fadd(result, lane)
        return result

    return sig, codegen
