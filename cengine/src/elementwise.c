/* elementwise.c - silu, gelu, silu_mul (SwiGLU), add, mul, scale, and the vector exp shared with
 * norm.c and attention.c.
 *
 * Every op is out = f(a[, b]) on F32 tensors whose last dim is contiguous; outer dims may be
 * strided. out may be the very same memory as an input (in place); partial overlaps are undefined.
 * Threads split the flattened elements; SIMD kernels handle their tails with masked loads so every
 * element takes the same code path wherever a thread boundary falls: results do not depend on the
 * thread count. add / mul / scale are exact in both paths; silu uses a polynomial exp under SIMD
 * (within ~2 ulp of expf) and libm expf in the scalar twin.
 */
#include <math.h>
#include "internal.h"

/* ---- exp ---- */
#if CE_HAVE_AVX2
/* Cephes-style expf: n = round(x log2 e), r = x - n ln2 (two-part ln2), degree-6 polynomial,
 * times 2^n. Overflow gives inf, results below FLT_MIN flush to 0, NaN stays NaN. */
static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.72283905f), lo = _mm256_set1_ps(-87.33654475f);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* n can reach 128 just below the overflow threshold: scale by 2^(n-1) then by 2 */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
    ni = _mm256_add_epi32(ni, big); /* big lanes are -1: n - 1 */
    __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    y = _mm256_mul_ps(y, pow2);
    y = _mm256_blendv_ps(y, _mm256_add_ps(y, y), _mm256_castsi256_ps(big));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, x, nan);
}

/* lane mask for the first n (< 8) lanes of a tail */
static inline __m256i tail_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

/* y[i] = exp(x[i]) for n floats; y may equal x. Used by softmax and attention too. */
void ce_vexp(float *y, const float *x, int64_t n) {
#if CE_HAVE_AVX2
    if (ce_simd_on) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, exp256(_mm256_loadu_ps(x + i)));
        if (i < n) {
            __m256i m = tail_mask(n - i);
            _mm256_maskstore_ps(y + i, m, exp256(_mm256_maskload_ps(x + i, m)));
        }
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) y[i] = expf(x[i]);
}

/* ---- row kernels: o[i] = f(a[i], b[i]) for n elements; b unused by unary ops ---- */
typedef void (*row_fn)(float *o, const float *a, const float *b, int64_t n, float s);

static void silu_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)b; (void)s;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] / (1.0f + expf(-a[i]));
}
static void silu_mul_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)s;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}
static void gelu_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)b; (void)s;
    const float k_beta = 0.7978845608028654f; /* sqrt(2 / pi) */
    for (int64_t i = 0; i < n; i++) {
        float x = a[i];
        o[i] = 0.5f * x * (1.0f + tanhf(k_beta * (x + 0.044715f * x * x * x)));
    }
}
static void add_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)s;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] + b[i];
}
static void mul_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)s;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] * b[i];
}
static void scale_scalar(float *o, const float *a, const float *b, int64_t n, float s) {
    (void)b;
    for (int64_t i = 0; i < n; i++) o[i] = a[i] * s;
}

#if CE_HAVE_AVX2
/* One template for the AVX2 kernels: OP(va, vb) on 8 lanes, masked tail. */
#define CE_EW_AVX2(name, USES_B, OP)                                                        \
    static void name(float *o, const float *a, const float *b, int64_t n, float s) {        \
        const __m256 vs = _mm256_set1_ps(s), one = _mm256_set1_ps(1.0f);                    \
        (void)vs; (void)one; (void)b;                                                       \
        int64_t i = 0;                                                                      \
        for (; i + 8 <= n; i += 8) {                                                        \
            __m256 va = _mm256_loadu_ps(a + i);                                             \
            __m256 vb = USES_B ? _mm256_loadu_ps(b + i) : va;                               \
            (void)vb;                                                                       \
            _mm256_storeu_ps(o + i, OP);                                                    \
        }                                                                                   \
        if (i < n) {                                                                        \
            __m256i m = tail_mask(n - i);                                                   \
            __m256 va = _mm256_maskload_ps(a + i, m);                                       \
            __m256 vb = USES_B ? _mm256_maskload_ps(b + i, m) : va;                         \
            (void)vb;                                                                       \
            _mm256_maskstore_ps(o + i, m, OP);                                              \
        }                                                                                   \
    }

#define SILU(va) _mm256_div_ps(va, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), va))))
CE_EW_AVX2(silu_avx2, 0, SILU(va))
CE_EW_AVX2(silu_mul_avx2, 1, _mm256_mul_ps(SILU(va), vb))
CE_EW_AVX2(add_avx2, 1, _mm256_add_ps(va, vb))
CE_EW_AVX2(mul_avx2, 1, _mm256_mul_ps(va, vb))
CE_EW_AVX2(scale_avx2, 0, _mm256_mul_ps(va, vs))
#undef SILU
#endif

