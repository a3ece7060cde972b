/* select.c - argmax and top-k over the last dim of F32 rows (outer dims may be strided).
 *
 * Order used by both, as torch does: NaN is greater than every number (so a NaN logit is never
 * silently skipped), NaNs are equal to each other, and -0.0 == +0.0. Ties go to the lower index:
 * argmax returns the first maximum and top-k is stable.
 */
#include <stdlib.h>
#include "internal.h"

/* a ranks before b (a at index ia, b at index ib > ia is not assumed) */
static inline int before(float a, int64_t ia, float b, int64_t ib) {
    int na = a != a, nb = b != b;
    if (na != nb) return na;               /* NaN first */
    if (!na && a != b) return a > b;
    return ia < ib;                        /* equal (or both NaN): lower index first */
}

/* index of the first maximum of p[0..n) in the order above */
static int64_t argmax_scalar(const float *p, int64_t n) {
    float bv = p[0];
    int64_t best = 0;
    if (bv != bv) return 0;
    for (int64_t i = 1; i < n; i++) {
        float v = p[i];
        if (v > bv) { bv = v; best = i; }
        else if (v != v) return i; /* the first NaN wins */
    }
    return best;
}

#if CE_HAVE_AVX2
/* Two passes: the max (and whether any NaN) 8 lanes at a time, then the first index equal to it. */
static int64_t argmax_avx2(const float *p, int64_t n) {
    if (n < 16) return argmax_scalar(p, n);
    __m256 vm = _mm256_loadu_ps(p), unord = _mm256_cmp_ps(vm, vm, _CMP_UNORD_Q);
    int64_t i = 8;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(p + i);
        vm = _mm256_max_ps(vm, v);
        unord = _mm256_or_ps(unord, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float lanes[8], m;
    _mm256_storeu_ps(lanes, vm);
    m = lanes[0];
    for (int j = 1; j < 8; j++) m = lanes[j] > m ? lanes[j] : m;
    for (; i < n; i++) {
        if (p[i] != p[i]) return argmax_scalar(p, n);
        if (p[i] > m) m = p[i];
    }
    if (_mm256_movemask_ps(unord)) return argmax_scalar(p, n);
    for (i = 0; p[i] != m; i++) {}
    return i;
}
#endif

ce_status ce_argmax(ce_tensor *out, const ce_tensor *x) {
    CE_PROFILE(CE_OP_ARGMAX, .t = {out, x});
    ce_status st;
    if ((st = ce_check_out(out, "argmax", "out", CE_I32))) return st;
    if ((st = ce_check(x, "argmax", "x", CE_F32))) return st;
    int64_t R = ce_rows(x), N = ce_cols(x);
    if (N < 1) return ce_fail(CE_ERR_SHAPE, "argmax: x has an empty last dim");
    if (ce_tensor_numel(out) != R)
        return ce_fail(CE_ERR_SHAPE, "argmax: out must have %lld elements (one per row of x), got %lld",
                       (long long)R, (long long)ce_tensor_numel(out));
    if (N > INT32_MAX)
        return ce_fail(CE_ERR_SHAPE, "argmax: rows of %lld do not fit I32 indices", (long long)N);
    for (int64_t r = 0; r < R; r++) {
        const float *p = (const float *)ce_row_ptr(x, r);
        int64_t best;
#if CE_HAVE_AVX2
        if (ce_simd_on) best = argmax_avx2(p, N); else
#endif
        best = argmax_scalar(p, N);
        /* out may have any shape of R elements (outer dims strided): element r of its flat order */
        ((int32_t *)ce_row_ptr(out, r / ce_cols(out)))[r % ce_cols(out)] = (int32_t)best;
    }
    return CE_OK;
}

typedef struct { float v; int64_t i; } entry;

static int cmp_entry(const void *pa, const void *pb) {
    const entry *a = pa, *b = pb;
    return before(a->v, a->i, b->v, b->i) ? -1 : 1; /* a total order: indices differ */
}

ce_status ce_topk(ce_tensor *values, ce_tensor *indices, const ce_tensor *x, int64_t k) {
    CE_PROFILE(CE_OP_TOPK, .t = {values, indices, x}, .n = {k});
    ce_status st;
    if ((st = ce_check_out(values, "topk", "values", CE_F32))) return st;
    if ((st = ce_check_out(indices, "topk", "indices", CE_I32))) return st;
    if ((st = ce_check(x, "topk", "x", CE_F32))) return st;
    int64_t R = ce_rows(x), N = ce_cols(x);
    if (k < 1 || k > N)
        return ce_fail(CE_ERR_RANGE, "topk: k must be in 1..%lld (the row length), got %lld", (long long)N,
                       (long long)k);
    if (N > INT32_MAX) return ce_fail(CE_ERR_SHAPE, "topk: rows of %lld do not fit I32 indices", (long long)N);
    if (ce_cols(values) != k || ce_tensor_numel(values) != R * k || ce_cols(indices) != k ||
        ce_tensor_numel(indices) != R * k)
        return ce_fail(CE_ERR_SHAPE,
                       "topk: values and indices must be [%lld, %lld], got %lld and %lld elements "
                       "(last dims %lld and %lld)", (long long)R, (long long)k,
                       (long long)ce_tensor_numel(values), (long long)ce_tensor_numel(indices),
                       (long long)ce_cols(values), (long long)ce_cols(indices));
    /* small k: insertion into a sorted buffer (one compare per element when it does not enter);
     * large k: sort every (value, index) pair */
    int small = k <= 64;
    entry *buf = malloc((size_t)(small ? k : N) * sizeof(entry));
    if (!buf) return ce_fail(CE_ERR_NOMEM, "topk: out of memory for %lld entries", (long long)(small ? k : N));
    for (int64_t r = 0; r < R; r++) {
        const float *p = (const float *)ce_row_ptr(x, r);
        if (small) {
            int64_t n = 0;
            for (int64_t i = 0; i < N; i++) {
                if (n == k && !before(p[i], i, buf[k - 1].v, buf[k - 1].i)) continue;
                int64_t j = n < k ? n++ : k - 1;
                while (j > 0 && before(p[i], i, buf[j - 1].v, buf[j - 1].i)) { buf[j] = buf[j - 1]; j--; }
                buf[j] = (entry){p[i], i};
            }
        } else {
            for (int64_t i = 0; i < N; i++) buf[i] = (entry){p[i], i};
            qsort(buf, (size_t)N, sizeof(entry), cmp_entry);
        }
        float *vo = (float *)ce_row_ptr(values, r);
        int32_t *io = (int32_t *)ce_row_ptr(indices, r);
        for (int64_t j = 0; j < k; j++) { vo[j] = buf[j].v; io[j] = (int32_t)buf[j].i; }
    }
    free(buf);
    return CE_OK;
}
