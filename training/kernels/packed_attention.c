/*
 * Causal attention over the conversations of packed rows, fp32, CPU: forward and backward.
 *
 * Why this exists: for the small heads of the models we train on CPU (head_dim 32-64,
 * conversations of ~100-500 tokens), ATen's CPU flash-attention kernel runs at 20-40 GFLOP/s
 * on one core, a quarter of what the core's matmuls reach, and attention was the largest
 * non-matmul cost of a training step. Here each (conversation, query head) is one small
 * dense problem whose scores fit in L1/L2: the keys (scaled) and values are transposed once
 * into scratch, then blocks of ROWS query rows are scored against all their keys with
 * register-sized accumulators (masked and max-reduced while still in registers), soft-maxed
 * with a vectorised exp, and multiplied by the values. The backward recomputes the
 * probabilities from the saved log-sum-exp (like flash attention), so nothing quadratic is
 * kept between the passes; it keeps a BLOCK of query rows' probabilities and score gradients
 * so that the key and value gradients accumulate over BLOCK rows per pass, not ROWS.
 *
 * Layout (strides in elements; the last dimension of every tensor is contiguous):
 *   q [B, Hq, T, D], k / v [B, Hkv, T, D], out [B, T, Hq, D], lse [B, Hq, T]
 *   grad_out like out; grad_q like q; grad_k / grad_v like k / v (written, not accumulated)
 * segs: nsegs triples (row, start, length); every position of a row belongs to exactly one.
 * Query head h reads key/value head h / (Hq / Hkv) (grouped-query attention).
 *
 * Compiled at first use by training/cpu/kernels.py with the host's own instruction set.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec_math.h"

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<the model's head_dim>: every inner loop is unrolled for it"
#endif
#define D HEAD_DIM
/* Block sizes, tuned on a Sapphire Rapids core (AVX-512) for head_dim 32 and 64: ROWS query rows
 * are scored together (each key load serves ROWS rows) and CHUNK keys form one register block of
 * ROWS x CHUNK accumulators. The passes over scores run over whole CHUNKs of keys; the softmax
 * loops over whole 16-float vectors (no scalar tails), hence CHUNK % 16 == 0. KEYS keys x D
 * form the register block of the key/value gradients. */
#define ROWS 8
#define CHUNK 32
#define KEYS 8
_Static_assert(CHUNK % 16 == 0, "score rows are processed in whole 16-float vectors");

#define MASKED (-1.0e30f) /* a score past the causal edge: vec_expf gives exactly 0 */

typedef struct {
    int64_t b, h, t;
} strides3;

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* s[r][j] = sum_d a[r][d] * bt[d][j] for r < nr rows of a (row stride a_st), j < ncols (padded
 * to CHUNK; bt is [d][ld] with zeros past the valid columns). With rowmax: query row r is at
 * position first + r, scores of keys past it are MASKED and rowmax[r] is its largest score. */
static void rows_times_transposed(const float *restrict a, int64_t a_st, int nr, const float *restrict bt, int64_t ld,
                                  int64_t ncols, float *restrict s, int64_t first, float *restrict rowmax) {
    if (rowmax)
        for (int r = 0; r < ROWS; r++) rowmax[r] = MASKED;
    for (int64_t j0 = 0; j0 < ncols; j0 += CHUNK) {
        float acc[ROWS][CHUNK];
        memset(acc, 0, sizeof(acc));
        for (int64_t d = 0; d < D; d++) {
            const float *col = bt + d * ld + j0;
            for (int r = 0; r < ROWS; r++) {
                const float x = r < nr ? a[r * a_st + d] : 0.0f;
#pragma omp simd
                for (int jj = 0; jj < CHUNK; jj++) acc[r][jj] += x * col[jj];
            }
        }
        if (!rowmax) {
            for (int r = 0; r < ROWS; r++) memcpy(s + r * ld + j0, acc[r], sizeof(acc[r]));
            continue;
        }
        const int diagonal = j0 + CHUNK > first + 1; /* some key of this chunk is past some row */
        for (int r = 0; r < ROWS; r++) {
            float m = rowmax[r];
            const int64_t last = first + r - j0; /* last visible key of row r, relative to j0 */
            float *dst = s + r * ld + j0;
            if (diagonal) {
#pragma omp simd reduction(max : m)
                for (int jj = 0; jj < CHUNK; jj++) {
                    const float x = jj > last ? MASKED : acc[r][jj];
                    dst[jj] = x;
                    m = x > m ? x : m;
                }
            } else {
#pragma omp simd reduction(max : m)
                for (int jj = 0; jj < CHUNK; jj++) {
                    dst[jj] = acc[r][jj];
                    m = acc[r][jj] > m ? acc[r][jj] : m;
                }
            }
            rowmax[r] = m;
        }
    }
}

