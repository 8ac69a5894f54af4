/* Training-mode batch norm for channels-last bf16 maps with few channels, equal bit for bit to ATen's CPU kernel
 * (torch 2.x, AVX512 build: batch_norm_kernel.cpp's channels-last paths with bf16 input and fp32 parameters).
 *
 * Below 32 channels ATen runs those paths as a scalar loop over each row's channels, and with more than one thread
 * its per-thread partial sums for 8 channels share a cache line. Here the same arithmetic runs in the same order:
 * each channel's sums are accumulated row by row within the row ranges at::parallel_for gives each of `threads`
 * threads, and those partial sums are added in thread order; only the channels of a row go through the vector
 * units side by side, and one thread does all of it. Where ATen's compiled code fuses a multiply and an add
 * (fmaf below) follows what ATen's wheel does, found by comparing outputs (tests/test_small_bn.py); small_bn.py
 * checks the two agree on the first call of every shape and thread count and uses ATen if they ever do not.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

#define MAX_CHANNELS 32
#define VECTOR_FLOATS 16 /* ATen's AVX512 build vectorises its scalar dx loop 16 floats at a time, unfused */

/* rows per thread in at::parallel_for(0, n, 1, ...): min(threads, n) ranges of ceil(n / that) rows */
static int64_t rows_per_thread(int64_t n, int threads) {
    int64_t t = threads < 1 ? 1 : threads;
    if (t > n) t = n;
    return t <= 1 ? n : (n + t - 1) / t;
}

#define CHANNEL_SUMS(C)                                                                                 \
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {                                                         \
        int64_t r1 = r0 + chunk < n ? r0 + chunk : n;                                                   \
        float a[C];                                                                                     \
        for (int c = 0; c < C; c++) a[c] = 0.f;                                                         \
        for (int64_t i = r0; i < r1; i++)                                                               \
            for (int c = 0; c < C; c++) a[c] += bf16_to_float(x[i * C + c]);                            \
        for (int c = 0; c < C; c++) sum[c] += a[c];                                                     \
    }                                                                                                   \
    for (int c = 0; c < C; c++) mean[c] = sum[c] / (float)n;                                            \
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {                                                         \
        int64_t r1 = r0 + chunk < n ? r0 + chunk : n;                                                   \
        float a[C];                                                                                     \
        for (int c = 0; c < C; c++) a[c] = 0.f;                                                         \
        for (int64_t i = r0; i < r1; i++)                                                               \
            for (int c = 0; c < C; c++) {                                                               \
                float d = bf16_to_float(x[i * C + c]) - mean[c];                                        \
                a[c] = fmaf(d, d, a[c]);                                                                \
            }                                                                                           \
        for (int c = 0; c < C; c++) var_sum[c] += a[c];                                                 \
    }

#define GRAD_SUMS(C)                                                                                    \
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {                                                         \
        int64_t r1 = r0 + chunk < n ? r0 + chunk : n;                                                   \
        float s[C], d[C];                                                                               \
        for (int c = 0; c < C; c++) s[c] = d[c] = 0.f;                                                  \
        for (int64_t i = r0; i < r1; i++)                                                               \
            for (int c = 0; c < C; c++) {                                                               \
                float g = bf16_to_float(dy[i * C + c]);                                                 \
                s[c] += g;                                                                              \
                d[c] = fmaf(bf16_to_float(x[i * C + c]) - mean[c], g, d[c]);                            \
            }                                                                                           \
        for (int c = 0; c < C; c++) { sum[c] += s[c]; dotp[c] += d[c]; }                                \
    }

/* one copy per common channel count, so that the compiler keeps the channel loop in vector registers */
static void stats_any(int C, const uint16_t* x, int64_t n, int64_t chunk, float* sum, float* mean, float* var_sum) {
    CHANNEL_SUMS(C)
}
static void stats_8(const uint16_t* x, int64_t n, int64_t chunk, float* sum, float* mean, float* var_sum) { CHANNEL_SUMS(8) }
static void stats_16(const uint16_t* x, int64_t n, int64_t chunk, float* sum, float* mean, float* var_sum) { CHANNEL_SUMS(16) }

static void grad_sums_any(int C, const uint16_t* x, const uint16_t* dy, int64_t n, int64_t chunk, const float* mean,
                          float* sum, float* dotp) {
    GRAD_SUMS(C)
}
static void grad_sums_8(const uint16_t* x, const uint16_t* dy, int64_t n, int64_t chunk, const float* mean,
                        float* sum, float* dotp) { GRAD_SUMS(8) }
static void grad_sums_16(const uint16_t* x, const uint16_t* dy, int64_t n, int64_t chunk, const float* mean,
                         float* sum, float* dotp) { GRAD_SUMS(16) }

#define NORMALISE(C)                                                                                    \
    for (int64_t i = 0; i < n; i++)                                                                     \
        for (int c = 0; c < C; c++) y[i * C + c] = float_to_bf16(fmaf(bf16_to_float(x[i * C + c]), alpha[c], beta[c]));

/* ATen computes ((dy - grad_mean) - (x - mean) * k) * invstd * w, the multiply fused into the subtraction except in
   the channels its compiler vectorised (the first multiple of 16) */
