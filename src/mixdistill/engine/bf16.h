/* bf16 <-> float as c10::BFloat16 converts them, for the C kernels next to this file (engine/ckernels.py builds them). */
#ifndef MIXDISTILL_BF16_H
#define MIXDISTILL_BF16_H
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* c10::BFloat16: round to nearest even, one NaN */
    uint32_t u;
    if (f != f) return 0x7fc0;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + (((u >> 16) & 1u) + 0x7fffu)) >> 16);
}

#endif
