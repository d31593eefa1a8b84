// Emulator test: block sums. x: n elements; partial: one sum per block of a grid-stride pass
// (block b sums x[i] for i = b * blockDim.x + t + k * blockDim.x * gridDim.x). blockDim.x is a
// power of 2 from 64 to 1024: a __syncthreads() tree halves the block's sums down to 64, then
// warp 0 adds the last 64 with __shfl_down_sync.
#include "../../../../backends/gpu/kernels/common.cuh"

template <typename T>
__device__ void block_reduce(T* sums, const T* __restrict__ x, T* __restrict__ partial,
                             long long n) {
    unsigned t = threadIdx.x;
    T v = 0;
    CF_FOR_EACH(i, n) { v += x[i]; }
    sums[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 32; s /= 2) {
        if (t < s) sums[t] += sums[t + s];
        __syncthreads();
    }
    if (t < 32) {
        v = sums[t] + sums[t + 32];
        for (int offset = 16; offset > 0; offset /= 2)
            v += __shfl_down_sync(0xffffffffu, v, offset);
        if (t == 0) partial[blockIdx.x] = v;
    }
}

// Static shared memory.
template <typename T>
__device__ void block_sum(const T* x, T* partial, long long n) {
    __shared__ T sums[1024];
    block_reduce(sums, x, partial, n);
}
CF_EXPORT(block_sum, (const T* x, T* partial, long long n), (x, partial, n))

// Dynamic shared memory: blockDim.x elements of T.
template <typename T>
__device__ void block_sum_dynamic(const T* x, T* partial, long long n) {
    CF_DYNAMIC_SHARED(T, sums);
    block_reduce(sums, x, partial, n);
}
CF_EXPORT(block_sum_dynamic, (const T* x, T* partial, long long n), (x, partial, n))

// Reads dynamic shared memory before writing it (emulator only: each block must see the
// poison, not the previous block's values). y: one per thread of the grid.
template <typename T>
__device__ void read_fresh_shared(T* y) {
    CF_DYNAMIC_SHARED(T, values);
    y[blockIdx.x * blockDim.x + threadIdx.x] = values[threadIdx.x];
    values[threadIdx.x] = T(threadIdx.x);
}
CF_EXPORT(read_fresh_shared, (T* y), (y))