/* o[r][:] = sum_{j < n} p[r][j] * m[j][:]  (m rows of D floats, row stride m_st) */
static void probs_times_rows(const float *restrict p, int64_t ld, const float *restrict m, int64_t m_st, int64_t n,
                             float *restrict o) {
    float acc[ROWS][D];
    memset(acc, 0, sizeof(acc));
    for (int64_t j = 0; j < n; j++) {
        const float *row = m + j * m_st;
        for (int r = 0; r < ROWS; r++) {
            const float w = p[r * ld + j];
#pragma omp simd
            for (int d = 0; d < D; d++) acc[r][d] += w * row[d];
        }
    }
    memcpy(o, acc, sizeof(acc));
}

/* Transpose L rows of D floats (row stride st) into dst[D][ld], times `scale`, zero-padded to ld. */
static void transpose_rows(const float *src, int64_t st, int64_t L, int64_t ld, float scale, float *dst) {
    for (int64_t d = 0; d < D; d++) {
        float *col = dst + d * ld;
        for (int64_t j = 0; j < L; j++) col[j] = src[j * st + d] * scale;
        for (int64_t j = L; j < ld; j++) col[j] = 0.0f;
    }
}

static int64_t longest(const int64_t *segs, int64_t nsegs) {
    int64_t L = 1;
    for (int64_t i = 0; i < nsegs; i++)
        if (segs[3 * i + 2] > L) L = segs[3 * i + 2];
    return L;
}

int packed_attention_forward(const float *q, const float *k, const float *v, float *out, float *lse,
                             const int64_t *segs, int64_t nsegs, int64_t Hq, int64_t Hkv,
                             const int64_t *st, float scale) {
    /* st: q (b,h,t), k (b,h,t), v (b,h,t), out (b,t,h), lse (b,h,t) */
    const strides3 qs = {st[0], st[1], st[2]}, ks = {st[3], st[4], st[5]}, vs = {st[6], st[7], st[8]};
    const int64_t ob = st[9], ot = st[10], oh = st[11], lb = st[12], lh = st[13], lt = st[14];
    const int64_t group = Hq / Hkv;
    const int64_t ld = round_up(longest(segs, nsegs) + ROWS, CHUNK);
    float *kt = aligned_alloc(64, sizeof(float) * D * ld);
    float *s = aligned_alloc(64, sizeof(float) * ROWS * ld);
    float *o = aligned_alloc(64, sizeof(float) * ROWS * round_up(D, 16));
    const int failed = !kt || !s || !o;
    for (int64_t g = 0; g < nsegs && !failed; g++) {
        const int64_t b = segs[3 * g], t0 = segs[3 * g + 1], L = segs[3 * g + 2];
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const float *K = k + b * ks.b + hk * ks.h + t0 * ks.t;
            const float *V = v + b * vs.b + hk * vs.h + t0 * vs.t;
            transpose_rows(K, ks.t, L, ld, scale, kt);
            for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
                const float *Q = q + b * qs.b + h * qs.h + t0 * qs.t;
                for (int64_t i0 = 0; i0 < L; i0 += ROWS) {
                    const int nr = (int)(L - i0 < ROWS ? L - i0 : ROWS);
                    const int64_t n = i0 + nr; /* keys this block needs */
                    float inv[ROWS], rowmax[ROWS], rowsum[ROWS], rowlse[ROWS];
                    rows_times_transposed(Q + i0 * qs.t, qs.t, nr, kt, ld, n, s, i0, rowmax);
                    const int64_t n16 = round_up(n, 16); /* whole vectors: no scalar tails */
                    for (int r = 0; r < nr; r++) {
                        float *row = s + r * ld;
                        const float m = rowmax[r];
                        float part[16] = {0};
                        for (int64_t j0 = 0; j0 < n16; j0 += 16) {
#pragma omp simd
                            for (int jj = 0; jj < 16; jj++) {
                                const float e = vec_expf(row[j0 + jj] - m);
                                row[j0 + jj] = e;
                                part[jj] += e;
                            }
                        }
                        float sum = 0.0f;
                        for (int jj = 0; jj < 16; jj++) sum += part[jj];
                        rowsum[r] = sum;
                    }
#pragma omp simd
                    for (int r = 0; r < ROWS; r++) {
                        const float sum = r < nr ? rowsum[r] : 1.0f;
                        inv[r] = 1.0f / sum; /* applied to the output row: one pass less over the scores */
                        rowlse[r] = rowmax[r] + vec_logf(sum);
                    }
                    for (int r = 0; r < nr; r++) lse[b * lb + h * lh + (t0 + i0 + r) * lt] = rowlse[r];
                    for (int r = nr; r < ROWS; r++) memset(s + r * ld, 0, sizeof(float) * n);
                    probs_times_rows(s, ld, V, vs.t, n, o);
                    for (int r = 0; r < nr; r++) {
                        float *dst = out + b * ob + (t0 + i0 + r) * ot + h * oh;
#pragma omp simd
                        for (int d = 0; d < D; d++) dst[d] = o[r * D + d] * inv[r];
                    }
                }
            }
        }
    }
    free(kt);
    free(s);
    free(o);
    return failed;
}

