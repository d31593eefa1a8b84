// conv2d forward (mirrors backends/cpu/conv.py; lowered by backends/gpu/conv.py).
//
// Layout: NCHW activations, OIHW weights, flat arrays. Every kernel here takes the same
// arguments, in the CPU conv2d_gemm's order:
//     x [N, C, H, W] input, w [OC, C/groups, KH, KW] weights, bias [OC] or null (no bias),
//     y [N, OC, OH, OW] output; then N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW,
//     groups.
// Padding is zeros (reflect padding is a pad node before the conv); the bottom and right
// padding only decide OH and OW, so the kernels never need them.
//
// conv2d_gemm_<TM>x<TN>: an implicit GEMM, per group g (K = C/g * KH * KW):
//     Y_g [OC/g, N*OH*OW] = W_g [OC/g, K] @ cols_g [K, N*OH*OW]
// cols_g is im2col (row k = (ci, ki, kj), column p = (image, oy, ox): all images side by
// side), never stored: each block gathers one K-slice of it at a time straight into shared
// memory, zeros where a tap falls in the padding. Block (bx, by, g) of the grid computes the
// TM x TN tile of Y_g at output channels by*TM.., pixels bx*TN.., bias fused into the store.
// conv2d_pointwise_<TM>x<TN> is the same kernel for 1x1, stride 1, unpadded convs, whose
// cols_g is the input itself (row ci of image n is x[n, g*C/g + ci, :, :]): no tap arithmetic.
//
// Tile sizes. 256 threads; each accumulates a 4x4 micro tile in registers (16 FMAs per 8
// shared-memory reads), so a block's tile has 256 * 16 = 4096 outputs: TM x TN = 64 x 64
// when OC/g > 16, else 16 x 256 (LeNet, ResNeXt's narrow groups), so fewer of the tile's rows
// are past the last channel. K-slices are BK = 16 deep: shared memory per block is
// 16 x (TM + 1 + TN) elements, 8.3 KB (float) or 17 KB (double) at 64 x 64, 35 KB for double
// at 16 x 256 -- far below the 228 KB an H100/H200 SM has. Registers bound occupancy instead:
// ptxas (CUDA 13, sm_90) gives these kernels 72-80 registers in float and 96 in double, so
// an SM's 64K registers hold 3 blocks (768 threads) in float and 2 in double. double uses the
// same template. Deliberately simple: no double buffering of the slices, no vector loads, no
// tensor cores.
//
// conv2d_depthwise, conv2d_depthwise_3x3: convs with one input channel per group (C/g == 1:
// depthwise, with or without a channel multiplier, and single-channel inputs). Such a conv
// has K = KH * KW, too short for a GEMM tile; it runs one thread per output, ox fastest, so
// a warp reads neighbouring inputs and the caches serve the KH x KW reuse. The 3x3 variant
// fixes the window at compile time (MobileNet's case) so the tap loops unroll.
#include "common.cuh"

