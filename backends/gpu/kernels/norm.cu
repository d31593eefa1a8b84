// Normalisation kernels (backends/cpu/norm.py on the GPU): batch_norm in inference, layer_norm2d
// and softmax.
//
// - batch_norm: PyTorch's inference transform, alpha = weight / sqrt(var + eps),
//   beta = bias - mean * alpha, y = x * alpha + beta (weight 1 and bias 0 without affine).
//   alpha and beta are computed in double once per plane (blockIdx.y strides over the n * c
//   planes), the element transform in T. x and y may be one buffer (in place).
// - layer_norm2d: each pixel of NCHW normalised over its C values (biased variance, two
//   passes, sums in double), then the per-channel affine. Lines = pixels: lane threadIdx.x of
//   a (32, rows) block owns one of 32 consecutive pixels, so every load of a row of the block
//   is coalesced, and threadIdx.y shares out the channels; cf_column_reduce sums per pixel.
// - softmax along one axis of a tensor viewed as [outer, D, inner], the maximum subtracted
//   before exp, sums in double. softmax_rows (inner = 1): one block per row, its threads over
//   D, cf_block_reduce for the maximum and the sum. softmax_columns (inner > 1): the layout of
//   layer_norm2d, 32 lines per block, threadIdx.y over D.
// - local_response_norm: one thread per element of x viewed as [N, C, inner]; it sums the
//   squares of its window's channels (ch - before .. ch - before + size - 1, those that exist)
//   in double, each read coalesced across the warp's consecutive inner positions, and writes
//   y = x * (k + alpha / size * sum)^-beta.
// All reductions are deterministic (reduce.cuh: fixed trees, no atomics).
//
// Pointers: batch_norm(x, mean, var, weight, bias, y, n, c, inner, eps), weight and bias null
// without affine; layer_norm2d(x, weight, bias, y, n, c, h, w, eps), the same; softmax_rows(x, y,
// rows, d); softmax_columns(x, y, outer, d, inner); local_response_norm(x, y, n, c, inner, size,
// before, alpha, beta, k).
// Launch: batch_norm 2-D (blocks over inner, blocks over planes) of 256 threads; layer_norm2d
// and softmax_columns (32, 8) blocks, one per 32 lines (grid-stride); softmax_rows one block of
// 32-256 threads per row (grid-stride); local_response_norm 1-D, 256 threads (grid-stride).
#include "common.cuh"
#include "reduce.cuh"

template <typename T>
__device__ void batch_norm(const T* x, const T* mean, const T* var, const T* weight,
                           const T* bias, T* y, long long n, long long c, long long inner,
                           double eps) {
    CF_FOR_EACH_ROW(plane, n * c) {
        const long long ch = plane % c, start = plane * inner;
        double alpha = 1.0 / sqrt(double(var[ch]) + eps);
        double beta = -double(mean[ch]) * alpha;
        if (weight) {
            alpha *= double(weight[ch]);
            beta = double(bias[ch]) - double(mean[ch]) * alpha;
        }
        const T scale = T(alpha), shift = T(beta);
        CF_FOR_EACH_IN_ROW(j, inner) y[start + j] = x[start + j] * scale + shift;
    }
}
CF_EXPORT(batch_norm,
          (const T* x, const T* mean, const T* var, const T* weight, const T* bias, T* y,
           long long n, long long c, long long inner, double eps),
          (x, mean, var, weight, bias, y, n, c, inner, eps))

