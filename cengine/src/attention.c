/* attention.c - causal grouped-query attention of T queries against a KV cache.
 *
 * Work is split over (query, head) pairs, dealt round-robin to threads (later queries see more
 * keys, so interleaving balances a prefill). Each pair is computed start to finish by one thread in
 * a fixed order, so the output does not depend on the thread count. Per pair:
 *   s_j = scale * q.k_j  (j = 0..pos[t]),  p_j = exp(s_j - max s) / sum,  out = sum_j p_j v_j
 * with F32 accumulation (8 lanes under SIMD). Each thread mallocs its scratch (scores [n_kv] and
 * an accumulator [D]) once per call; nothing large lives on the stack.
 * q, k, v, out and probs may have strided outer dims; their last dim must be contiguous.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "internal.h"

void ce_vexp(float *y, const float *x, int64_t n); /* elementwise.c */

typedef struct {
    ce_tensor *out, *probs;
    const ce_tensor *q, *k, *v;
    const int32_t *pos;
    int64_t T, Hq, Hkv, D, n_kv;
    float scale;
    atomic_int nomem;
} attn_ctx;

#define AT(t, i, j) ((char *)(t)->data + (i) * (t)->stride[0] + (j) * (t)->stride[1])

/* ---- dot and axpy on one row of k or v (F32 or F16) ---- */
static float dot_scalar(const float *q, const void *k, int dtype, int64_t n) {
    float acc[4] = {0, 0, 0, 0};
    int64_t i = 0;
    if (dtype == CE_F32) {
        const float *kf = k;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) acc[j] += q[i + j] * kf[i + j];
        for (; i < n; i++) acc[0] += q[i] * kf[i];
    } else {
        const uint16_t *kh = k;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) acc[j] += q[i + j] * ce_f16_to_f32(kh[i + j]);
        for (; i < n; i++) acc[0] += q[i] * ce_f16_to_f32(kh[i]);
    }
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

static void axpy_scalar(float *acc, float p, const void *v, int dtype, int64_t n) {
    if (dtype == CE_F32) {
        const float *vf = v;
        for (int64_t i = 0; i < n; i++) acc[i] += p * vf[i];
    } else {
        const uint16_t *vh = v;
        for (int64_t i = 0; i < n; i++) acc[i] += p * ce_f16_to_f32(vh[i]);
    }
}

#if CE_HAVE_AVX2
static inline __m256 load8(const void *p, int dtype, int64_t i) {
    if (dtype == CE_F32) return _mm256_loadu_ps((const float *)p + i);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float dot_avx2(const float *q, const void *k, int dtype, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k, dtype, i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(k, dtype, i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k, dtype, i), a0);
    float s = hsum(_mm256_add_ps(a0, a1));
    if (dtype == CE_F32)
        for (; i < n; i++) s += q[i] * ((const float *)k)[i];
    else
        for (; i < n; i++) s += q[i] * ce_f16_to_f32(((const uint16_t *)k)[i]);
    return s;
}

static void axpy_avx2(float *acc, float p, const void *v, int dtype, int64_t n) {
    __m256 vp = _mm256_set1_ps(p);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(vp, load8(v, dtype, i), _mm256_loadu_ps(acc + i)));
    if (dtype == CE_F32)
        for (; i < n; i++) acc[i] += p * ((const float *)v)[i];
    else
        for (; i < n; i++) acc[i] += p * ce_f16_to_f32(((const uint16_t *)v)[i]);
}
#endif

static void attn_task(void *p, int ith, int nth) {
    attn_ctx *c = p;
    int64_t pairs = c->T * c->Hq, D = c->D, group = c->Hq / c->Hkv;
    if (ith >= pairs) return;
    float *s = malloc((size_t)(c->n_kv + D) * sizeof(float)); /* scores [n_kv], accumulator [D] */
    if (!s) { atomic_store(&c->nomem, 1); return; }
    float *acc = s + c->n_kv;
    float (*dot)(const float *, const void *, int, int64_t) = dot_scalar;
    void (*axpy)(float *, float, const void *, int, int64_t) = axpy_scalar;
#if CE_HAVE_AVX2
    if (ce_simd_on) { dot = dot_avx2; axpy = axpy_avx2; }
#endif
    int kt = c->k->dtype, vt = c->v->dtype;
    for (int64_t pr = ith; pr < pairs; pr += nth) {
        int64_t t = pr / c->Hq, h = pr % c->Hq, hk = h / group, n = (int64_t)c->pos[t] + 1;
        const float *q = (const float *)AT(c->q, t, h);
        float m = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            s[j] = c->scale * dot(q, AT(c->k, j, hk), kt, D);
            if (s[j] > m) m = s[j];
        }
        for (int64_t j = 0; j < n; j++) s[j] -= m;
        ce_vexp(s, s, n);
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) sum += s[j];
        float inv = 1.0f / sum;
        for (int64_t d = 0; d < D; d++) acc[d] = 0.0f;
        for (int64_t j = 0; j < n; j++) axpy(acc, s[j], AT(c->v, j, hk), vt, D);
        float *o = (float *)AT(c->out, t, h);
        for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
        if (c->probs) {
            float *pp = (float *)AT(c->probs, h, t);
            for (int64_t j = 0; j < n; j++) pp[j] = s[j] * inv;
            for (int64_t j = n; j < c->n_kv; j++) pp[j] = 0.0f;
        }
    }
    free(s);
}