namespace {

constexpr int THREADS = 256;  // conv2d_gemm block size (1-D)
constexpr int BK = 16;        // K-slice depth
constexpr int MICRO = 4;      // each thread computes a MICRO x MICRO micro tile

// One launch parameter list for every kernel of the file (see the top comment).
#define CONV2D_PARAMS                                                                              \
    const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,                  \
        T* __restrict__ y, long long n, long long c, long long h, long long wd, long long oc,      \
        long long oh, long long ow, long long kh, long long kw, long long sh, long long sw,        \
        long long pt, long long pl, long long dh, long long dw, long long groups
#define CONV2D_ARGS x, w, bias, y, n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups

// Implicit GEMM: the TM x TN tile of output channels x output pixels of block
// (blockIdx.x: pixels, blockIdx.y: channels, blockIdx.z: group).
template <typename T, int TM, bool POINTWISE>
__device__ void conv2d_gemm_tile(CONV2D_PARAMS) {
    constexpr int TN = THREADS * MICRO * MICRO / TM;
    constexpr int TY = TM / MICRO, TX = THREADS / TY;  // threads along channels, pixels
    static_assert(THREADS % TN == 0, "each thread gathers one fixed column of every slice");
    // w_tile is filled k-fastest (weights are contiguous in k); its +1 column spreads those
    // stores over the banks. x_tile is filled pixel-fastest, conflict-free without padding.
    __shared__ T w_tile[BK][TM + 1];
    __shared__ T x_tile[BK][TN];

    // Sizes within one image and group fit in int; offsets across images are long long.
    const int cg = (int)(c / groups), ocg = (int)(oc / groups), g = blockIdx.z;
    const int height = (int)h, width = (int)wd, window = (int)kw, rows = (int)dh, cols = (int)dw;
    const int taps = (int)(kh * kw), depth = cg * taps, ohw = (int)(oh * ow), tid = threadIdx.x;
    const int o0 = blockIdx.y * TM;
    const long long p0 = (long long)blockIdx.x * TN, pixels = n * ohw;
    const T* w_rows = w + ((long long)g * ocg + o0) * depth;

    // The column this thread gathers, the same in every slice: output pixel p of image
    // `image`, at q = oy*OW + ox of its plane, whose window starts at input (iy0, ix0).
    const int col = tid % TN;
    const long long p = p0 + col, image = p / ohw;
    const int q = (int)(p % ohw), iy0 = q / (int)ow * (int)sh - (int)pt;
    const int ix0 = q % (int)ow * (int)sw - (int)pl;
    const T* x_group = x + (image * c + (long long)g * cg) * height * width;

    T acc[MICRO][MICRO] = {};
    const int tx = tid % TX, ty = tid / TX;
    for (int k0 = 0; k0 < depth; k0 += BK) {
        // w_tile[kk][oo] = W_g[o0 + oo][k0 + kk], zero past the last channel or tap.
        for (int e = tid; e < BK * TM; e += THREADS) {
            const int kk = e % BK, oo = e / BK;
            const bool inside = o0 + oo < ocg && k0 + kk < depth;
            w_tile[kk][oo] = inside ? w_rows[(long long)oo * depth + k0 + kk] : T(0);
        }
        // x_tile[kk][col] = cols_g[k0 + kk][p]: tap (ki, kj) of input channel ci.
        for (int kk = tid / TN; kk < BK; kk += THREADS / TN) {
            const int k = k0 + kk;
            T value = T(0);
            if (p < pixels && k < depth) {
                if (POINTWISE) {
                    value = x_group[(long long)k * ohw + q];
                } else {
                    const int ci = k / taps, t = k % taps;
                    const int iy = iy0 + t / window * rows, ix = ix0 + t % window * cols;
                    if (iy >= 0 && iy < height && ix >= 0 && ix < width) {
                        value = x_group[(long long)(ci * height + iy) * width + ix];
                    }
                }
            }
            x_tile[kk][col] = value;
        }
        __syncthreads();
        for (int kk = 0; kk < BK; ++kk) {
            T a[MICRO], b[MICRO];
            for (int i = 0; i < MICRO; ++i) a[i] = w_tile[kk][ty + TY * i];
            for (int j = 0; j < MICRO; ++j) b[j] = x_tile[kk][tx + TX * j];
            for (int i = 0; i < MICRO; ++i)
                for (int j = 0; j < MICRO; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();  // the next slice overwrites the tiles
    }

    // Epilogue: thread (tx, ty) holds channels o0 + ty + TY*i at pixels p0 + tx + TX*j.
    for (int j = 0; j < MICRO; ++j) {
        const long long pj = p0 + tx + TX * j;
        if (pj >= pixels) continue;
        const long long out = pj / ohw * oc * ohw + pj % ohw;
        for (int i = 0; i < MICRO; ++i) {
            if (o0 + ty + TY * i >= ocg) continue;
            const int o = g * ocg + o0 + ty + TY * i;
            y[out + (long long)o * ohw] = bias ? acc[i][j] + bias[o] : acc[i][j];
        }
    }
}

// The exported tile variants, generated: name, TM (TN follows), pointwise.
#define CONV2D_GEMM_VARIANT(name, TM, POINTWISE)                                                   \
    template <typename T>                                                                          \
    __device__ void name(CONV2D_PARAMS) {                                                          \
        conv2d_gemm_tile<T, TM, POINTWISE>(CONV2D_ARGS);                                           \
    }                                                                                              \
    CF_EXPORT(name, (CONV2D_PARAMS), (CONV2D_ARGS))

// Depthwise: one thread per output; output channel o reads input channel o / (OC/g) (C/g is
// 1). KH_ and KW_ fix the window at compile time when non-zero.
template <typename T, int KH_, int KW_>
__device__ void conv2d_depthwise_window(CONV2D_PARAMS) {
    const int wh = KH_ ? KH_ : (int)kh, ww = KW_ ? KW_ : (int)kw;
    const int height = (int)h, width = (int)wd, rows = (int)dh, cols = (int)dw;
    const int ohw = (int)(oh * ow), multiplier = (int)(oc / groups);
    CF_FOR_EACH(i, n * oc * ohw) {
        const long long plane_index = i / ohw;  // image * OC + o
        const int q = (int)(i - plane_index * ohw), o = (int)(plane_index % oc);
        const long long image = plane_index / oc;
        const T* plane = x + (image * c + o / multiplier) * height * width;
        const T* taps = w + (long long)o * wh * ww;
        const int iy0 = q / (int)ow * (int)sh - (int)pt, ix0 = q % (int)ow * (int)sw - (int)pl;
        T sum = bias ? bias[o] : T(0);
        for (int ki = 0; ki < wh; ++ki) {
            const int iy = iy0 + ki * rows;
            if (iy < 0 || iy >= height) continue;
            for (int kj = 0; kj < ww; ++kj) {
                const int ix = ix0 + kj * cols;
                if (ix >= 0 && ix < width) sum += plane[iy * width + ix] * taps[ki * ww + kj];
            }
        }
        y[i] = sum;
    }
}

#define CONV2D_DEPTHWISE_VARIANT(name, KH_, KW_)                                                   \
    template <typename T>                                                                          \
    __device__ void name(CONV2D_PARAMS) {                                                          \
        conv2d_depthwise_window<T, KH_, KW_>(CONV2D_ARGS);                                         \
    }                                                                                              \
    CF_EXPORT(name, (CONV2D_PARAMS), (CONV2D_ARGS))

}  // namespace

CONV2D_GEMM_VARIANT(conv2d_gemm_64x64, 64, false)
CONV2D_GEMM_VARIANT(conv2d_gemm_16x256, 16, false)
CONV2D_GEMM_VARIANT(conv2d_pointwise_64x64, 64, true)
CONV2D_GEMM_VARIANT(conv2d_pointwise_16x256, 16, true)
CONV2D_DEPTHWISE_VARIANT(conv2d_depthwise, 0, 0)
CONV2D_DEPTHWISE_VARIANT(conv2d_depthwise_3x3, 3, 3)