template <typename T>
__device__ void layer_norm2d(const T* __restrict__ x, const T* __restrict__ weight,
                             const T* __restrict__ bias, T* __restrict__ y, long long n,
                             long long c, long long h, long long w, double eps) {
    __shared__ double partial[1024];
    const long long hw = h * w;
    CF_FOR_EACH_LINE_GROUP(base, n * hw) {
        const long long pixel = base + threadIdx.x;
        const bool live = pixel < n * hw;
        const long long start = live ? (pixel / hw) * c * hw + pixel % hw : 0;
        double total = 0.0;
        if (live)
            for (long long ch = threadIdx.y; ch < c; ch += blockDim.y) total += x[start + ch * hw];
        const double mu = cf_column_reduce(total, CfSum(), partial) / double(c);
        double spread = 0.0;
        if (live)
            for (long long ch = threadIdx.y; ch < c; ch += blockDim.y) {
                const double d = x[start + ch * hw] - mu;
                spread += d * d;
            }
        spread = cf_column_reduce(spread, CfSum(), partial);
        const double inv = 1.0 / sqrt(spread / double(c) + eps);
        if (live)
            for (long long ch = threadIdx.y; ch < c; ch += blockDim.y) {
                const double v = (x[start + ch * hw] - mu) * inv;
                y[start + ch * hw] = T(weight ? v * double(weight[ch]) + double(bias[ch]) : v);
            }
    }
}
CF_EXPORT(layer_norm2d,
          (const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
           T* __restrict__ y, long long n, long long c, long long h, long long w, double eps),
          (x, weight, bias, y, n, c, h, w, eps))

template <typename T>
__device__ void softmax_rows(const T* __restrict__ x, T* __restrict__ y, long long rows,
                             long long d) {
    __shared__ double partial[32];
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* src = x + row * d;
        T* dst = y + row * d;
        double top = cf_lowest<double>();
        for (long long k = threadIdx.x; k < d; k += blockDim.x) top = CfMax()(top, src[k]);
        const T shift = T(cf_block_reduce(top, CfMax(), partial));
        double total = 0.0;
        for (long long k = threadIdx.x; k < d; k += blockDim.x) {
            const T e = exp(src[k] - shift);
            dst[k] = e;
            total += e;
        }
        total = cf_block_reduce(total, CfSum(), partial);
        for (long long k = threadIdx.x; k < d; k += blockDim.x) dst[k] = T(dst[k] / total);
    }
}
CF_EXPORT(softmax_rows, (const T* __restrict__ x, T* __restrict__ y, long long rows, long long d),
          (x, y, rows, d))

template <typename T>
__device__ void softmax_columns(const T* __restrict__ x, T* __restrict__ y, long long outer,
                                long long d, long long inner) {
    __shared__ double partial[1024];
    CF_FOR_EACH_LINE_GROUP(base, outer * inner) {
        const long long line = base + threadIdx.x;
        const bool live = line < outer * inner;
        const long long start = live ? (line / inner) * d * inner + line % inner : 0;
        double top = cf_lowest<double>();
        if (live)
            for (long long k = threadIdx.y; k < d; k += blockDim.y)
                top = CfMax()(top, x[start + k * inner]);
        const T shift = T(cf_column_reduce(top, CfMax(), partial));
        double total = 0.0;
        if (live)
            for (long long k = threadIdx.y; k < d; k += blockDim.y) {
                const T e = exp(x[start + k * inner] - shift);
                y[start + k * inner] = e;
                total += e;
            }
        total = cf_column_reduce(total, CfSum(), partial);
        if (live)
            for (long long k = threadIdx.y; k < d; k += blockDim.y)
                y[start + k * inner] = T(y[start + k * inner] / total);
    }
}
CF_EXPORT(softmax_columns,
          (const T* __restrict__ x, T* __restrict__ y, long long outer, long long d,
           long long inner),
          (x, y, outer, d, inner))

template <typename T>
__device__ void local_response_norm(const T* __restrict__ x, T* __restrict__ y, long long n,
                                    long long c, long long inner, long long size,
                                    long long before, double alpha, double beta, double k) {
    CF_FOR_EACH(at, n * c * inner) {
        const long long j = at % inner, ch = (at / inner) % c, image = at / (c * inner);
        const long long first = ch - before;
        const long long lo = first > 0 ? first : 0, hi = first + size < c ? first + size : c;
        double total = 0.0;
        for (long long other = lo; other < hi; ++other) {
            const double v = double(x[(image * c + other) * inner + j]);
            total += v * v;
        }
        y[at] = T(double(x[at]) * pow(k + alpha / double(size) * total, -beta));
    }
}
CF_EXPORT(local_response_norm,
          (const T* x, T* y, long long n, long long c, long long inner, long long size,
           long long before, double alpha, double beta, double k),
          (x, y, n, c, inner, size, before, alpha, beta, k))