/* out[j][:] += sum_{r < nr} p[r][j] * m[r][:] for keys j < n: the gradient of keys or values, over a
 * block of query rows. Keys j of a block are past the rows r < j - first (their p is zero), so
 * those rows are skipped. Blocks of KEYS keys x D stay in registers while the rows stream by. */
static void accumulate_keys(const float *restrict p, int64_t ld, const float *restrict m, int64_t m_st, int nr,
                            int64_t n, int64_t first, float *restrict out, int64_t out_st) {
    for (int64_t j0 = 0; j0 < n; j0 += KEYS) {
        float acc[KEYS][D];
        memset(acc, 0, sizeof(acc));
        const int from = j0 > first ? (int)(j0 - first) : 0;
        for (int r = from; r < nr; r++) {
            const float *row = m + r * m_st;
            const float *w = p + r * ld + j0;
            for (int jj = 0; jj < KEYS; jj++) {
#pragma omp simd
                for (int d = 0; d < D; d++) acc[jj][d] += w[jj] * row[d];
            }
        }
        const int nk = n - j0 < KEYS ? (int)(n - j0) : KEYS;
        for (int jj = 0; jj < nk; jj++) {
            float *dst = out + (j0 + jj) * out_st;
#pragma omp simd
            for (int d = 0; d < D; d++) dst[d] += acc[jj][d];
        }
    }
}

/* The backward runs over blocks of BLOCK query rows (BLOCK / ROWS register blocks): their scores,
 * probabilities and score gradients are kept, so the key and value gradients accumulate over
 * BLOCK rows per pass. Each register block computes its own round_up(rows' end, CHUNK) columns;
 * the softmax pass writes zeros past the causal edge up to the block's round_up(end, CHUNK). */
#define BLOCK 32
_Static_assert(BLOCK % ROWS == 0 && BLOCK % CHUNK == 0, "blocks of whole register blocks and chunks");

