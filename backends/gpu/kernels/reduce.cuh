// Block reductions and the loop shapes of the kernels that give a block whole rows, lines or
// planes (softmax, layer_norm2d, global pooling, channel_sum, capsule routing).
//
// Deterministic: a block combines its values in one fixed tree whatever the data (a warp's
// butterfly of shuffles, then the warps' partials in warp order) and no kernel uses atomics,
// so a run repeats bit for bit. Sums accumulate in double, as the CPU kernels' float64 sums;
// maxima are exact in double too.
//
// Callers declare the __shared__ scratch in the kernel body and pass it in: `partial` holds 32
// doubles for cf_block_reduce, blockDim.y * 32 for cf_column_reduce. The block's thread count
// is a multiple of 32 (at most 1024); every thread of the block must call, and every thread
// gets the result. A trailing barrier lets the next call reuse `partial`.
#pragma once

struct CfSum {
    __device__ double operator()(double a, double b) const { return a + b; }
};

// Max that propagates NaN, as torch's max pooling and max reductions do.
struct CfMax {
    __device__ double operator()(double a, double b) const { return (b > a || b != b) ? b : a; }
};

// -infinity, the start of a max: spelled with a builtin that NVRTC (which has no <math.h> and
// so no INFINITY) and g++ both know.
template <typename T>
__device__ T cf_lowest() {
    return -T(__builtin_huge_val());
}

// Reduce one value per thread over the whole block.
template <typename Op>
__device__ double cf_block_reduce(double value, Op op, double* partial) {
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int warps = (blockDim.x * blockDim.y) / 32;
    for (int offset = 16; offset > 0; offset /= 2)
        value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
    if (thread % 32 == 0) partial[thread / 32] = value;
    __syncthreads();
    value = partial[0];
    for (int w = 1; w < warps; ++w) value = op(value, partial[w]);
    __syncthreads();
    return value;
}

// Reduce over threadIdx.y in a (32, rows) block: each lane threadIdx.x is one column (a line
// of a [outer, D, inner] tensor whose D values the block's rows share out).
template <typename Op>
__device__ double cf_column_reduce(double value, Op op, double* partial) {
    partial[threadIdx.y * 32 + threadIdx.x] = value;
    __syncthreads();
    value = partial[threadIdx.x];
    for (unsigned r = 1; r < blockDim.y; ++r) value = op(value, partial[r * 32 + threadIdx.x]);
    __syncthreads();
    return value;
}

// Rows of the 2-D launches: blockIdx.y strides over `rows` planes (n * c of NCHW) and
// CF_FOR_EACH_IN_ROW's threads over the `count` elements of one, so a per-plane value (a
// BatchNorm scale, a copy's offsets) is computed once per block row, not per element.
#define CF_FOR_EACH_ROW(r, rows) for (long long r = blockIdx.y; r < (rows); r += gridDim.y)
#define CF_FOR_EACH_IN_ROW(j, count)                                                    \
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < (count);   \
         j += (long long)blockDim.x * gridDim.x)

// The groups of 32 lines of a [outer, D, inner] tensor that a grid of (32, rows) blocks takes
// in turn: lane threadIdx.x owns line base + threadIdx.x (if below `lines`). Lines are numbered
// outer-major, so within one outer index the 32 lines are contiguous: a row of the block reads
// them coalesced.
#define CF_FOR_EACH_LINE_GROUP(base, lines)                                             \
    for (long long base = (long long)blockIdx.x * 32; base < (lines);                   \
         base += (long long)gridDim.x * 32)