/* ---- driver ---- */
typedef struct {
    row_fn fn;
    ce_tensor *out;
    const ce_tensor *a, *b; /* b NULL for unary ops */
    int b_row;              /* b is one row [cols] broadcast over a's rows */
    float s;
    int64_t rows, cols;
} ew_ctx;

static void ew_task(void *p, int ith, int nth) {
    const ew_ctx *c = p;
    int64_t lo, hi;
    ce_split(c->rows * c->cols, ith, nth, 64, &lo, &hi);
    while (lo < hi) {
        int64_t r = lo / c->cols, c0 = lo % c->cols;
        int64_t c1 = c->cols < c0 + (hi - lo) ? c->cols : c0 + (hi - lo);
        float *o = (float *)ce_row_ptr(c->out, r) + c0;
        const float *a = (const float *)ce_row_ptr(c->a, r) + c0;
        const float *b = NULL;
        if (c->b) b = (const float *)ce_row_ptr(c->b, c->b_row ? 0 : r) + c0;
        c->fn(o, a, b, c1 - c0, c->s);
        lo += c1 - c0;
    }
}

/* na / nb: the argument names for messages; nb NULL for unary ops. */
static ce_status run(const char *op, const char *na, const char *nb, row_fn scalar, row_fn simd,
                     ce_tensor *out, const ce_tensor *a, const ce_tensor *b, float s) {
    ce_status st;
    if ((st = ce_check_out(out, op, "out", CE_F32))) return st;
    if ((st = ce_check(a, op, na, CE_F32))) return st;
    if ((st = ce_check_same(out, a, op, "out", na))) return st;
    if (nb && !b) return ce_fail(CE_ERR_ARG, "%s: %s is NULL", op, nb);
    ew_ctx c = {scalar, out, a, b, 0, s, ce_rows(a), ce_cols(a)};
    if (b) {
        if ((st = ce_check(b, op, nb, CE_F32))) return st;
        if (ce_cols(b) != c.cols)
            return ce_fail(CE_ERR_SHAPE, "%s: %s has last dim %lld but %s has %lld", op, nb,
                           (long long)ce_cols(b), na, (long long)c.cols);
        if (ce_tensor_numel(b) == c.cols) c.b_row = 1;
        else if (ce_tensor_numel(b) != ce_tensor_numel(a))
            return ce_fail(CE_ERR_SHAPE,
                           "%s: %s has %lld elements; it must match %s (%lld) or be one row of %lld",
                           op, nb, (long long)ce_tensor_numel(b), na, (long long)ce_tensor_numel(a),
                           (long long)c.cols);
    }
#if CE_HAVE_AVX2
    if (ce_simd_on && simd) c.fn = simd;
#else
    (void)simd;
#endif
    int64_t n = c.rows * c.cols;
    if (n == 0) return CE_OK;
    /* waking the pool costs a few microseconds: only worth it for large tensors */
    ce_parallel_n(ew_task, &c, (int)(n / 32768 + 1 < 256 ? n / 32768 + 1 : 256));
    return CE_OK;
}

#if CE_HAVE_AVX2
#define SIMD(f) f
#else
#define SIMD(f) NULL
#endif

ce_status ce_silu(ce_tensor *out, const ce_tensor *x) {
    CE_PROFILE(CE_OP_SILU, .t = {out, x});
    return run("silu", "x", NULL, silu_scalar, SIMD(silu_avx2), out, x, NULL, 0.0f);
}

ce_status ce_gelu(ce_tensor *out, const ce_tensor *x) {
    CE_PROFILE(CE_OP_GELU, .t = {out, x});
    return run("gelu", "x", NULL, gelu_scalar, NULL, out, x, NULL, 0.0f);
}

/* up must have gate's shape (no broadcasting): SwiGLU's two projections. */
ce_status ce_silu_mul(ce_tensor *out, const ce_tensor *gate, const ce_tensor *up) {
    CE_PROFILE(CE_OP_SILU_MUL, .t = {out, gate, up});
    if (gate && up && ce_tensor_numel(gate) != ce_tensor_numel(up))
        return ce_check_same(up, gate, "silu_mul", "up", "gate");
    return run("silu_mul", "gate", "up", silu_mul_scalar, SIMD(silu_mul_avx2), out, gate, up, 0.0f);
}

ce_status ce_add(ce_tensor *out, const ce_tensor *a, const ce_tensor *b) {
    CE_PROFILE(CE_OP_ADD, .t = {out, a, b});
    return run("add", "a", "b", add_scalar, SIMD(add_avx2), out, a, b, 0.0f);
}

ce_status ce_mul(ce_tensor *out, const ce_tensor *a, const ce_tensor *b) {
    CE_PROFILE(CE_OP_MUL, .t = {out, a, b});
    return run("mul", "a", "b", mul_scalar, SIMD(mul_avx2), out, a, b, 0.0f);
}

ce_status ce_scale(ce_tensor *out, const ce_tensor *x, float s) {
    CE_PROFILE(CE_OP_SCALE, .t = {out, x});
    return run("scale", "x", NULL, scale_scalar, SIMD(scale_avx2), out, x, NULL, s);
}