int packed_attention_backward(const float *q, const float *k, const float *v, const float *out, const float *lse,
                              const float *grad_out, float *grad_q, float *grad_k, float *grad_v, const int64_t *segs,
                              int64_t nsegs, int64_t Hq, int64_t Hkv, const int64_t *st, float scale) {
    /* st: q, k, v (b,h,t); out (b,t,h); lse (b,h,t); grad_out (b,t,h); grad_q, grad_k, grad_v (b,h,t) */
    const strides3 qs = {st[0], st[1], st[2]}, ks = {st[3], st[4], st[5]}, vs = {st[6], st[7], st[8]};
    const int64_t ob = st[9], ot = st[10], oh = st[11], lb = st[12], lh = st[13], lt = st[14];
    const int64_t gb = st[15], gt = st[16], gh = st[17];
    const strides3 dqs = {st[18], st[19], st[20]}, dks = {st[21], st[22], st[23]}, dvs = {st[24], st[25], st[26]};
    const int64_t group = Hq / Hkv;
    const int64_t ld = round_up(longest(segs, nsegs) + KEYS, CHUNK);
    float *kt = aligned_alloc(64, sizeof(float) * D * ld);
    float *vt = aligned_alloc(64, sizeof(float) * D * ld);
    float *p = aligned_alloc(64, sizeof(float) * BLOCK * ld);
    float *ds = aligned_alloc(64, sizeof(float) * BLOCK * ld);
    float *o = aligned_alloc(64, sizeof(float) * ROWS * round_up(D, 16));
    const int failed = !kt || !vt || !p || !ds || !o;
    for (int64_t g = 0; g < nsegs && !failed; g++) {
        const int64_t b = segs[3 * g], t0 = segs[3 * g + 1], L = segs[3 * g + 2];
        for (int64_t hk = 0; hk < Hkv; hk++) {
            const float *K = k + b * ks.b + hk * ks.h + t0 * ks.t;
            const float *V = v + b * vs.b + hk * vs.h + t0 * vs.t;
            float *dK = grad_k + b * dks.b + hk * dks.h + t0 * dks.t;
            float *dV = grad_v + b * dvs.b + hk * dvs.h + t0 * dvs.t;
            transpose_rows(K, ks.t, L, ld, scale, kt);
            transpose_rows(V, vs.t, L, ld, 1.0f, vt);
            for (int64_t j = 0; j < L; j++) {
                memset(dK + j * dks.t, 0, sizeof(float) * D);
                memset(dV + j * dvs.t, 0, sizeof(float) * D);
            }
            for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
                const float *Q = q + b * qs.b + h * qs.h + t0 * qs.t;
                const float *O = out + b * ob + t0 * ot + h * oh;
                const float *dO = grad_out + b * gb + t0 * gt + h * gh;
                const float *LSE = lse + b * lb + h * lh + t0 * lt;
                float *dQ = grad_q + b * dqs.b + h * dqs.h + t0 * dqs.t;
                for (int64_t i0 = 0; i0 < L; i0 += BLOCK) {
                    const int nb = (int)(L - i0 < BLOCK ? L - i0 : BLOCK);
                    const int64_t n = i0 + nb, nc = round_up(n, CHUNK); /* columns the passes touch */
                    for (int r0 = 0; r0 < nb; r0 += ROWS) {
                        const int nr = nb - r0 < ROWS ? nb - r0 : ROWS;
                        const int64_t first = i0 + r0, ns = first + nr;
                        float *P = p + r0 * ld, *dS = ds + r0 * ld;
                        rows_times_transposed(Q + first * qs.t, qs.t, nr, kt, ld, ns, P, 0, NULL);
                        rows_times_transposed(dO + first * gt, gt, nr, vt, ld, ns, dS, 0, NULL);
                        for (int r = 0; r < nr; r++) {
                            float *prow = P + r * ld, *dsrow = dS + r * ld;
                            const int64_t i = first + r;
                            float delta = 0.0f; /* sum_d dO[i][d] * O[i][d] */
#pragma omp simd reduction(+ : delta)
                            for (int d = 0; d < D; d++) delta += dO[i * gt + d] * O[i * ot + d];
                            const float row_lse = LSE[i * lt];
                            for (int64_t j0 = 0; j0 < nc; j0 += 16) {
#pragma omp simd
                                for (int jj = 0; jj < 16; jj++) {
                                    /* past the causal edge: vec_expf(MASKED) is exactly 0 */
                                    const float pj = vec_expf(j0 + jj <= i ? prow[j0 + jj] - row_lse : MASKED);
                                    prow[j0 + jj] = pj;
                                    /* and 0 there whatever the scratch held (a NaN times 0 is not 0) */
                                    dsrow[j0 + jj] = j0 + jj <= i ? pj * (dsrow[j0 + jj] - delta) * scale : 0.0f;
                                }
                            }
                        }
                        probs_times_rows(dS, ld, K, ks.t, ns, o); /* dQ rows (K unscaled: scale is in ds) */
                        for (int r = 0; r < nr; r++) memcpy(dQ + (first + r) * dqs.t, o + r * D, sizeof(float) * D);
                    }
                    accumulate_keys(ds, ld, Q + i0 * qs.t, qs.t, nb, n, i0, dK, dks.t);
                    accumulate_keys(p, ld, dO + i0 * gt, gt, nb, n, i0, dV, dvs.t);
                }
            }
        }
    }
    free(kt);
    free(vt);
    free(p);
    free(ds);
    free(o);
    return failed;
}
