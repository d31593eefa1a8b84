// Emulator test: every thread of a 3-D grid of 3-D blocks writes its built-in indices.
// ids: 12 per thread, at the thread's rank g in the grid (blocks x fastest, then y, z; threads
// likewise within a block): threadIdx, blockIdx, blockDim, gridDim (x, y, z each).
// rank: g as T. order: the block's place in the emulator's sequence (clock counts blocks).
#include "../../../../backends/gpu/kernels/common.cuh"

template <typename T>
__device__ void thread_ids(long long* ids, T* rank, long long* order,
                           unsigned long long* clock) {
    long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    long long thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    long long g = block * blockDim.x * blockDim.y * blockDim.z + thread;
    long long* out = ids + 12 * g;
    const unsigned values[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y,
                                 blockIdx.z,  blockDim.x,  blockDim.y,  blockDim.z, gridDim.x,
                                 gridDim.y,   gridDim.z};
    for (int k = 0; k < 12; ++k) out[k] = values[k];
    rank[g] = T(g);
    if (thread == 0) order[block] = (long long)atomicAdd(clock, 1ull);
}
CF_EXPORT(thread_ids, (long long* ids, T* rank, long long* order, unsigned long long* clock),
          (ids, rank, order, clock))
