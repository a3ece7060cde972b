/* norm.c - RMSNorm and softmax over the last dim of F32 tensors (outer dims may be strided).
 *
 * RMSNorm sums squares in double: residual-stream values reach thousands in small Llamas and an
 * F32 running sum would lose digits. The squares of floats are exact in double, so the SIMD kernel
 * (4 double lanes x 2 accumulators) and its scalar twin (same 8 lanes, same combine order) give
 * identical bits. out = (x * r) * w with r = 1 / sqrt(mean + eps) rounded to float once.
 *
 * Softmax subtracts the row max first; -inf entries give exact zeros, a row that is all -inf gives
 * zeros (not NaN), NaN entries propagate. Each row is computed by one thread.
 */
#include <math.h>
#include <stdlib.h>
#include "internal.h"


/* ---- rmsnorm ---- */
static double sum_squares_scalar(const float *x, int64_t n) {
    double acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    for (int j = 0; i + j < n; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    /* the combine order of the AVX2 kernel below */
    double s0 = (acc[0] + acc[4]) + (acc[2] + acc[6]), s1 = (acc[1] + acc[5]) + (acc[3] + acc[7]);
    return s0 + s1;
}

#if CE_HAVE_AVX2
static double sum_squares_avx2(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(); /* lanes 0-3 and 4-7 */
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), hi = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
        a0 = _mm256_fmadd_pd(lo, lo, a0); /* exact product: same bits as the scalar mul + add */
        a1 = _mm256_fmadd_pd(hi, hi, a1);
    }
    double acc[8];
    _mm256_storeu_pd(acc, a0);
    _mm256_storeu_pd(acc + 4, a1);
    for (int j = 0; i + j < n; j++) acc[j] += (double)x[i + j] * (double)x[i + j];
    double s0 = (acc[0] + acc[4]) + (acc[2] + acc[6]), s1 = (acc[1] + acc[5]) + (acc[3] + acc[7]);
    return s0 + s1;
}
#endif

typedef struct {
    ce_tensor *out;
    const ce_tensor *x, *w; /* w NULL: no gain */
    float eps;
    int64_t rows, cols;
} rms_ctx;

static void rms_task(void *p, int ith, int nth) {
    const rms_ctx *c = p;
    int64_t lo, hi, n = c->cols;
    ce_split(c->rows, ith, nth, 1, &lo, &hi);
    const float *w = c->w ? (const float *)c->w->data : NULL;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = (const float *)ce_row_ptr(c->x, r);
        float *o = (float *)ce_row_ptr(c->out, r);
        double ss;
#if CE_HAVE_AVX2
        if (ce_simd_on) ss = sum_squares_avx2(x, n); else
#endif
        ss = sum_squares_scalar(x, n);
        float rs = (float)(1.0 / sqrt(ss / (double)n + (double)c->eps));
        int64_t i = 0;
#if CE_HAVE_AVX2
        if (ce_simd_on) {
            __m256 vr = _mm256_set1_ps(rs);
            for (; i + 8 <= n; i += 8) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vr);
                if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + i));
                _mm256_storeu_ps(o + i, v);
            }
        }
#endif
        for (; i < n; i++) o[i] = w ? (x[i] * rs) * w[i] : x[i] * rs;
    }
}

ce_status ce_rmsnorm(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, float eps) {
    CE_PROFILE(CE_OP_RMSNORM, .t = {out, x, w});
    ce_status st;
    if ((st = ce_check_out(out, "rmsnorm", "out", CE_F32))) return st;
    if ((st = ce_check(x, "rmsnorm", "x", CE_F32))) return st;
    if ((st = ce_check_same(out, x, "rmsnorm", "out", "x"))) return st;
    int64_t rows = ce_rows(x), cols = ce_cols(x);
    if (cols < 1) return ce_fail(CE_ERR_SHAPE, "rmsnorm: x has an empty last dim");
    if (w) {
        if ((st = ce_check(w, "rmsnorm", "w", CE_F32))) return st;
        if (ce_tensor_numel(w) != cols || ce_cols(w) != cols)
            return ce_fail(CE_ERR_SHAPE, "rmsnorm: w must be [%lld], got %lld elements (last dim %lld)",
                           (long long)cols, (long long)ce_tensor_numel(w), (long long)ce_cols(w));
    }
    if (!(eps >= 0.0f) || isinf(eps))
        return ce_fail(CE_ERR_ARG, "rmsnorm: eps must be finite and >= 0, got %g", (double)eps);
    if (rows == 0) return CE_OK;
    rms_ctx c = {out, x, w, eps, rows, cols};
    ce_parallel_n(rms_task, &c, ce_tasks(rows * cols, 16384, rows));
    return CE_OK;
}

/* ---- softmax ---- */
typedef struct {
    ce_tensor *out;
    const ce_tensor *x;
    float scale;
    int64_t rows, cols;
} softmax_ctx;

/* o = softmax(x * scale) for one row of n; o may equal x. */
static void softmax_row(float *o, const float *x, int64_t n, float scale) {
    float m = -INFINITY;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] * scale;
        m = v > m ? v : m;
        nan |= v != v;
    }
    if (nan) { /* NaN in, NaN out (as torch does) */
        for (int64_t i = 0; i < n; i++) o[i] = NAN;
        return;
    }
    if (m == -INFINITY) { /* every entry masked: no distribution, report zeros rather than NaN */
        for (int64_t i = 0; i < n; i++) o[i] = 0.0f;
        return;
    }
    for (int64_t i = 0; i < n; i++) o[i] = x[i] * scale - m;
    ce_vexp(o, o, n);
    double acc[4] = {0, 0, 0, 0}; /* four chains: the adds overlap; a fixed order either way */
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) acc[j] += o[i + j];
    for (; i < n; i++) acc[0] += o[i];
    float fs = (float)((acc[0] + acc[1]) + (acc[2] + acc[3]));
    for (i = 0; i < n; i++) o[i] /= fs;
}

static void softmax_task(void *p, int ith, int nth) {
    const softmax_ctx *c = p;
    int64_t lo, hi;
    ce_split(c->rows, ith, nth, 1, &lo, &hi);
    for (int64_t r = lo; r < hi; r++)
        softmax_row((float *)ce_row_ptr(c->out, r), (const float *)ce_row_ptr(c->x, r), c->cols, c->scale);
}

ce_status ce_softmax(ce_tensor *out, const ce_tensor *x, float scale) {
    CE_PROFILE(CE_OP_SOFTMAX, .t = {out, x});
    ce_status st;
    if ((st = ce_check_out(out, "softmax", "out", CE_F32))) return st;
    if ((st = ce_check(x, "softmax", "x", CE_F32))) return st;
    if ((st = ce_check_same(out, x, "softmax", "out", "x"))) return st;
    int64_t rows = ce_rows(x), cols = ce_cols(x);
    if (cols < 1) return ce_fail(CE_ERR_SHAPE, "softmax: x has an empty last dim");
    if (!isfinite(scale) || scale <= 0.0f)
        return ce_fail(CE_ERR_ARG, "softmax: scale must be finite and > 0, got %g", (double)scale);
    if (rows == 0) return CE_OK;
    softmax_ctx c = {out, x, scale, rows, cols};
    ce_parallel_n(softmax_task, &c, ce_tasks(rows * cols, 16384, rows));
    return CE_OK;
}