#define GRAD_INPUT(C)                                                                                   \
    const int unfused = C / VECTOR_FLOATS * VECTOR_FLOATS;                                              \
    for (int64_t i = 0; i < n; i++) {                                                                   \
        for (int c = 0; c < unfused; c++) {                                                             \
            float v = (bf16_to_float(dy[i * C + c]) - grad_mean[c]) - (bf16_to_float(x[i * C + c]) - mean[c]) * k[c]; \
            dx[i * C + c] = float_to_bf16(v * invstd[c] * scale[c]);                                    \
        }                                                                                               \
        for (int c = unfused; c < C; c++) {                                                             \
            float v = fmaf(-(bf16_to_float(x[i * C + c]) - mean[c]), k[c], bf16_to_float(dy[i * C + c]) - grad_mean[c]); \
            dx[i * C + c] = float_to_bf16(v * invstd[c] * scale[c]);                                    \
        }                                                                                               \
    }

#define NORMALISE_ARGS const uint16_t* restrict x, uint16_t* restrict y, int64_t n, const float* alpha, const float* beta
static void normalise_any(int C, NORMALISE_ARGS) { NORMALISE(C) }
static void normalise_8(NORMALISE_ARGS) { NORMALISE(8) }
static void normalise_16(NORMALISE_ARGS) { NORMALISE(16) }

#define GRAD_INPUT_ARGS const uint16_t* restrict x, const uint16_t* restrict dy, uint16_t* restrict dx, int64_t n,    \
    const float* mean, const float* invstd, const float* scale, const float* grad_mean, const float* k
static void grad_input_any(int C, GRAD_INPUT_ARGS) { GRAD_INPUT(C) }
static void grad_input_8(GRAD_INPUT_ARGS) { GRAD_INPUT(8) }
static void grad_input_16(GRAD_INPUT_ARGS) { GRAD_INPUT(16) }

/* x, y: [n, C] bf16 (channels-last rows); w, b, running_mean, running_var: C floats or NULL */
int small_bn_forward(const uint16_t* x, uint16_t* y, int64_t n, int C, int threads, const float* w, const float* b,
                     float* running_mean, float* running_var, double momentum, double eps, float* save_mean,
                     float* save_invstd) {
    float sum[MAX_CHANNELS] = {0}, mean[MAX_CHANNELS], var_sum[MAX_CHANNELS] = {0};
    float alpha[MAX_CHANNELS], beta[MAX_CHANNELS];
    const float m = (float)momentum;
    int64_t chunk;
    if (C < 1 || C > MAX_CHANNELS || n < 1) return 1;
    chunk = rows_per_thread(n, threads);
    if (C == 8) stats_8(x, n, chunk, sum, mean, var_sum);
    else if (C == 16) stats_16(x, n, chunk, sum, mean, var_sum);
    else stats_any(C, x, n, chunk, sum, mean, var_sum);
    for (int c = 0; c < C; c++) {
        float var = var_sum[c] / (float)n;
        float invstd = 0.f;
        if (var != 0.f || eps != 0.0) invstd = (float)(1.0 / sqrt((double)var + eps));
        save_mean[c] = mean[c];
        save_invstd[c] = invstd;
        if (running_mean) running_mean[c] = m * mean[c] + (1 - m) * running_mean[c];
        if (running_var) running_var[c] = m * (var_sum[c] / (float)(n - 1)) + (1 - m) * running_var[c];
        alpha[c] = invstd * (w ? w[c] : 1.f);
        beta[c] = fmaf(-mean[c], alpha[c], b ? b[c] : 0.f);
    }
    if (C == 8) normalise_8(x, y, n, alpha, beta);
    else if (C == 16) normalise_16(x, y, n, alpha, beta);
    else normalise_any(C, x, y, n, alpha, beta);
    return 0;
}

/* dy, x, dx: [n, C] bf16; dx, grad_w, grad_b may be NULL (not wanted); mean, invstd: the forward's saved stats */
int small_bn_backward(const uint16_t* dy, const uint16_t* x, uint16_t* dx, int64_t n, int C, int threads,
                      const float* w, const float* mean, const float* invstd, float* grad_w, float* grad_b) {
    float sum[MAX_CHANNELS] = {0}, dotp[MAX_CHANNELS] = {0}, k[MAX_CHANNELS], grad_mean[MAX_CHANNELS];
    int64_t chunk;
    if (C < 1 || C > MAX_CHANNELS || n < 1) return 1;
    chunk = rows_per_thread(n, threads);
    if (C == 8) grad_sums_8(x, dy, n, chunk, mean, sum, dotp);
    else if (C == 16) grad_sums_16(x, dy, n, chunk, mean, sum, dotp);
    else grad_sums_any(C, x, dy, n, chunk, mean, sum, dotp);
    for (int c = 0; c < C; c++) {
        k[c] = dotp[c] * invstd[c] * invstd[c] / (float)n;
        grad_mean[c] = sum[c] / (float)n;
        if (grad_w) grad_w[c] = dotp[c] * invstd[c];
        if (grad_b) grad_b[c] = sum[c];
    }
    if (dx) {
        float scale[MAX_CHANNELS];
        for (int c = 0; c < C; c++) scale[c] = w ? w[c] : 1.f;
        if (C == 8) grad_input_8(x, dy, dx, n, mean, invstd, scale, grad_mean, k);
        else if (C == 16) grad_input_16(x, dy, dx, n, mean, invstd, scale, grad_mean, k);
        else grad_input_any(C, x, dy, dx, n, mean, invstd, scale, grad_mean, k);
    }
    return 0;
}
