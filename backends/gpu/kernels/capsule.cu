// Capsule kernels (backends/cpu/capsule.py on the GPU; graph/ops/capsule.py has the maths).
//
// Vectors are lines of a [outer, D, inner] tensor as softmax views its axis; capsule tensors
// are row-major u [N, I, Din], W [I, J, Dout, Din], u_hat [N, I, J, D], c [N, I, J],
// s and v [N, J, D]. Sums accumulate in double, as the CPU's do.
//
// - squash: v = |s|^2 / ((1 + |s|^2) sqrt(|s|^2 + eps)) * s along D; one thread per line
//   (capsule vectors are 8 or 16 long: a block per line would idle most of its threads).
// - capsule_predict: u_hat[n, i, j, o] = W[i, j, o, :] . u[n, i, :]; one thread per output.
// - capsule_routing: routing by agreement, one block per sample n (its iterations depend on
//   each other), phases separated by barriers, every intermediate in global memory (c, s and
//   v are outputs, the logits b a scratch [N, I, J]):
//     b = 0; per iteration: c[i, :] = softmax(b[i, :])        one thread per i
//     s[j, e] = sum_i c[i, j] u_hat[i, j, e]                    lanes over (j, e), rows over i
//     v[j, :] = squash(s[j, :])                                 one thread per (j, e)
//     b[i, j] += u_hat[i, j, :] . v[j, :] (not after the last)  one thread per (i, j)
//   The sum over i is the long one (1152 input capsules in CapsNet): lane threadIdx.x takes
//   one of 32 consecutive (j, e) pairs (coalesced loads of u_hat) and threadIdx.y every
//   blockDim.y-th i, then cf_column_reduce adds the rows in a fixed order (deterministic).
// - capsule_length: sqrt(|v|^2 + eps) per capsule; one thread per capsule.
//
// Pointers: squash(s, v, outer, d, inner, eps); capsule_predict(u, w, u_hat, n, caps_in,
// caps_out, d_out, d_in); capsule_routing(u_hat, v, c, s, logits, n, caps_in, caps_out, d,
// iterations, eps); capsule_length(v, lengths, rows, d, eps).
// Launch: squash, capsule_predict, capsule_length 1-D grid-stride, 256 threads;
// capsule_routing one (32, 8) block per sample (grid-stride over samples).
#include "common.cuh"
#include "reduce.cuh"

// h(|s|^2) with v = h s.
__device__ inline double cf_squash_factor(double norm2, double eps) {
    return norm2 / ((1.0 + norm2) * sqrt(norm2 + eps));
}

template <typename T>
__device__ void squash(const T* __restrict__ s, T* __restrict__ v, long long outer, long long d,
                       long long inner, double eps) {
    CF_FOR_EACH(line, outer * inner) {
        const long long start = (line / inner) * d * inner + line % inner;
        double norm2 = 0.0;
        for (long long k = 0; k < d; ++k) {
            const double value = s[start + k * inner];
            norm2 += value * value;
        }
        const double factor = cf_squash_factor(norm2, eps);
        for (long long k = 0; k < d; ++k) v[start + k * inner] = T(s[start + k * inner] * factor);
    }
}
CF_EXPORT(squash,
          (const T* __restrict__ s, T* __restrict__ v, long long outer, long long d,
           long long inner, double eps),
          (s, v, outer, d, inner, eps))

template <typename T>
__device__ void capsule_predict(const T* __restrict__ u, const T* __restrict__ w,
                                T* __restrict__ u_hat, long long n, long long caps_in,
                                long long caps_out, long long d_out, long long d_in) {
    CF_FOR_EACH(at, n * caps_in * caps_out * d_out) {
        const long long task = at / (caps_out * d_out), i = task % caps_in;
        const T* row = w + (i * caps_out * d_out + at % (caps_out * d_out)) * d_in;
        const T* src = u + task * d_in;
        double total = 0.0;
        for (long long k = 0; k < d_in; ++k) total += double(row[k]) * double(src[k]);
        u_hat[at] = T(total);
    }
}
CF_EXPORT(capsule_predict,
          (const T* __restrict__ u, const T* __restrict__ w, T* __restrict__ u_hat, long long n,
           long long caps_in, long long caps_out, long long d_out, long long d_in),
          (u, w, u_hat, n, caps_in, caps_out, d_out, d_in))

