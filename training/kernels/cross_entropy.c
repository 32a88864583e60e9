/*
 * Cross-entropy over the vocabulary, fp32, CPU: the loss (sum over rows) and its gradient.
 *
 * Why this exists: at our model sizes the logits of the labelled positions are a
 * [tokens x vocabulary] matrix of several MB, and ATen's eager cross-entropy passes over it
 * about eight times (log_softmax, the gather, a zero-filled gradient, the scatter, the
 * log_softmax backward, the scaling); on CPU that was ~5% of a training step. Here the forward
 * reads each row twice (max, then the sum of exponentials) and keeps one log-sum-exp per row;
 * the backward reads the row once more and writes its gradient, (softmax - one-hot) x scale,
 * in one pass (it may write over the logits themselves).
 *
 * Rows whose label is negative (the ignore index) add no loss and get a zero gradient.
 */
#include <stdint.h>
#include <string.h>

#include "vec_math.h"

/* Sum of -log softmax(row)[label] over the rows into *loss (double), and each row's log-sum-exp.
 * Returns the index + 1 of the first row whose label is >= vocab, or 0. */
int64_t cross_entropy_forward(const float *logits, int64_t row_stride, const int64_t *labels, int64_t rows,
                              int64_t vocab, float *lse, double *loss) {
    double total = 0.0;
    for (int64_t i = 0; i < rows; i++) {
        const float *x = logits + i * row_stride;
        if (labels[i] >= vocab) return i + 1;
        float m = x[0];
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < vocab; j++) m = x[j] > m ? x[j] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < vocab; j++) sum += vec_expf(x[j] - m);
        lse[i] = m + logf(sum);
        if (labels[i] >= 0) total += (double)lse[i] - (double)x[labels[i]];
    }
    *loss = total;
    return 0;
}

/* grad[i][:] = (softmax(row i) - onehot(label i)) * scale; zero for ignored rows. grad may be logits. */
void cross_entropy_backward(const float *logits, int64_t row_stride, const int64_t *labels, const float *lse,
                            int64_t rows, int64_t vocab, float scale, float *grad, int64_t grad_stride) {
    for (int64_t i = 0; i < rows; i++) {
        const float *x = logits + i * row_stride;
        float *g = grad + i * grad_stride;
        if (labels[i] < 0) {
            memset(g, 0, sizeof(float) * vocab);
            continue;
        }
        const float shift = lse[i];
#pragma omp simd
        for (int64_t j = 0; j < vocab; j++) g[j] = vec_expf(x[j] - shift) * scale;
        g[labels[i]] -= scale;
    }
}
