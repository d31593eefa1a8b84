// Emulator test: warp operations over a 1-D block (its last warp may be partial).
// Thread t (lane l = t % 32) has v = T(t) + 0.5 and writes 7 reals to reals[7 * t]:
//     __shfl_sync(v, 3), __shfl_up_sync(v, 2, width 8), __shfl_down_sync(v, 5, width 16),
//     __shfl_xor_sync(v, 9, width 8), the warp's sum by an xor butterfly,
//     __shfl_down_sync(v, 16), and in two half-warp groups (masks 0x0000ffff, 0xffff0000)
//     __shfl_xor_sync(v, 1) in the low half, __shfl_xor_sync(v, 2) in the high half;
// and 6 integers to ints[6 * t]:
//     __ballot_sync(l % 3 == 0), __any_sync(t == 5), __all_sync(l < 31),
//     __shfl_sync((long long)t << 33, l + 1) >> 33, __shfl_down_sync(unsigned(t), 1),
//     __shfl_xor_sync(int(t), 16).
// Masks are full unless said: on the block's partial last warp they name missing lanes too.
#include "../../../../backends/gpu/kernels/common.cuh"

template <typename T>
__device__ void warp_ops(T* reals, long long* ints) {
    const unsigned full = 0xffffffffu;
    unsigned t = threadIdx.x, lane = t % 32;
    T v = T(t) + T(0.5);
    T* r = reals + 7 * t;
    r[0] = __shfl_sync(full, v, 3);
    r[1] = __shfl_up_sync(full, v, 2, 8);
    r[2] = __shfl_down_sync(full, v, 5, 16);
    r[3] = __shfl_xor_sync(full, v, 9, 8);
    T sum = v;
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(full, sum, m);
    r[4] = sum;
    r[5] = __shfl_down_sync(full, v, 16);
    if (lane < 16)
        r[6] = __shfl_xor_sync(0x0000ffffu, v, 1);
    else
        r[6] = __shfl_xor_sync(0xffff0000u, v, 2);
    __syncwarp();
    long long* k = ints + 6 * t;
    k[0] = __ballot_sync(full, lane % 3 == 0);
    k[1] = __any_sync(full, t == 5);
    k[2] = __all_sync(full, lane < 31);
    k[3] = __shfl_sync(full, (long long)t << 33, lane + 1) >> 33;
    k[4] = __shfl_down_sync(full, t, 1);
    k[5] = __shfl_xor_sync(full, int(t), 16);
}
CF_EXPORT(warp_ops, (T* reals, long long* ints), (reals, ints))