// c[i, :] = softmax(b[i, :]) for one sample's I rows of J logits.
template <typename T>
__device__ void cf_couplings(const T* b, T* c, long long caps_in, long long caps_out,
                             int thread, int threads) {
    for (long long i = thread; i < caps_in; i += threads) {
        const T* row = b + i * caps_out;
        T top = row[0];
        for (long long j = 1; j < caps_out; ++j) top = row[j] > top ? row[j] : top;
        double total = 0.0;
        for (long long j = 0; j < caps_out; ++j) total += exp(double(row[j] - top));
        for (long long j = 0; j < caps_out; ++j)
            c[i * caps_out + j] = T(exp(double(row[j] - top)) / total);
    }
}

// s[j, e] = sum_i c[i, j] u_hat[i, j, e] for one sample, rows of the block over i.
template <typename T>
__device__ void cf_weighted_sums(const T* u_hat, const T* c, T* s, long long caps_in,
                                 long long caps_out, long long d, double* partial) {
    for (long long base = 0; base < caps_out * d; base += 32) {
        const long long pair = base + threadIdx.x;
        const bool live = pair < caps_out * d;
        double total = 0.0;
        if (live)
            for (long long i = threadIdx.y; i < caps_in; i += blockDim.y)
                total += double(c[i * caps_out + pair / d]) *
                         double(u_hat[i * caps_out * d + pair]);
        total = cf_column_reduce(total, CfSum(), partial);
        if (live && threadIdx.y == 0) s[pair] = T(total);
    }
}

// v[j, :] = squash(s[j, :]) for one sample, one thread per (j, e).
template <typename T>
__device__ void cf_squash_sums(const T* s, T* v, long long caps_out, long long d, double eps,
                               int thread, int threads) {
    for (long long k = thread; k < caps_out * d; k += threads) {
        const T* vector = s + (k / d) * d;
        double norm2 = 0.0;
        for (long long e = 0; e < d; ++e) norm2 += double(vector[e]) * double(vector[e]);
        v[k] = T(s[k] * cf_squash_factor(norm2, eps));
    }
}

// b[i, j] += u_hat[i, j, :] . v[j, :] for one sample, one thread per (i, j).
template <typename T>
__device__ void cf_agreement(const T* u_hat, const T* v, T* b, long long pairs,
                             long long caps_out, long long d, int thread, int threads) {
    for (long long k = thread; k < pairs; k += threads) {
        const T *prediction = u_hat + k * d, *vector = v + (k % caps_out) * d;
        double total = 0.0;
        for (long long e = 0; e < d; ++e) total += double(prediction[e]) * double(vector[e]);
        b[k] = T(b[k] + total);
    }
}

template <typename T>
__device__ void capsule_routing(const T* __restrict__ u_hat, T* __restrict__ v,
                                T* __restrict__ c, T* __restrict__ s, T* __restrict__ logits,
                                long long n, long long caps_in, long long caps_out, long long d,
                                long long iterations, double eps) {
    __shared__ double partial[1024];
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    const int threads = blockDim.x * blockDim.y;
    const long long pairs = caps_in * caps_out;
    for (long long m = blockIdx.x; m < n; m += gridDim.x) {
        const T* predictions = u_hat + m * pairs * d;
        T *b = logits + m * pairs, *coupling = c + m * pairs;
        T *sums = s + m * caps_out * d, *out = v + m * caps_out * d;
        for (long long k = thread; k < pairs; k += threads) b[k] = T(0);
        __syncthreads();
        for (long long r = 0; r < iterations; ++r) {
            cf_couplings(b, coupling, caps_in, caps_out, thread, threads);
            __syncthreads();
            cf_weighted_sums(predictions, coupling, sums, caps_in, caps_out, d, partial);
            __syncthreads();
            cf_squash_sums(sums, out, caps_out, d, eps, thread, threads);
            __syncthreads();
            if (r + 1 < iterations) {
                cf_agreement(predictions, out, b, pairs, caps_out, d, thread, threads);
                __syncthreads();
            }
        }
    }
}
CF_EXPORT(capsule_routing,
          (const T* __restrict__ u_hat, T* __restrict__ v, T* __restrict__ c,
           T* __restrict__ s, T* __restrict__ logits, long long n, long long caps_in,
           long long caps_out, long long d, long long iterations, double eps),
          (u_hat, v, c, s, logits, n, caps_in, caps_out, d, iterations, eps))

template <typename T>
__device__ void capsule_length(const T* __restrict__ v, T* __restrict__ lengths, long long rows,
                               long long d, double eps) {
    CF_FOR_EACH(r, rows) {
        double total = 0.0;
        for (long long e = 0; e < d; ++e) total += double(v[r * d + e]) * double(v[r * d + e]);
        lengths[r] = T(sqrt(total + eps));
    }
}
CF_EXPORT(capsule_length,
          (const T* __restrict__ v, T* __restrict__ lengths, long long rows, long long d,
           double eps),
          (v, lengths, rows, d, eps))