static ce_status check3(const ce_tensor *t, const char *name, int dtype) {
    ce_status st = ce_check(t, "attention", name, dtype);
    if (st) return st;
    if (t->ndim != 3) return ce_fail(CE_ERR_SHAPE, "attention: %s must have 3 dims, got %d", name, t->ndim);
    return CE_OK;
}

ce_status ce_attention(ce_tensor *out, const ce_tensor *q, const ce_tensor *k, const ce_tensor *v,
                       const ce_tensor *pos, int64_t n_kv, float scale, ce_tensor *probs) {
    ce_status st;
    if ((st = check3(out, "out", CE_F32)) || (st = check3(q, "q", CE_F32)) || (st = check3(k, "k", -1)) ||
        (st = check3(v, "v", -1)))
        return st;
    if ((st = ce_check(pos, "attention", "pos", CE_I32))) return st;
    if (k->dtype != CE_F32 && k->dtype != CE_F16)
        return ce_fail(CE_ERR_DTYPE, "attention: k must be F32 or F16, got %s", ce_dtype_name(k->dtype));
    if (v->dtype != CE_F32 && v->dtype != CE_F16)
        return ce_fail(CE_ERR_DTYPE, "attention: v must be F32 or F16, got %s", ce_dtype_name(v->dtype));
    int64_t T = q->shape[0], Hq = q->shape[1], D = q->shape[2], S = k->shape[0], Hkv = k->shape[1];
    for (int i = 0; i < 3; i++)
        if (out->shape[i] != q->shape[i] || v->shape[i] != k->shape[i])
            return ce_fail(CE_ERR_SHAPE, "attention: out [%lld, %lld, %lld] must match q [%lld, %lld, %lld] "
                           "and v [%lld, %lld, %lld] must match k [%lld, %lld, %lld]",
                           (long long)out->shape[0], (long long)out->shape[1], (long long)out->shape[2],
                           (long long)T, (long long)Hq, (long long)D, (long long)v->shape[0],
                           (long long)v->shape[1], (long long)v->shape[2], (long long)S, (long long)Hkv,
                           (long long)k->shape[2]);
    if (k->shape[2] != D)
        return ce_fail(CE_ERR_SHAPE, "attention: q has head dim %lld but k has %lld", (long long)D,
                       (long long)k->shape[2]);
    if (D < 1 || Hkv < 1 || Hq < 1)
        return ce_fail(CE_ERR_SHAPE, "attention: empty heads (Hq %lld, Hkv %lld, D %lld)", (long long)Hq,
                       (long long)Hkv, (long long)D);
    if (Hq % Hkv)
        return ce_fail(CE_ERR_SHAPE, "attention: %lld query heads do not divide into %lld kv heads",
                       (long long)Hq, (long long)Hkv);
    if (n_kv < 1 || n_kv > S)
        return ce_fail(CE_ERR_RANGE, "attention: n_kv must be in 1..%lld (cache rows), got %lld",
                       (long long)S, (long long)n_kv);
    if (!isfinite(scale)) return ce_fail(CE_ERR_ARG, "attention: scale must be finite, got %g", (double)scale);
    if (ce_tensor_numel(pos) != T || !ce_tensor_is_contiguous(pos))
        return ce_fail(CE_ERR_SHAPE,
                       "attention: pos must be a contiguous I32 [%lld] (one per query), got %lld elements",
                       (long long)T, (long long)ce_tensor_numel(pos));
    const int32_t *pp = (const int32_t *)pos->data;
    for (int64_t t = 0; t < T; t++)
        if (pp[t] < 0 || pp[t] >= n_kv)
            return ce_fail(CE_ERR_RANGE, "attention: pos[%lld] = %d is outside 0..%lld (n_kv - 1)",
                           (long long)t, pp[t], (long long)(n_kv - 1));
    if (probs) {
        if ((st = check3(probs, "probs", CE_F32))) return st;
        if (probs->shape[0] != Hq || probs->shape[1] != T || probs->shape[2] != n_kv)
            return ce_fail(CE_ERR_SHAPE,
                           "attention: probs must be [Hq %lld, T %lld, n_kv %lld], got [%lld, %lld, %lld]",
                           (long long)Hq, (long long)T, (long long)n_kv, (long long)probs->shape[0],
                           (long long)probs->shape[1], (long long)probs->shape[2]);
    }
    if (T == 0) return CE_OK;
    attn_ctx c = {out, probs, q, k, v, pp, T, Hq, Hkv, D, n_kv, scale, 0};
    /* a pair costs about 2 * D * n_kv flops; keep tiny calls on the calling thread */
    int64_t work = T * Hq * D * n_kv, nt = work / 65536 + 1, pairs = T * Hq;
    ce_parallel_n(attn_task, &c, (int)(nt < pairs ? (nt < 256 ? nt : 256) : pairs));
    if (atomic_load(&c.nomem))
        return ce_fail(CE_ERR_NOMEM, "attention: out of memory for %lld scores", (long long)n_kv);
    return CE_OK;
}
