/* 3x3, stride-1, padding-1 convolution of a one-channel bf16 image batch (a grey-scale study net's first layer) into a
 * channels-last bf16 map, equal bit for bit to oneDNN's brgemm convolution that ATen runs for it (torch 2.x, AVX512).
 *
 * oneDNN lays the weights out as (out channel, kw, kh, in channel) and pairs consecutive taps for VDPBF16PS, which
 * adds the odd element of a pair before the even one: each output channel's float sum, from +0, takes the exact
 * bf16 x bf16 products in the order of VTAPS below; a bias (bf16) is added last; the sum is rounded to bf16
 * (nearest even).
 * Out-of-image taps are left out (oneDNN adds +-0 there, which changes no sum: a sum from +0 is never -0).
 * oneDNN's arithmetic flushes denormals and has its own NaN encodings; to stay clear of both, a batch holding a
 * value outside {0} U [2^-50, 2^61) (NaN, infinity, a tiny or huge number) is refused (return 1) and small_conv.py
 * runs ATen for it: in range, every partial sum is a multiple of 2^-114, so none is denormal, and none overflows.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"

static int in_range(const uint16_t* v, int64_t n) {
    unsigned bad = 0;
    for (int64_t i = 0; i < n; i++) { /* exponent field: 2^-50 is 77, 2^61 is 188 */
        unsigned e = (v[i] >> 7) & 0xffu;
        bad |= ((v[i] & 0x7fffu) != 0) & ((e < 77) | (e >= 188));
    }
    return !bad;
}

#ifdef __AVX512F__
#include <immintrin.h>

