/* 2x2, stride-2 max-pool of channels-last bf16 maps, equal bit for bit to ATen's CPU kernel (torch 2.x:
 * MaxPoolKernel.cpp's channels-last path, max_pool2d_with_indices and its backward).
 *
 * ATen walks each output's window in row order and keeps an element when it is greater than the running maximum
 * (which starts at -inf, with the window's first index) or is NaN, in float; the output is that float rounded to
 * bf16 (a NaN becomes 0xffff in its vectorised 16-float channel blocks, 0x7fc0 in the rest) and the index is
 * ih * W + iw. Its backward zeroes the input gradient and adds each
 * output gradient at its index in bf16 (0 + g: -0 becomes +0, a NaN 0x7fc0). Windows of a 2x2 stride-2 pool do not
 * overlap, so here the backward writes every input gradient once. Below 32 channels ATen does this one channel at
 * a time; here the channels of an output go through the vector units side by side (one copy per common channel
 * count). small_pool.py checks both directions against ATen on the first call of every channel count.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16.h"

/* the window's maximum as ATen keeps it: an element replaces the running maximum (from -inf) when greater or NaN */
#define TAKE(p, k)                                                                                      \
    v = bf16_to_float((p)[c]);                                                                          \
    keep = v > m || v != v;                                                                             \
    m = keep ? v : m;                                                                                   \
    at = keep ? (k) : at;

/* ATen's vectorised channels (the first multiple of 16 floats) round a NaN to 0xffff, the rest to 0x7fc0 */
#define TO_BF16(C, c, f) ((f) != (f) && (c) < (C) / 16 * 16 ? 0xffff : float_to_bf16(f))

/* x: [N, H, W, C]; y: [N, OH, OW, C] */
#define POOL_FORWARD(C)                                                                                 \
    for (int64_t n = 0; n < N; n++)                                                                     \
        for (int64_t oh = 0; oh < OH; oh++) {                                                           \
            const uint16_t* top = x + (n * H + 2 * oh) * W * (C);                                       \
            const uint16_t* bottom = top + W * (C);                                                     \
            uint16_t* out = y + (n * OH + oh) * OW * (C);                                               \
            for (int64_t ow = 0; ow < OW; ow++) {                                                       \
                const uint16_t* a = top + 2 * ow * (C);                                                 \
                const uint16_t* b = bottom + 2 * ow * (C);                                              \
                for (int c = 0; c < (C); c++) {                                                         \
                    float m = -INFINITY, v;                                                             \
                    int at = 0, keep;                                                                   \
                    TAKE(a, 0) TAKE(a + (C), 1) TAKE(b, 2) TAKE(b + (C), 3)                             \
                    (void)at;                                                                           \
                    out[ow * (C) + c] = TO_BF16(C, c, m);                                               \
                }                                                                                       \
            }                                                                                           \
        }

#define FORWARD_ARGS const uint16_t* restrict x, uint16_t* restrict y, int64_t N, int64_t H, int64_t W, int64_t OH, \
    int64_t OW
static void forward_any(int C, FORWARD_ARGS) { POOL_FORWARD(C) }
static void forward_8(FORWARD_ARGS) { POOL_FORWARD(8) }
static void forward_16(FORWARD_ARGS) { POOL_FORWARD(16) }
static void forward_32(FORWARD_ARGS) { POOL_FORWARD(32) }
static void forward_64(FORWARD_ARGS) { POOL_FORWARD(64) }

/* the input gradient of each window: g (as 0 + g in bf16) at the element the forward kept, 0 elsewhere */
#define POOL_BACKWARD(C)                                                                                \
    for (int64_t n = 0; n < N; n++)                                                                     \
        for (int64_t oh = 0; oh < OH; oh++) {                                                           \
            const uint16_t* top = x + (n * H + 2 * oh) * W * (C);                                       \
            const uint16_t* bottom = top + W * (C);                                                     \
            uint16_t* dtop = dx + (n * H + 2 * oh) * W * (C);                                           \
            uint16_t* dbottom = dtop + W * (C);                                                         \
            const uint16_t* g = dy + (n * OH + oh) * OW * (C);                                          \
            for (int64_t ow = 0; ow < OW; ow++) {                                                       \
                const uint16_t* a = top + 2 * ow * (C);                                                 \
                const uint16_t* b = bottom + 2 * ow * (C);                                              \
                uint16_t* da = dtop + 2 * ow * (C);                                                     \
                uint16_t* db = dbottom + 2 * ow * (C);                                                  \
                for (int c = 0; c < (C); c++) {                                                         \
                    float m = -INFINITY, v;                                                             \
                    int at = 0, keep;                                                                   \
                    uint16_t d = float_to_bf16(0.f + bf16_to_float(g[ow * (C) + c]));                   \
                    TAKE(a, 0) TAKE(a + (C), 1) TAKE(b, 2) TAKE(b + (C), 3)                             \
                    da[c] = d & -(uint16_t)(at == 0);                                                   \
                    da[(C) + c] = d & -(uint16_t)(at == 1);                                             \
                    db[c] = d & -(uint16_t)(at == 2);                                                   \
                    db[(C) + c] = d & -(uint16_t)(at == 3);                                             \
                }                                                                                       \
            }                                                                                           \
        }

#define BACKWARD_ARGS const uint16_t* restrict x, const uint16_t* restrict dy, uint16_t* restrict dx, int64_t N, \
    int64_t H, int64_t W, int64_t OH, int64_t OW
static void backward_any(int C, BACKWARD_ARGS) { POOL_BACKWARD(C) }
static void backward_8(BACKWARD_ARGS) { POOL_BACKWARD(8) }
static void backward_16(BACKWARD_ARGS) { POOL_BACKWARD(16) }
static void backward_32(BACKWARD_ARGS) { POOL_BACKWARD(32) }
static void backward_64(BACKWARD_ARGS) { POOL_BACKWARD(64) }

int small_pool_forward(const uint16_t* x, uint16_t* y, int64_t N, int64_t H, int64_t W, int C) {
    int64_t OH = H / 2, OW = W / 2;
    if (C < 1 || N < 1 || OH < 1 || OW < 1) return 1;
    if (C == 8) forward_8(x, y, N, H, W, OH, OW);
    else if (C == 16) forward_16(x, y, N, H, W, OH, OW);
    else if (C == 32) forward_32(x, y, N, H, W, OH, OW);
    else if (C == 64) forward_64(x, y, N, H, W, OH, OW);
    else forward_any(C, x, y, N, H, W, OH, OW);
    return 0;
}

/* x, dx: [N, H, W, C]; dy: [N, OH, OW, C]; rows and columns no window covers (odd H or W) get zeros */
int small_pool_backward(const uint16_t* x, const uint16_t* dy, uint16_t* dx, int64_t N, int64_t H, int64_t W,
                        int C) {
    int64_t OH = H / 2, OW = W / 2;
    if (C < 1 || N < 1 || OH < 1 || OW < 1) return 1;
    if (H % 2 || W % 2) memset(dx, 0, (size_t)(N * H * W * C) * sizeof(uint16_t));
    if (C == 8) backward_8(x, dy, dx, N, H, W, OH, OW);
    else if (C == 16) backward_16(x, dy, dx, N, H, W, OH, OW);
    else if (C == 32) backward_32(x, dy, dx, N, H, W, OH, OW);
    else if (C == 64) backward_64(x, dy, dx, N, H, W, OH, OW);
    else backward_any(C, x, dy, dx, N, H, W, OH, OW);
    return 0;
}
