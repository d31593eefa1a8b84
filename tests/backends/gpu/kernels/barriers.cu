// Emulator test: barriers that threads leave early, and two deadlocks. y: see each kernel.
#include "../../../../backends/gpu/kernels/common.cuh"

// Threads from `active` on return at once; the rest pass a __syncthreads() without them and
// reverse their indices through shared memory: y[b * active + t] = active - 1 - t.
template <typename T>
__device__ void early_exit(T* y, long long active) {
    __shared__ T values[1024];
    unsigned t = threadIdx.x;
    if (t >= active) return;
    values[t] = T(t);
    __syncthreads();
    y[blockIdx.x * active + t] = values[active - 1 - t];
}
CF_EXPORT(early_exit, (T* y, long long active), (y, active))

// Deadlock: threads below `split` wait at one __syncthreads(), the others at the next one.
template <typename T>
__device__ void divergent_barrier(T* y, long long split) {
    if (threadIdx.x < split) {
        __syncthreads();
        y[threadIdx.x] = T(1);
    }
    __syncthreads();
}
CF_EXPORT(divergent_barrier, (T* y, long long split), (y, split))

// Deadlock: lanes 0-15 of warp 0 shuffle with a full mask while lanes 16-31 wait at
// __syncthreads().
template <typename T>
__device__ void warp_block_mismatch(T* y) {
    T v = T(threadIdx.x);
    if (threadIdx.x < 16) v += __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
    y[threadIdx.x] = v;
}
CF_EXPORT(warp_block_mismatch, (T* y), (y))

// Misuse: lane 1 shuffles with a mask that names only lane 0.
template <typename T>
__device__ void mask_without_caller(T* y) {
    y[threadIdx.x] = __shfl_sync(threadIdx.x == 1 ? 0x1u : 0xffffffffu, T(threadIdx.x), 0);
}
CF_EXPORT(mask_without_caller, (T* y), (y))
