// Pooling kernels over NCHW planes (backends/cpu/pooling.py on the GPU), PyTorch's rules.
//
// - window_pool: max or average over sliding windows, one thread per output element. Max
//   propagates NaN and ignores padding; average divides by the window clipped to the padded
//   input (count_include_pad) or to the input alone, where the padded window ends at
//   min(start + K, size + pad) (ceil_mode's last window may overhang even the padding); the
//   count factors into rows x columns. Dilation applies to max pooling (avg passes 1).
// - adaptive_pool: max or average over PyTorch's adaptive windows
//   [floor(o * H / OH), ceil((o + 1) * H / OH)), one thread per output element.
// - global_pool: the 1x1 case of adaptive pooling (global_avg_pool2d, adaptive pooling to
//   1x1): one block per plane, a deterministic block reduction (reduce.cuh).
// Sums of the adaptive and global kernels accumulate in double, as the CPU's do; window
// averages sum in T tap by tap, in the CPU's (ki, kj) order.
//
// Pointers: x [planes, H, W] in, y [planes, OH, OW] out (planes = N * C).
// Launch: window_pool and adaptive_pool: 1-D grid-stride over planes * OH * OW, 256 threads;
// global_pool: one block of 32-256 threads per plane (grid-stride over planes).
#include "common.cuh"
#include "reduce.cuh"

// Elements PyTorch divides by along one axis for output o of an average pool.
__device__ inline long long cf_window_count(long long o, long long stride, long long pad,
                                            long long kernel, long long size, long long count_pad) {
    const long long start = o * stride - pad;
    const long long end = start + kernel < size + pad ? start + kernel : size + pad;
    return count_pad ? end - start : (end < size ? end : size) - (start > 0 ? start : 0);
}

template <typename T>
__device__ void window_pool(const T* __restrict__ x, T* __restrict__ y, long long planes,
                            long long h, long long w, long long oh, long long ow, long long kh,
                            long long kw, long long sh, long long sw, long long ph, long long pw,
                            long long dh, long long dw, long long is_max, long long count_pad) {
    CF_FOR_EACH(i, planes * oh * ow) {
        const long long ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
        const T* src = x + plane * h * w;
        const long long y0 = oy * sh - ph, x0 = ox * sw - pw;
        T acc = is_max ? cf_lowest<T>() : T(0);
        for (long long ki = 0; ki < kh; ++ki) {
            const long long iy = y0 + ki * dh;
            if (iy < 0 || iy >= h) continue;
            for (long long kj = 0; kj < kw; ++kj) {
                const long long ix = x0 + kj * dw;
                if (ix < 0 || ix >= w) continue;
                const T v = src[iy * w + ix];
                if (!is_max)
                    acc += v;
                else if (v > acc || v != v)
                    acc = v;
            }
        }
        if (!is_max)
            acc /= T(cf_window_count(oy, sh, ph, kh, h, count_pad) *
                     cf_window_count(ox, sw, pw, kw, w, count_pad));
        y[i] = acc;
    }
}
CF_EXPORT(window_pool,
          (const T* __restrict__ x, T* __restrict__ y, long long planes, long long h, long long w,
           long long oh, long long ow, long long kh, long long kw, long long sh, long long sw,
           long long ph, long long pw, long long dh, long long dw, long long is_max,
           long long count_pad),
          (x, y, planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad))

template <typename T>
__device__ void adaptive_pool(const T* __restrict__ x, T* __restrict__ y, long long planes,
                              long long h, long long w, long long oh, long long ow,
                              long long is_max) {
    CF_FOR_EACH(i, planes * oh * ow) {
        const long long ox = i % ow, oy = (i / ow) % oh, plane = i / (ow * oh);
        const T* src = x + plane * h * w;
        const long long ys = oy * h / oh, ye = ((oy + 1) * h + oh - 1) / oh;
        const long long xs = ox * w / ow, xe = ((ox + 1) * w + ow - 1) / ow;
        double best = cf_lowest<double>(), total = 0.0;
        for (long long iy = ys; iy < ye; ++iy)
            for (long long ix = xs; ix < xe; ++ix) {
                const double v = src[iy * w + ix];
                total += v;
                best = CfMax()(best, v);
            }
        y[i] = T(is_max ? best : total / double((ye - ys) * (xe - xs)));
    }
}
CF_EXPORT(adaptive_pool,
          (const T* __restrict__ x, T* __restrict__ y, long long planes, long long h, long long w,
           long long oh, long long ow, long long is_max),
          (x, y, planes, h, w, oh, ow, is_max))

template <typename T>
__device__ void global_pool(const T* __restrict__ x, T* __restrict__ y, long long planes,
                            long long hw, long long is_max) {
    __shared__ double partial[32];
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const T* src = x + plane * hw;
        double value = is_max ? cf_lowest<double>() : 0.0;
        for (long long j = threadIdx.x; j < hw; j += blockDim.x)
            value = is_max ? CfMax()(value, src[j]) : value + src[j];
        value = is_max ? cf_block_reduce(value, CfMax(), partial)
                       : cf_block_reduce(value, CfSum(), partial) / double(hw);
        if (threadIdx.x == 0) y[plane] = T(value);
    }
}
CF_EXPORT(global_pool,
          (const T* __restrict__ x, T* __restrict__ y, long long planes, long long hw,
           long long is_max),
          (x, y, planes, hw, is_max))