/* 16 finite floats to bf16, rounding to nearest even (float_to_bf16 without its NaN case, which cannot occur here) */
static inline __m256i to_bf16x16(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

/* The image is zero-padded in floats (a padding tap adds +-0, which changes no sum) and the channels sit in vector
 * lanes; independent sums of U vectors side by side keep the vector units busy. The products of two bf16 are exact
 * in float, so a fused multiply-add rounds each step as oneDNN's add does. C = 8: a vector is two neighbouring output
 * pixels (lanes 0-7 and 8-15), each padded input pixel stored 8 times so that one load gives a tap's input for both;
 * C = 16: one pixel (its input broadcast); C = 32: one pixel in two vectors (half 0 and 1). */
#define VTAP(U, LOAD, WV, kh, kw) \
    for (int u = 0; u < (U); u++) acc[u] = _mm512_fmadd_ps(LOAD(u, kh, kw), WV[(kh) * 3 + (kw)], acc[u]);
#define VTAPS(U, L, WV)                                                                                 \
    VTAP(U, L, WV, 1, 0) VTAP(U, L, WV, 0, 0) VTAP(U, L, WV, 0, 1) VTAP(U, L, WV, 2, 0) VTAP(U, L, WV, 2, 1) \
    VTAP(U, L, WV, 1, 1) VTAP(U, L, WV, 1, 2) VTAP(U, L, WV, 0, 2) VTAP(U, L, WV, 2, 2)

#define LOAD8(u, kh, kw) _mm512_loadu_ps(pad + ((oh + (kh)) * wp + ow + 2 * (u) + (kw)) * 8)
#define LOAD1(u, kh, kw) _mm512_set1_ps(pad[(oh + (kh)) * wp + ow + (u) + (kw)])
#define RUN8(U)                                                                                         \
    {                                                                                                   \
        __m512 acc[U];                                                                                  \
        for (int u = 0; u < U; u++) acc[u] = _mm512_setzero_ps();                                       \
        VTAPS(U, LOAD8, wv)                                                                             \
        for (int u = 0; u < U; u++) {                                                                   \
            __m256i out = to_bf16x16(_mm512_add_ps(acc[u], bv[0]));                                     \
            if (ow + 2 * u + 1 < W) _mm256_storeu_si256((__m256i*)(row + (ow + 2 * u) * 8), out);       \
            else _mm_storeu_si128((__m128i*)(row + (ow + 2 * u) * 8), _mm256_castsi256_si128(out));     \
        }                                                                                               \
    }
#define RUN16(U, half)                                                                                  \
    {                                                                                                   \
        __m512 acc[U];                                                                                  \
        const __m512* w_ = wv + 9 * (half);                                                             \
        for (int u = 0; u < U; u++) acc[u] = _mm512_setzero_ps();                                       \
        VTAPS(U, LOAD1, w_)                                                                             \
        for (int u = 0; u < U; u++)                                                                     \
            _mm256_storeu_si256((__m256i*)(row + (ow + u) * C + 16 * (half)),                           \
                                to_bf16x16(_mm512_add_ps(acc[u], bv[half])));                           \
    }

/* the image's pixels as floats inside pad's zero border, each stored ``repeat`` (1 or 8) times */
static void pad_image(const uint16_t* restrict xi, float* restrict pad, int64_t H, int64_t W, int repeat) {
    for (int64_t h = 0; h < H; h++) {
        float* dst = pad + ((h + 1) * (W + 2) + 1) * repeat;
        const uint16_t* src = xi + h * W;
        if (repeat == 8)
            for (int64_t w = 0; w < W; w++) _mm256_storeu_ps(dst + w * 8, _mm256_set1_ps(bf16_to_float(src[w])));
        else
            for (int64_t w = 0; w < W; w++) dst[w] = bf16_to_float(src[w]);
    }
}

static void conv(int C, const uint16_t* restrict x, const float* restrict wf, const float* restrict bf,
                 uint16_t* restrict y, int64_t N, int64_t H, int64_t W, float* restrict pad) {
    int64_t wp = W + 2;
    __m512 wv[18], bv[2];
    for (int t = 0; t < 9; t++) {
        if (C == 8) { /* the 8 channels twice: two pixels */
            __m256 w8 = _mm256_loadu_ps(wf + t * 8);
            wv[t] = _mm512_insertf32x8(_mm512_castps256_ps512(w8), w8, 1);
        } else {
            wv[t] = _mm512_loadu_ps(wf + t * C);
            wv[9 + t] = C == 32 ? _mm512_loadu_ps(wf + t * C + 16) : wv[t];
        }
    }
    if (C == 8) bv[0] = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(bf)), _mm256_loadu_ps(bf), 1);
    else bv[0] = _mm512_loadu_ps(bf);
    bv[1] = C == 32 ? _mm512_loadu_ps(bf + 16) : bv[0];
    memset(pad, 0, (size_t)((H + 2) * wp * (C == 8 ? 8 : 1) + 16) * sizeof(float)); /* the border stays 0 */
    for (int64_t n = 0; n < N; n++) {
        pad_image(x + n * H * W, pad, H, W, C == 8 ? 8 : 1);
        for (int64_t oh = 0; oh < H; oh++) {
            uint16_t* row = y + (n * H + oh) * W * C;
            int64_t ow = 0;
            if (C == 8) {
                for (; ow + 8 <= W; ow += 8) RUN8(4)
                for (; ow < W; ow += 2) RUN8(1)
            } else {
                for (int half = 0; half < C / 16; half++) {
                    for (ow = 0; ow + 4 <= W; ow += 4) RUN16(4, half)
                    for (; ow < W; ow++) RUN16(1, half)
                }
            }
        }
    }
}
#endif

/* x: [N, H, W] bf16; w: [C, 3, 3] bf16; bias: C bf16 or NULL; y: [N, H, W, C] bf16. Returns 0 when done, 1 when an
 * input is out of range (nothing useful written), -1 for a channel count without a copy here (or no AVX512). */
int small_conv_forward(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t N, int64_t H,
                       int64_t W, int C) {
    if (C != 8 && C != 16 && C != 32) return -1;
    if (!in_range(x, N * H * W) || !in_range(w, 9 * (int64_t)C) || (bias && !in_range(bias, C))) return 1;
    float wf[9 * 32], bf[32];
    for (int c = 0; c < C; c++) {
        for (int t = 0; t < 9; t++) wf[t * C + c] = bf16_to_float(w[c * 9 + t]);
        bf[c] = bias ? bf16_to_float(bias[c]) : 0.0f;
    }
#ifdef __AVX512F__
    float* pad = malloc((size_t)((H + 2) * (W + 2) * 8 + 16) * sizeof(float));
    if (!pad) return -1;
    conv(C, x, wf, bf, y, N, H, W, pad);
    free(pad);
    return 0;
#else
    return -1;
#endif
}
