// Emulator test: atomics over a grid-stride loop. keys: n ints in [0, 2^20); values: n of T.
// counts[keys[i] % bins] += 1; *total += values[i]; *seen += 1 (unsigned long long);
// extremes[0] = max(keys), extremes[1] = min(keys).
#include "../../../../backends/gpu/kernels/common.cuh"

template <typename T>
__device__ void histogram(const int* keys, const T* values, int* counts, T* total,
                          unsigned long long* seen, int* extremes, int bins, long long n) {
    CF_FOR_EACH(i, n) {
        atomicAdd(&counts[keys[i] % bins], 1);
        atomicAdd(total, values[i]);
        atomicAdd(seen, 1ull);
        atomicMax(&extremes[0], keys[i]);
        atomicMin(&extremes[1], keys[i]);
    }
}
CF_EXPORT(histogram,
          (const int* keys, const T* values, int* counts, T* total, unsigned long long* seen,
           int* extremes, int bins, long long n),
          (keys, values, counts, total, seen, extremes, bins, n))
