// Emulator test: a grid-stride elementwise kernel (CF_FOR_EACH) taking every scalar launch
// type. x, y: n elements; y[i] = a * x[i] + b * i + c.
#include "../../../../backends/gpu/kernels/common.cuh"

template <typename T>
__device__ void axpb(const T* __restrict__ x, T* __restrict__ y, double a, float b, int c,
                     long long n) {
    CF_FOR_EACH(i, n) { y[i] = T(a) * x[i] + T(b) * T(i) + T(c); }
}
CF_EXPORT(axpb, (const T* x, T* y, double a, float b, int c, long long n), (x, y, a, b, c, n))
