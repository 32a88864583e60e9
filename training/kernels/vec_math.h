/*
 * e^x and ln(x) in plain float arithmetic, so that compilers vectorise them inline in the
 * kernels' loops (a libm call per element, or per vector through libmvec, costs more than the
 * work around it).
 *
 * e^x: 2^n * e^r with n = round(x / ln 2), r in [-ln2/2, ln2/2], e^r by a degree-6 polynomial:
 * ~1 ulp for -87 < x < 88. Below -87 it returns exactly 0 (the kernels mask scores with -1e30).
 */
#ifndef POSTTRAIN_VEC_MATH_H
#define POSTTRAIN_VEC_MATH_H

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

/* ln(x) for positive normal x, the same way: x = 2^e * m with m in [sqrt(1/2), sqrt(2)), ln(m) = ln(1 + f)
 * by a degree-9 polynomial in f; ~1 ulp. */
static inline float vec_logf(float x) {
    int32_t bits;
    memcpy(&bits, &x, sizeof(bits));
    int32_t e = ((bits >> 23) & 0xff) - 126; /* x = 2^e * m, m in [0.5, 1) */
    const int32_t mbits = (bits & 0x007fffff) | 0x3f000000;
    float m;
    memcpy(&m, &mbits, sizeof(m));
    const int small = m < 0.707106781f;
    e -= small;
    const float f = (small ? m + m : m) - 1.0f;
    const float z = f * f;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    const float ef = (float)e;
    float y = f * z * p - 2.12194440e-4f * ef - 0.5f * z;
    return f + y + 0.693359375f * ef;
}

#endif
