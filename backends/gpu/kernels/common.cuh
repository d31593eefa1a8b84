// Conventions every kernel file shares (included first by each backends/gpu/kernels/*.cu).
//
// A kernel is written once as a template over its element type T,
//     template <typename T> __device__ void relu(const T* x, T* y, long long n) { ... }
// and exported for float32 and float64 by one line,
//     CF_EXPORT(relu, (const T* x, T* y, long long n), (x, y, n))
// which defines the extern "C" kernels relu_f32 and relu_f64 (each in a namespace whose T is
// the element type, so the parameter list is written once). Launch arguments: buffers as
// pointers, sizes and integer attributes as long long, real attributes as double.
//
// Compiled by nvcc or NVRTC (CuPy) for the GPU, or, with CONVFORGE_EMULATION defined, as C++
// for the CPU (backends/gpu/emulation/cuda_emulation.h): there each exported name becomes a
// host function taking the launch shape first, which runs the grid's blocks in turn and a
// block's threads as fibers.
#pragma once

#define CF_UNPAREN(...) __VA_ARGS__

#ifdef CONVFORGE_EMULATION
#include "../emulation/cuda_emulation.h"
#define CF_EXPORT_ONE(name, S, TYPE, params, args)                                      \
    namespace cf_##name##_##S {                                                         \
    typedef TYPE T;                                                                     \
    extern "C" void name##_##S(const cf_launch* launch, CF_UNPAREN params) {            \
        cf_run_grid(launch, [=]() { name<T> args; });                                   \
    }                                                                                   \
    }
#else
#define CF_EXPORT_ONE(name, S, TYPE, params, args)                                      \
    namespace cf_##name##_##S {                                                         \
    typedef TYPE T;                                                                     \
    extern "C" __global__ void name##_##S params { name<T> args; }                      \
    }
#endif

#define CF_EXPORT(name, params, args)                                                   \
    CF_EXPORT_ONE(name, f32, float, params, args)                                       \
    CF_EXPORT_ONE(name, f64, double, params, args)

// Grid-stride loop over [0, n): any grid size covers any n.
#define CF_FOR_EACH(i, n)                                                               \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);       \
         i += (long long)blockDim.x * gridDim.x)

// Dynamic shared memory (the launch's shared_bytes) as an array of T, 16-byte aligned:
//     CF_DYNAMIC_SHARED(float, tile);  // float* tile
// Under emulation it is a buffer of the launch, filled with 0xFF bytes (NaN, -1) before each
// block, so a read before the block writes it shows.
#ifdef CONVFORGE_EMULATION
#define CF_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(cf_emu::dynamic_shared())
#else
#define CF_DYNAMIC_SHARED(T, name)                                                      \
    extern __shared__ __align__(16) unsigned char cf_smem[];                            \
    T* name = reinterpret_cast<T*>(cf_smem)
#endif
