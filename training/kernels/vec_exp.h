/*
 * e^x in plain float arithmetic, so that compilers vectorise it inline in the kernels' loops
 * (a libm call per element, or per vector through libmvec, costs more than the work around it).
 *
 * 2^n * e^r with n = round(x / ln 2), r in [-ln2/2, ln2/2], e^r by a degree-6 polynomial:
 * ~1 ulp for -87 < x < 88. Below -87 it returns exactly 0 (the kernels mask scores with -1e30).
 */
#ifndef POSTTRAIN_VEC_EXP_H
#define POSTTRAIN_VEC_EXP_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float vec_expf(float x) {
    const float clamped = x < -87.0f ? -87.0f : x;
    const float n = floorf(clamped * 1.44269504f + 0.5f);
    const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof(two_n));
    return x <= -87.0f ? 0.0f : p * two_n;
}

#endif
