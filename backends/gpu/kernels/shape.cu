// Kernels that move data (backends/cpu/shape.py on the GPU): concat and slice (one block copy
// per input), channel_shuffle, transpose and pad. No arithmetic: outputs are bit-exact copies.
//
// - copy_block: `outer` runs of `length` elements, run o read at o * src_stride + src_offset
//   and written at o * dst_stride + dst_offset. Concat along any axis writes each input as a
//   column range of the output viewed as [outer, inner] (inner = that axis and all after it);
//   slice reads such a column range back.
// - channel_shuffle: y[i, k] = x[i, (k % g) * (C / g) + k / g], planes of H * W copied whole.
// - transpose: x viewed as [outer, A, mid, B, inner] -> y [outer, B, mid, A, inner].
// - pad: each output pixel reads the reflected input index (reflect), or the fill value
//   outside the input (constant).
//
// Pointers: copy_block(src, dst, outer, length, src_stride, src_offset, dst_stride,
// dst_offset); channel_shuffle(x, y, n, groups, per_group, hw); transpose(x, y, outer, a, mid,
// b, inner); pad(x, y, planes, h, w, oh, ow, top, left, reflect, value).
// Launch: copy_block and channel_shuffle 2-D (blocks over a run, blocks over runs: the
// offsets are computed once per block row) of 256 threads; transpose and pad 1-D grid-stride,
// one thread per output element.
#include "common.cuh"
#include "reduce.cuh"

template <typename T>
__device__ void copy_block(const T* __restrict__ src, T* __restrict__ dst, long long outer,
                           long long length, long long src_stride, long long src_offset,
                           long long dst_stride, long long dst_offset) {
    CF_FOR_EACH_ROW(o, outer) {
        const T* from = src + o * src_stride + src_offset;
        T* to = dst + o * dst_stride + dst_offset;
        CF_FOR_EACH_IN_ROW(j, length) to[j] = from[j];
    }
}
CF_EXPORT(copy_block,
          (const T* __restrict__ src, T* __restrict__ dst, long long outer, long long length,
           long long src_stride, long long src_offset, long long dst_stride, long long dst_offset),
          (src, dst, outer, length, src_stride, src_offset, dst_stride, dst_offset))

template <typename T>
__device__ void channel_shuffle(const T* __restrict__ x, T* __restrict__ y, long long n,
                                long long groups, long long per_group, long long hw) {
    const long long c = groups * per_group;
    CF_FOR_EACH_ROW(plane, n * c) {
        const long long k = plane % c;
        const T* from = x + ((plane - k) + (k % groups) * per_group + k / groups) * hw;
        T* to = y + plane * hw;
        CF_FOR_EACH_IN_ROW(j, hw) to[j] = from[j];
    }
}
CF_EXPORT(channel_shuffle,
          (const T* __restrict__ x, T* __restrict__ y, long long n, long long groups,
           long long per_group, long long hw),
          (x, y, n, groups, per_group, hw))

template <typename T>
__device__ void transpose(const T* __restrict__ x, T* __restrict__ y, long long outer,
                          long long a, long long mid, long long b, long long inner) {
    CF_FOR_EACH(i, outer * b * mid * a * inner) {
        long long rest = i;
        const long long k = rest % inner;
        rest /= inner;
        const long long p = rest % a;
        rest /= a;
        const long long m = rest % mid;
        rest /= mid;
        const long long q = rest % b, o = rest / b;
        y[i] = x[(((o * a + p) * mid + m) * b + q) * inner + k];
    }
}
CF_EXPORT(transpose,
          (const T* __restrict__ x, T* __restrict__ y, long long outer, long long a,
           long long mid, long long b, long long inner),
          (x, y, outer, a, mid, b, inner))

// The input index that reflect padding copies to position i (at most size - 1 outside).
__device__ inline long long cf_reflect(long long i, long long size) {
    return i < 0 ? -i : (i >= size ? 2 * (size - 1) - i : i);
}

template <typename T>
__device__ void pad(const T* __restrict__ x, T* __restrict__ y, long long planes, long long h,
                    long long w, long long oh, long long ow, long long top, long long left,
                    long long reflect, double value) {
    CF_FOR_EACH(i, planes * oh * ow) {
        const long long ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
        const long long iy = reflect ? cf_reflect(oy - top, h) : oy - top;
        const long long ix = reflect ? cf_reflect(ox - left, w) : ox - left;
        const bool inside = 0 <= iy && iy < h && 0 <= ix && ix < w;
        y[i] = inside ? x[(plane * h + iy) * w + ix] : T(value);
    }
}
CF_EXPORT(pad,
          (const T* __restrict__ x, T* __restrict__ y, long long planes, long long h, long long w,
           long long oh, long long ow, long long top, long long left, long long reflect,
           double value),
          (x, y, planes, h, w, oh, ow, top, left, reflect, value))
