// apply_mask (graph/ops/mask.py; the CPU's is backends/cpu/mask.py): zero x where the pruning
// mask is zero, in place, leaving every other element untouched.
//
// Pointers: apply_mask(x, mask, n): x written in place, mask 0 or 1 in x's type.
// Launch: 1-D grid-stride, 256 threads, one thread per element.
#include "common.cuh"

template <typename T>
__device__ void apply_mask(T* x, const T* mask, long long n) {
    CF_FOR_EACH(i, n) {
        if (mask[i] == T(0)) x[i] = T(0);
    }
}
CF_EXPORT(apply_mask, (T* x, const T* mask, long long n), (x, mask, n))
