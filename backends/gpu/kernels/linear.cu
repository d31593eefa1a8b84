// linear and matmul (mirrors backends/cpu/conv.py's linear and conv_backward.py's matmul;
// lowered by backends/gpu/linear.py).
//
// One strided GEMM serves both:  y [M, N] = A [M, K] @ B [K, N] (+ bias [N] on every row),
// with A(m, k) = a[m * a_row + k * a_k] and B(k, n) = b[k * b_k + n * b_col], so a transposed
// operand is only a change of strides; y is contiguous, row-major. Arguments:
//     a, b, bias (or null), y, M, N, K, a_row, a_k, b_k, b_col.
// linear (y = x W^T + b): A = x [batch, in] (a_row = in, a_k = 1), B = W^T, W being
// [out, in] (b_k = 1, b_col = in). matmul(trans_a, trans_b): a and b as stored, row-major,
// with the strides of their transposes where asked; no bias.
//
// gemm_<TM>x<TN>: block (bx, by) of the grid computes the TM x TN tile of y at rows by*TM..,
// columns bx*TN.., looping over K in BK = 16 deep slices staged in shared memory. Each
// operand slice is loaded with consecutive threads on whichever of its strides is 1, so the
// global reads coalesce for either orientation; the +1 column of each shared tile keeps
// k-fastest stores off a single bank.
//
// Tile sizes: as conv2d_gemm (kernels/conv.cu): 256 threads, each a 4x4 micro tile in
// registers (16 FMAs per 8 shared-memory reads), 4096 outputs per block: 64 x 64, or 16 x 256
// when M <= 16 (a linear layer at a small batch), so fewer of the tile's rows are past the
// last row. Shared memory per block: 16 x (TM + TN + 2) elements, 8.3 KB (float) to 35 KB
// (double, 16 x 256), far below an H100/H200 SM's 228 KB. Registers bound occupancy instead:
// ptxas (CUDA 13, sm_90) gives 44 (float) and 64 (double) at 64 x 64, 64 and 96 at 16 x 256,
// so an SM holds 4-5 blocks of the first, 2-4 of the second. double uses the same template.
// No split-K: a layer with few rows and columns (a batch-1 classifier) runs few blocks, each
// over all of K; the GPU check script is where that shows.
#include "common.cuh"

namespace {

constexpr int THREADS = 256;  // gemm block size (1-D)
constexpr int BK = 16;        // K-slice depth
constexpr int MICRO = 4;      // each thread computes a MICRO x MICRO micro tile

// tile[kk][r] = src[(r0 + r) * row_stride + (k0 + kk) * k_stride] for r < R, kk < BK, zero past
// `rows` or `depth`. One of the strides is 1 (operands are row-major): consecutive threads walk
// that axis, so the reads coalesce, and an element's offset is fast + slow * (the other stride).
template <typename T, int R>
__device__ void load_slice(T (*tile)[R + 1], const T* src, long long row_stride,
                           long long k_stride, long long r0, long long rows, long long k0,
                           long long depth) {
    const bool k_fastest = k_stride == 1;
    const int fast_extent = k_fastest ? BK : R;
    const long long slow_stride = k_fastest ? row_stride : k_stride;
    const T* corner = src + r0 * row_stride + k0 * k_stride;
    const long long rows_left = rows - r0, depth_left = depth - k0;
    for (int e = threadIdx.x; e < BK * R; e += THREADS) {
        const int fast = e % fast_extent, slow = e / fast_extent;
        const int kk = k_fastest ? fast : slow, r = k_fastest ? slow : fast;
        const bool inside = r < rows_left && kk < depth_left;
        tile[kk][r] = inside ? corner[fast + slow * slow_stride] : T(0);
    }
}

#define GEMM_PARAMS                                                                                \
    const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ bias,                  \
        T* __restrict__ y, long long m, long long n, long long k, long long a_row,                 \
        long long a_k, long long b_k, long long b_col
#define GEMM_ARGS a, b, bias, y, m, n, k, a_row, a_k, b_k, b_col

template <typename T, int TM>
__device__ void gemm_tile(GEMM_PARAMS) {
    constexpr int TN = THREADS * MICRO * MICRO / TM;
    constexpr int TY = TM / MICRO, TX = THREADS / TY;  // threads along rows, columns
    __shared__ T a_tile[BK][TM + 1];
    __shared__ T b_tile[BK][TN + 1];
    const long long m0 = (long long)blockIdx.y * TM, n0 = (long long)blockIdx.x * TN;
    const int tx = threadIdx.x % TX, ty = threadIdx.x / TX;

    T acc[MICRO][MICRO] = {};
    for (long long k0 = 0; k0 < k; k0 += BK) {
        load_slice<T, TM>(a_tile, a, a_row, a_k, m0, m, k0, k);
        load_slice<T, TN>(b_tile, b, b_col, b_k, n0, n, k0, k);
        __syncthreads();
        for (int kk = 0; kk < BK; ++kk) {
            T left[MICRO], right[MICRO];
            for (int i = 0; i < MICRO; ++i) left[i] = a_tile[kk][ty + TY * i];
            for (int j = 0; j < MICRO; ++j) right[j] = b_tile[kk][tx + TX * j];
            for (int i = 0; i < MICRO; ++i)
                for (int j = 0; j < MICRO; ++j) acc[i][j] += left[i] * right[j];
        }
        __syncthreads();  // the next slice overwrites the tiles
    }

    // Epilogue: thread (tx, ty) holds rows m0 + ty + TY*i, columns n0 + tx + TX*j.
    for (int i = 0; i < MICRO; ++i) {
        const long long row = m0 + ty + TY * i;
        if (row >= m) continue;
        for (int j = 0; j < MICRO; ++j) {
            const long long column = n0 + tx + TX * j;
            if (column < n) y[row * n + column] = bias ? acc[i][j] + bias[column] : acc[i][j];
        }
    }
}

// The exported tile variants, generated: name, TM (TN follows).
#define GEMM_VARIANT(name, TM)                                                                     \
    template <typename T>                                                                          \
    __device__ void name(GEMM_PARAMS) {                                                            \
        gemm_tile<T, TM>(GEMM_ARGS);                                                               \
    }                                                                                              \
    CF_EXPORT(name, (GEMM_PARAMS), (GEMM_ARGS))

}  // namespace

GEMM_VARIANT(gemm_64x64, 64)
GEMM_VARIANT(gemm_16x256, 16)
