/* attention.c - causal grouped-query attention of T queries against a KV cache.
 *
 * Per query t the n = pos[t] + 1 visible keys are cut into fixed chunks of ATTN_KC keys. A work unit is
 * (query t, kv head hk, chunk): it serves all G = Hq / Hkv query heads that share kv head hk, so each
 * K and V row is read once per group. Within a unit:
 *   s_gj = scale * q_g.k_j,  m_g = max_j s_gj,  e_gj = exp(s_gj - m_g),  z_g = sum_j e_gj,
 *   a_g = sum_j e_gj v_j
 * When n <= ATTN_KC (one chunk) the unit writes out = a / z and probs = e / z directly. Otherwise each
 * chunk leaves (a, m, z) in a partial buffer and a combine pass merges the chunks in chunk order:
 *   M = max m_c, w_c = exp(m_c - M), out = (sum_c w_c a_c) / (sum_c w_c z_c).
 * The chunking depends only on pos (never on the thread count) and every unit and every combined
 * row is computed by exactly one thread in a fixed order, so results are bit-identical for any
 * thread count; the chunks let both threads share a single long decode query.
 *
 * Threads claim units (and combined rows) one at a time from an atomic counter, in order, so
 * whichever threads run share them (ce_parallel_dyn: a thread kept off its core is not waited
 * for). SIMD kernels (D % 8 == 0) block registers over heads of the group: q.k for up to 3 heads x
 * 4 keys (12 8-lane accumulators, reduced by an hadd tree), e.V for up to 3 heads x 32 dims over a
 * 32-key block of V; every loaded k or v vector feeds up to 3 FMAs. F16 caches are widened with F16C into a small per-thread buffer. Other D and
 * ce_simd_on == 0 take per-row dot / axpy kernels (the scalar twin). All accumulation is F32.
 * Scratch is malloc'ed once per thread per call; nothing large lives on the stack.
 * q, k, v, out and probs may have strided outer dims; their last dim must be contiguous.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include "internal.h"


#define ATTN_KC 256 /* keys per chunk (fixed: part of the result's definition) */
#define VB 32  /* keys per block of V kept in L1 by the SIMD e.V kernel */

typedef struct { /* one sequence: its queries, its cache */
    ce_tensor *out, *probs;
    const ce_tensor *q, *k, *v;
    const int32_t *pos;
    int64_t T, Hq, Hkv, D, n_kv, G;
    float scale;
    int64_t *part_off; /* [T]: first partial entry of query t, or -1 when it has one chunk */
    float *part;       /* entries of D + 2 floats: a[D], m, z; (t, h, c) at part_off[t] + h * nch + c */
    int simd;          /* the SIMD kernels apply (ce_simd_on and D % 8 == 0) */
    int wide;          /* ... in 512-bit registers (ce_vector_bits == 512; the same bits) */
} attn_ctx;

/* One call: the sequences whose units the threads share (one for ce_attention), in order. */
typedef struct {
    attn_ctx *seq;
    int64_t nseq;
    atomic_int nomem;
    atomic_llong next_unit, next_row; /* the first unit / combined row no thread has claimed */
} attn_job;

#define AT(t, i, j) ((char *)(t)->data + (i) * (t)->stride[0] + (j) * (t)->stride[1])

static inline int64_t n_chunks(int64_t n) { return (n + ATTN_KC - 1) / ATTN_KC; }

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


#if CE_HAVE_AVX2
/* keeps a loaded vector in a register so the compiler does not refold the load into each FMA */
#define IN_REG(x) __asm__("" : "+x"(x))

/* [sum a0, sum a1, sum a2, sum a3] */
static inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    __m256 u = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1));
}

/* F32 view of a cache row (F32 or F16 of D elements): the row itself, or widened into dst */
static inline const float *row_f32(const char *r, int dtype, float *dst, int64_t D) {
    if (dtype == CE_F32) return (const float *)r;
    const uint16_t *h = (const uint16_t *)r;
    for (int64_t d = 0; d < D; d += 8)
        _mm256_storeu_ps(dst + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + d))));
    return dst;
}

/* S[r * ATTN_KC + i] = scale * q_r . k_i for NR (<= 3) query rows and 4 keys: 12 accumulators, each
 * loaded k vector feeds NR FMAs */
static inline __attribute__((always_inline)) void qk_tile(float *S, const float *q0, const float *q1,
                                                          const float *q2, const float *k0, const float *k1,
                                                          const float *k2, const float *k3, int64_t D,
                                                          __m128 vs, const int NR) {
    __m256 z = _mm256_setzero_ps();
    __m256 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z, a20 = z, a21 = z, a22 = z,
           a23 = z;
    for (int64_t d = 0; d < D; d += 8) {
        __m256 x0 = _mm256_loadu_ps(q0 + d), x1 = z, x2 = z, k;
        if (NR > 1) x1 = _mm256_loadu_ps(q1 + d);
        if (NR > 2) x2 = _mm256_loadu_ps(q2 + d);
        IN_REG(x0);
        if (NR > 1) IN_REG(x1);
        if (NR > 2) IN_REG(x2);
#define QK_KEY(i)                                                      \
        k = _mm256_loadu_ps(k##i + d);                                 \
        IN_REG(k);                                                     \
        a0##i = _mm256_fmadd_ps(x0, k, a0##i);                         \
        if (NR > 1) a1##i = _mm256_fmadd_ps(x1, k, a1##i);             \
        if (NR > 2) a2##i = _mm256_fmadd_ps(x2, k, a2##i);
        QK_KEY(0) QK_KEY(1) QK_KEY(2) QK_KEY(3)
#undef QK_KEY
    }
    _mm_storeu_ps(S, _mm_mul_ps(vs, reduce4(a00, a01, a02, a03)));
    if (NR > 1) _mm_storeu_ps(S + ATTN_KC, _mm_mul_ps(vs, reduce4(a10, a11, a12, a13)));
    if (NR > 2) _mm_storeu_ps(S + 2 * ATTN_KC, _mm_mul_ps(vs, reduce4(a20, a21, a22, a23)));
}

static void qk_tile_n(float *S, const float *const *q, const float *const *k, int64_t D, __m128 vs, int nr) {
    if (nr == 3) qk_tile(S, q[0], q[1], q[2], k[0], k[1], k[2], k[3], D, vs, 3);
    else if (nr == 2) qk_tile(S, q[0], q[1], q[1], k[0], k[1], k[2], k[3], D, vs, 2);
    else qk_tile(S, q[0], q[0], q[0], k[0], k[1], k[2], k[3], D, vs, 1);
}

#if defined(__AVX512F__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define ATTN_HAVE_Z 1
/* The 512-bit forms of qk_tile and pv_tile with the same bits:
 * every lane sums the same products in the same order as a lane of the 256-bit kernel.
 * q.k: a zmm holds the same 8 dims of two keys (the halves of one 256-bit accumulator each), so
 * the per-key hadd tree is unchanged: 6 FMAs per 8 dims for 3 heads x 4 keys instead of 12, one
 * lane insert per key pair. e.V: a zmm holds 16 dims of a head, which accumulate independently.
 * Run when the attention family's width (ce_vec_bits, vecwidth.c) is 512.
 * On AMD Zen 4 (512-bit ops issue as two halves) they measured 0.95-0.97x of the 256-bit kernels
 * (cache in L2, 1 thread) and the same within noise with the cache in DRAM; the width probe keeps
 * 256 there. */
static inline __attribute__((always_inline)) void qk_tile_z(float *S, const float *q0, const float *q1,
                                                            const float *q2, const float *k0, const float *k1,
                                                            const float *k2, const float *k3, int64_t D,
                                                            __m128 vs, const int NR) {
    __m512 z = _mm512_setzero_ps();
    __m512 a0l = z, a0h = z, a1l = z, a1h = z, a2l = z, a2h = z; /* head r, keys (0, 1) and (2, 3) */
    for (int64_t d = 0; d < D; d += 8) {
        __m512 x0 = _mm512_broadcast_f32x8(_mm256_loadu_ps(q0 + d)), x1 = z, x2 = z;
        if (NR > 1) x1 = _mm512_broadcast_f32x8(_mm256_loadu_ps(q1 + d));
        if (NR > 2) x2 = _mm512_broadcast_f32x8(_mm256_loadu_ps(q2 + d));
        __m512 kl = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(k0 + d)), _mm256_loadu_ps(k1 + d), 1);
        __m512 kh = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(k2 + d)), _mm256_loadu_ps(k3 + d), 1);
        a0l = _mm512_fmadd_ps(x0, kl, a0l);
        a0h = _mm512_fmadd_ps(x0, kh, a0h);
        if (NR > 1) a1l = _mm512_fmadd_ps(x1, kl, a1l), a1h = _mm512_fmadd_ps(x1, kh, a1h);
        if (NR > 2) a2l = _mm512_fmadd_ps(x2, kl, a2l), a2h = _mm512_fmadd_ps(x2, kh, a2h);
    }
#define QK_Z_OUT(l, h, dst)                                                                      \
    _mm_storeu_ps(dst, _mm_mul_ps(vs, reduce4(_mm512_castps512_ps256(l), _mm512_extractf32x8_ps(l, 1), \
                                              _mm512_castps512_ps256(h), _mm512_extractf32x8_ps(h, 1))))
    QK_Z_OUT(a0l, a0h, S);
    if (NR > 1) QK_Z_OUT(a1l, a1h, S + ATTN_KC);
    if (NR > 2) QK_Z_OUT(a2l, a2h, S + 2 * ATTN_KC);
#undef QK_Z_OUT
}

static void qk_tile_zn(float *S, const float *const *q, const float *const *k, int64_t D, __m128 vs, int nr) {
    if (nr == 3) qk_tile_z(S, q[0], q[1], q[2], k[0], k[1], k[2], k[3], D, vs, 3);
    else if (nr == 2) qk_tile_z(S, q[0], q[1], q[1], k[0], k[1], k[2], k[3], D, vs, 2);
    else qk_tile_z(S, q[0], q[0], q[0], k[0], k[1], k[2], k[3], D, vs, 1);
}

/* pv_tile's NW = 4 case (32 dims) in zmm: acc[r * D + d0 + ..] += sum_j P[r * ATTN_KC + j] V_j[..] */
static inline __attribute__((always_inline)) void pv_tile_z(float *acc, int64_t D, const float *P,
                                                            const float *const *vr, int64_t nb, int64_t d0,
                                                            const int NR) {
    float *o0 = acc + d0, *o1 = acc + D + d0, *o2 = acc + 2 * D + d0;
    __m512 z = _mm512_setzero_ps();
    __m512 a00 = _mm512_loadu_ps(o0), a01 = _mm512_loadu_ps(o0 + 16), a10 = z, a11 = z, a20 = z, a21 = z;
    if (NR > 1) a10 = _mm512_loadu_ps(o1), a11 = _mm512_loadu_ps(o1 + 16);
    if (NR > 2) a20 = _mm512_loadu_ps(o2), a21 = _mm512_loadu_ps(o2 + 16);
    for (int64_t j = 0; j < nb; j++) {
        const float *v = vr[j] + d0;
        __m512 x0 = _mm512_loadu_ps(v), x1 = _mm512_loadu_ps(v + 16), p = _mm512_set1_ps(P[j]);
        a00 = _mm512_fmadd_ps(p, x0, a00);
        a01 = _mm512_fmadd_ps(p, x1, a01);
        if (NR > 1) {
            p = _mm512_set1_ps(P[ATTN_KC + j]);
            a10 = _mm512_fmadd_ps(p, x0, a10);
            a11 = _mm512_fmadd_ps(p, x1, a11);
        }
        if (NR > 2) {
            p = _mm512_set1_ps(P[2 * ATTN_KC + j]);
            a20 = _mm512_fmadd_ps(p, x0, a20);
            a21 = _mm512_fmadd_ps(p, x1, a21);
        }
    }
    _mm512_storeu_ps(o0, a00), _mm512_storeu_ps(o0 + 16, a01);
    if (NR > 1) _mm512_storeu_ps(o1, a10), _mm512_storeu_ps(o1 + 16, a11);
    if (NR > 2) _mm512_storeu_ps(o2, a20), _mm512_storeu_ps(o2 + 16, a21);
}

static void pv_tile_zn(float *acc, int64_t D, const float *P, const float *const *vr, int64_t nb, int64_t d0, int nr) {
    if (nr == 3) pv_tile_z(acc, D, P, vr, nb, d0, 3);
    else if (nr == 2) pv_tile_z(acc, D, P, vr, nb, d0, 2);
    else pv_tile_z(acc, D, P, vr, nb, d0, 1);
}
#else
#define ATTN_HAVE_Z 0
#endif

/* Keys ahead that scores_avx2 prefetches. A decode step's caches stream from memory (a few MB per
 * layer at batch 8, behind ~90 MB of weights) in runs too short for the hardware prefetcher: with
 * K prefetched ahead and V during the scores, 8 sequences x 100 keys measured 130 us per layer
 * against 176 without (400 keys: 238 against 311; AMD EPYC Zen 4, 2 threads). */
enum { KPF = 16 };

static inline void prefetch_row(const char *r, int64_t bytes, int hint) {
    for (int64_t o = 0; o < bytes; o += 64) {
        if (hint == _MM_HINT_T0) _mm_prefetch(r + o, _MM_HINT_T0);
        else _mm_prefetch(r + o, _MM_HINT_T1);
    }
}

/* S[g * ATTN_KC + j] = scale * q_g . k_(j0 + j) for the G heads of group hk, j < L */
static void scores_avx2(const attn_ctx *c, int64_t t, int64_t hk, int64_t j0, int64_t L, float *S,
                        float *buf) {
    int64_t G = c->G, D = c->D, ks = c->k->stride[0];
    int kt = c->k->dtype;
    const char *kbase = AT(c->k, j0, hk), *vbase = AT(c->v, j0, hk);
    int64_t vstr = c->v->stride[0], rb = D * (kt == CE_F32 ? 4 : 2), vrb = D * (c->v->dtype == CE_F32 ? 4 : 2);
    const __m128 vs = _mm_set1_ps(c->scale);
    const float *qr[3], *kr[4];
    for (int64_t g = 0; g < G; g += 3) {
        int nr = G - g < 3 ? (int)(G - g) : 3;
        for (int r = 0; r < nr; r++) qr[r] = (const float *)AT(c->q, t, hk * G + g + r);
        const char *krow = kbase;
        int64_t j = 0;
        for (; j + 4 <= L; j += 4, krow += 4 * ks) {
            if (g == 0) /* the cache streams from memory: K ahead, and this unit's V for pv_avx2 */
                for (int i = 0; i < 4; i++) {
                    if (j + KPF + i < L) prefetch_row(krow + (KPF + i) * ks, rb, _MM_HINT_T0);
                    prefetch_row(vbase + (j + i) * vstr, vrb, _MM_HINT_T1);
                }
            for (int i = 0; i < 4; i++) kr[i] = row_f32(krow + i * ks, kt, buf + i * D, D);
#if ATTN_HAVE_Z
            if (c->wide) qk_tile_zn(S + g * ATTN_KC + j, qr, kr, D, vs, nr);
            else
#endif
                qk_tile_n(S + g * ATTN_KC + j, qr, kr, D, vs, nr);
        }
        for (; j < L; j++, krow += ks) {
            const float *k = row_f32(krow, kt, buf, D);
            for (int r = 0; r < nr; r++) {
                const float *q = qr[r];
                __m256 a0 = _mm256_setzero_ps(), a1 = a0;
                int64_t d = 0;
                for (; d + 16 <= D; d += 16) {
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8), _mm256_loadu_ps(k + d + 8), a1);
                }
                if (d < D) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a0);
                S[(g + r) * ATTN_KC + j] = c->scale * hsum(_mm256_add_ps(a0, a1));
            }
        }
    }
}

/* acc[r * D + d0 + ..] += sum_j P[r * ATTN_KC + j] * V_j[d0 + ..] for NR (<= 3) heads and 32 dims (NW = 4)
 * or 8 dims (NW = 1): up to 12 accumulators in registers, each loaded v vector feeds NR FMAs */
static inline __attribute__((always_inline)) void pv_tile(float *acc, int64_t D, const float *P,
                                                          const float *const *vr, int64_t nb, int64_t d0,
                                                          const int NR, const int NW) {
    float *o0 = acc + d0, *o1 = acc + D + d0, *o2 = acc + 2 * D + d0;
    __m256 z = _mm256_setzero_ps();
    __m256 a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z, a20 = z, a21 = z, a22 = z,
           a23 = z;
#define PV_ACC(MAC) MAC(0, 0) MAC(0, 1) MAC(0, 2) MAC(0, 3) MAC(1, 0) MAC(1, 1) MAC(1, 2) MAC(1, 3) \
                    MAC(2, 0) MAC(2, 1) MAC(2, 2) MAC(2, 3)
#define PV_LOAD(r, w) if (NR > r && NW > w) a##r##w = _mm256_loadu_ps(o##r + 8 * w);
#define PV_STORE(r, w) if (NR > r && NW > w) _mm256_storeu_ps(o##r + 8 * w, a##r##w);
    PV_ACC(PV_LOAD)
    for (int64_t j = 0; j < nb; j++) {
        __m256 p0 = _mm256_broadcast_ss(P + j), p1 = z, p2 = z, x;
        if (NR > 1) p1 = _mm256_broadcast_ss(P + ATTN_KC + j);
        if (NR > 2) p2 = _mm256_broadcast_ss(P + 2 * ATTN_KC + j);
        const float *v = vr[j] + d0;
#define PV_W(w)                                                        \
        if (NW > w) {                                                  \
            x = _mm256_loadu_ps(v + 8 * w);                            \
            IN_REG(x);                                                 \
            a0##w = _mm256_fmadd_ps(p0, x, a0##w);                     \
            if (NR > 1) a1##w = _mm256_fmadd_ps(p1, x, a1##w);         \
            if (NR > 2) a2##w = _mm256_fmadd_ps(p2, x, a2##w);         \
        }
        PV_W(0) PV_W(1) PV_W(2) PV_W(3)
#undef PV_W
    }
    PV_ACC(PV_STORE)
#undef PV_LOAD
#undef PV_STORE
#undef PV_ACC
}

static void pv_tile_n(float *acc, int64_t D, const float *P, const float *const *vr, int64_t nb,
                      int64_t d0, int nr, int nw) {
    switch (nr * 4 + nw) {
    case 1 * 4 + 4: pv_tile(acc, D, P, vr, nb, d0, 1, 4); break;
    case 2 * 4 + 4: pv_tile(acc, D, P, vr, nb, d0, 2, 4); break;
    case 3 * 4 + 4: pv_tile(acc, D, P, vr, nb, d0, 3, 4); break;
    case 1 * 4 + 1: pv_tile(acc, D, P, vr, nb, d0, 1, 1); break;
    case 2 * 4 + 1: pv_tile(acc, D, P, vr, nb, d0, 2, 1); break;
    default: pv_tile(acc, D, P, vr, nb, d0, 3, 1); break;
    }
}

/* acc[g * D + d] = sum_j E[g * ATTN_KC + j] * v_(j0 + j)[d], j < L */
static void pv_avx2(const attn_ctx *c, int64_t hk, int64_t j0, int64_t L, const float *E, float *acc,
                    float *buf) {
    int64_t G = c->G, D = c->D, vs = c->v->stride[0];
    int vt = c->v->dtype;
    const char *vbase = AT(c->v, j0, hk);
    for (int64_t i = 0; i < G * D; i++) acc[i] = 0.0f;
    const float *vr[VB];
    for (int64_t jb = 0; jb < L; jb += VB) {
        int64_t nb = L - jb < VB ? L - jb : VB;
        for (int64_t i = 0; i < nb; i++) vr[i] = row_f32(vbase + (jb + i) * vs, vt, buf + i * D, D);
        for (int64_t g = 0; g < G; g += 3) {
            int nr = G - g < 3 ? (int)(G - g) : 3;
            int64_t d0 = 0;
#if ATTN_HAVE_Z
            if (c->wide)
                for (; d0 + 32 <= D; d0 += 32) pv_tile_zn(acc + g * D, D, E + g * ATTN_KC + jb, vr, nb, d0, nr);
#endif
            for (; d0 + 32 <= D; d0 += 32) pv_tile_n(acc + g * D, D, E + g * ATTN_KC + jb, vr, nb, d0, nr, 4);
            for (; d0 < D; d0 += 8) pv_tile_n(acc + g * D, D, E + g * ATTN_KC + jb, vr, nb, d0, nr, 1);
        }
    }
}

/* e = exp(s - max s) in place; returns the sum, *m the max */
static float softmax_row_avx2(float *s, int64_t L, float *m_out) {
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= L; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float m = _mm_cvtss_f32(m4);
    for (; i < L; i++) if (s[i] > m) m = s[i];
    __m256 vm = _mm256_set1_ps(m);
    for (i = 0; i + 8 <= L; i += 8) _mm256_storeu_ps(s + i, _mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
    for (; i < L; i++) s[i] -= m;
    ce_vexp(s, s, L);
    __m256 zv = _mm256_setzero_ps();
    for (i = 0; i + 8 <= L; i += 8) zv = _mm256_add_ps(zv, _mm256_loadu_ps(s + i));
    float z = hsum(zv);
    for (; i < L; i++) z += s[i];
    *m_out = m;
    return z;
}
#endif

static float softmax_row_scalar(float *s, int64_t L, float *m_out) {
    float m = -INFINITY;
    for (int64_t j = 0; j < L; j++) if (s[j] > m) m = s[j];
    for (int64_t j = 0; j < L; j++) s[j] -= m;
    ce_vexp(s, s, L);
    float z = 0.0f;
    for (int64_t j = 0; j < L; j++) z += s[j];
    *m_out = m;
    return z;
}

/* one unit: query t, kv head hk, keys j0 .. j0 + L - 1 (chunk ch of nch). Scratch: S [G * ATTN_KC],
 * acc [G * D] followed by (m, z) per head [2 * G], buf [VB * D]. */
static void attn_unit(attn_ctx *c, int64_t t, int64_t hk, int64_t ch, float *S, float *acc, float *buf) {
    int64_t G = c->G, D = c->D, n = (int64_t)c->pos[t] + 1, nch = n_chunks(n);
    int64_t j0 = ch * ATTN_KC, L = n - j0 < ATTN_KC ? n - j0 : ATTN_KC;
    float m[1], z;
#if CE_HAVE_AVX2
    if (c->simd) scores_avx2(c, t, hk, j0, L, S, buf);
    else
#endif
    {
        float (*dot)(const float *, const void *, int, int64_t) = dot_scalar;
#if CE_HAVE_AVX2
        if (ce_simd_on) dot = dot_avx2;
#endif
        for (int64_t g = 0; g < G; g++) {
            const float *q = (const float *)AT(c->q, t, hk * G + g);
            for (int64_t j = 0; j < L; j++) S[g * ATTN_KC + j] = c->scale * dot(q, AT(c->k, j0 + j, hk), c->k->dtype, D);
        }
    }
    for (int64_t g = 0; g < G; g++) {
        float *s = S + g * ATTN_KC;
#if CE_HAVE_AVX2
        if (ce_simd_on) z = softmax_row_avx2(s, L, m);
        else
#endif
            z = softmax_row_scalar(s, L, m);
        /* m and z go just past acc */
        acc[G * D + 2 * g] = m[0];
        acc[G * D + 2 * g + 1] = z;
    }
#if CE_HAVE_AVX2
    if (c->simd) pv_avx2(c, hk, j0, L, S, acc, buf);
    else
#endif
    {
        void (*axpy)(float *, float, const void *, int, int64_t) = axpy_scalar;
#if CE_HAVE_AVX2
        if (ce_simd_on) axpy = axpy_avx2;
#endif
        for (int64_t i = 0; i < G * D; i++) acc[i] = 0.0f;
        for (int64_t j = 0; j < L; j++) {
            const void *vj = AT(c->v, j0 + j, hk);
            for (int64_t g = 0; g < G; g++) axpy(acc + g * D, S[g * ATTN_KC + j], vj, c->v->dtype, D);
        }
    }
    for (int64_t g = 0; g < G; g++) {
        int64_t h = hk * G + g;
        const float *s = S + g * ATTN_KC, *a = acc + g * D;
        float mg = acc[G * D + 2 * g], zg = acc[G * D + 2 * g + 1];
        float *pp = c->probs ? (float *)AT(c->probs, h, t) : NULL;
        if (nch == 1) {
            float inv = 1.0f / zg, *o = (float *)AT(c->out, t, h);
            for (int64_t d = 0; d < D; d++) o[d] = a[d] * inv;
            if (pp) {
                for (int64_t j = 0; j < L; j++) pp[j] = s[j] * inv;
                for (int64_t j = L; j < c->n_kv; j++) pp[j] = 0.0f;
            }
        } else {
            float *e = c->part + (c->part_off[t] + h * nch + ch) * (D + 2);
            memcpy(e, a, (size_t)D * sizeof(float));
            e[D] = mg;
            e[D + 1] = zg;
            if (pp) memcpy(pp + j0, s, (size_t)L * sizeof(float)); /* scaled by the combine */
        }
    }
}

/* Units in order: sequence, query, kv head, chunk. A thread walks them and runs each it claims. */
static void attn_task(void *p, int ith, int nth) {
    (void)ith, (void)nth;
    attn_job *j = p;
    int64_t G = j->seq[0].G, D = j->seq[0].D, u = 0, mine = atomic_fetch_add(&j->next_unit, 1);
    float *scr = NULL;
    for (int64_t s = 0; s < j->nseq; s++) {
        attn_ctx *c = &j->seq[s];
        for (int64_t t = 0; t < c->T; t++) {
            int64_t nch = n_chunks((int64_t)c->pos[t] + 1);
            if (mine >= u + c->Hkv * nch) { u += c->Hkv * nch; continue; } /* none of this query's is ours */
            for (int64_t hk = 0; hk < c->Hkv; hk++)
                for (int64_t ch = 0; ch < nch; ch++, u++) {
                    if (u != mine) continue; /* claims only grow: walk on to the one we hold */
                    mine = atomic_fetch_add(&j->next_unit, 1);
                    if (!scr) {
                        scr = malloc((size_t)(G * ATTN_KC + G * D + 2 * G + VB * D) * sizeof(float));
                        if (!scr) { atomic_store(&j->nomem, 1); return; }
                    }
                    attn_unit(c, t, hk, ch, scr, scr + G * ATTN_KC, scr + G * ATTN_KC + G * D + 2 * G);
                }
        }
    }
    free(scr);
}

/* merges the chunks of one multi-chunk (t, h) row, in chunk order */
static void combine_row(attn_ctx *c, int64_t t, int64_t h) {
    int64_t D = c->D, n = (int64_t)c->pos[t] + 1, nch = n_chunks(n);
    const float *e = c->part + (c->part_off[t] + h * nch) * (D + 2);
    float M = -INFINITY, Z = 0.0f;
    for (int64_t ch = 0; ch < nch; ch++) if (e[ch * (D + 2) + D] > M) M = e[ch * (D + 2) + D];
    float *o = (float *)AT(c->out, t, h);
    for (int64_t ch = 0; ch < nch; ch++) {
        const float *ec = e + ch * (D + 2);
        float w = expf(ec[D] - M);
        Z += w * ec[D + 1];
        if (ch == 0) for (int64_t d = 0; d < D; d++) o[d] = w * ec[d];
        else for (int64_t d = 0; d < D; d++) o[d] += w * ec[d];
    }
    float inv = 1.0f / Z;
    for (int64_t d = 0; d < D; d++) o[d] *= inv;
    if (c->probs) {
        float *pp = (float *)AT(c->probs, h, t);
        for (int64_t ch = 0; ch < nch; ch++) {
            float f = expf(e[ch * (D + 2) + D] - M) * inv;
            int64_t j1 = (ch + 1) * ATTN_KC < n ? (ch + 1) * ATTN_KC : n;
            for (int64_t jj = ch * ATTN_KC; jj < j1; jj++) pp[jj] *= f;
        }
        for (int64_t jj = n; jj < c->n_kv; jj++) pp[jj] = 0.0f;
    }
}

static void combine_task(void *p, int ith, int nth) {
    (void)ith, (void)nth;
    attn_job *j = p;
    int64_t u = 0, mine = atomic_fetch_add(&j->next_row, 1);
    for (int64_t s = 0; s < j->nseq; s++) {
        attn_ctx *c = &j->seq[s];
        if (!c->part_off) continue;
        for (int64_t t = 0; t < c->T; t++) {
            if (c->part_off[t] < 0) continue;
            for (int64_t h = 0; h < c->Hq; h++, u++) {
                if (u != mine) continue;
                mine = atomic_fetch_add(&j->next_row, 1);
                combine_row(c, t, h);
            }
        }
    }
}

static ce_status check3(const ce_tensor *t, const char *op, const char *name, int dtype) {
    ce_status st = ce_check(t, op, name, dtype);
    if (st) return st;
    if (t->ndim != 3) return ce_fail(CE_ERR_SHAPE, "%s: %s must have 3 dims, got %d", op, name, t->ndim);
    return CE_OK;
}

/* Checks one sequence's arguments (errors name op) and fills its context. */
static ce_status attn_prepare(attn_ctx *c, const char *op, ce_tensor *out, const ce_tensor *q, const ce_tensor *k,
                              const ce_tensor *v, const ce_tensor *pos, int64_t n_kv, float scale,
                              ce_tensor *probs) {
    ce_status st;
    if ((st = check3(out, op, "out", CE_F32)) || (st = ce_check_writable(out, op, "out")) || (st = check3(q, op, "q", CE_F32)) ||
        (st = check3(k, op, "k", -1)) ||
        (st = check3(v, op, "v", -1)))
        return st;
    if ((st = ce_check(pos, op, "pos", CE_I32))) return st;
    if (k->dtype != CE_F32 && k->dtype != CE_F16)
        return ce_fail(CE_ERR_DTYPE, "%s: k must be F32 or F16, got %s", op, ce_dtype_name(k->dtype));
    if (v->dtype != CE_F32 && v->dtype != CE_F16)
        return ce_fail(CE_ERR_DTYPE, "%s: v must be F32 or F16, got %s", op, ce_dtype_name(v->dtype));
    int64_t T = q->shape[0], Hq = q->shape[1], D = q->shape[2], S = k->shape[0], Hkv = k->shape[1];
    for (int i = 0; i < 3; i++)
        if (out->shape[i] != q->shape[i] || v->shape[i] != k->shape[i])
            return ce_fail(CE_ERR_SHAPE, "%s: out [%lld, %lld, %lld] must match q [%lld, %lld, %lld] "
                           "and v [%lld, %lld, %lld] must match k [%lld, %lld, %lld]", op,
                           (long long)out->shape[0], (long long)out->shape[1], (long long)out->shape[2],
                           (long long)T, (long long)Hq, (long long)D, (long long)v->shape[0],
                           (long long)v->shape[1], (long long)v->shape[2], (long long)S, (long long)Hkv,
                           (long long)k->shape[2]);
    if (k->shape[2] != D)
        return ce_fail(CE_ERR_SHAPE, "%s: q has head dim %lld but k has %lld", op, (long long)D,
                       (long long)k->shape[2]);
    if (D < 1 || Hkv < 1 || Hq < 1)
        return ce_fail(CE_ERR_SHAPE, "%s: empty heads (Hq %lld, Hkv %lld, D %lld)", op, (long long)Hq,
                       (long long)Hkv, (long long)D);
    if (Hq % Hkv)
        return ce_fail(CE_ERR_SHAPE, "%s: %lld query heads do not divide into %lld kv heads", op,
                       (long long)Hq, (long long)Hkv);
    if (n_kv < 1 || n_kv > S)
        return ce_fail(CE_ERR_RANGE, "%s: n_kv must be in 1..%lld (cache rows), got %lld", op,
                       (long long)S, (long long)n_kv);
    if (!isfinite(scale)) return ce_fail(CE_ERR_ARG, "%s: scale must be finite, got %g", op, (double)scale);
    if ((st = ce_check_positions(pos, T, n_kv, op))) return st; /* a query sees keys 0..pos */
    if (probs) {
        if ((st = check3(probs, op, "probs", CE_F32)) || (st = ce_check_writable(probs, op, "probs"))) return st;
        if (probs->shape[0] != Hq || probs->shape[1] != T || probs->shape[2] != n_kv)
            return ce_fail(CE_ERR_SHAPE,
                           "%s: probs must be [Hq %lld, T %lld, n_kv %lld], got [%lld, %lld, %lld]", op,
                           (long long)Hq, (long long)T, (long long)n_kv, (long long)probs->shape[0],
                           (long long)probs->shape[1], (long long)probs->shape[2]);
    }
    *c = (attn_ctx){out, probs, q, k, v, (const int32_t *)pos->data, T, Hq, Hkv, D, n_kv, Hq / Hkv, scale,
                    NULL, NULL, 0, 0};
#if CE_HAVE_AVX2
    c->simd = ce_simd_on && D % 8 == 0;
    c->wide = ATTN_HAVE_Z && ce_vec_bits[CE_VK_ATTENTION] == 512;
#endif
    return CE_OK;
}

/* Runs the prepared sequences of a call: their units shared by the threads, then the combines of
 * queries with several chunks. Each unit and row is computed as it would be alone. */
static ce_status attn_run(attn_ctx *seq, int64_t nseq) {
    /* chunk bookkeeping: units, work, and the partial buffer for queries with several chunks */
    int64_t units = 0, work = 0, prows = 0, pT = 0, cw = 0;
    for (int64_t s = 0; s < nseq; s++) {
        attn_ctx *c = &seq[s];
        int64_t sp = 0;
        for (int64_t t = 0; t < c->T; t++) {
            int64_t nch = n_chunks((int64_t)c->pos[t] + 1);
            units += c->Hkv * nch;
            work += ((int64_t)c->pos[t] + 1) * c->Hq * c->D; /* a unit: ~4 * D flops per key and head */
            if (nch > 1) sp += c->Hq * nch;
        }
        if (sp) {
            pT += c->T;
            prows += sp;
            cw += sp * (c->D + 2) + (c->probs ? sp / 2 * c->n_kv : 0); /* rows >= prows / nch */
        }
    }
    if (!units) return CE_OK;
    int64_t D = seq[0].D;
    void *mem = NULL;
    if (prows) {
        mem = malloc((size_t)pT * sizeof(int64_t) + (size_t)prows * (size_t)(D + 2) * sizeof(float));
        if (!mem) return ce_fail(CE_ERR_NOMEM, "attention: out of memory for %lld partial rows", (long long)prows);
        int64_t *off = mem, e = 0;
        float *part = (float *)(off + pT);
        for (int64_t s = 0; s < nseq; s++) {
            attn_ctx *c = &seq[s];
            int64_t *o = off;
            int any = 0;
            for (int64_t t = 0; t < c->T; t++) {
                int64_t nch = n_chunks((int64_t)c->pos[t] + 1);
                o[t] = nch > 1 ? e : -1;
                if (nch > 1) e += c->Hq * nch, any = 1;
            }
            if (any) c->part_off = o, c->part = part, off += c->T;
        }
    }
    attn_job j = {seq, nseq, 0, 0, 0};
    /* keep small calls on the calling thread */
    ce_parallel_dyn(attn_task, &j, ce_tasks(work, 131072, units));
    if (prows && !atomic_load(&j.nomem)) ce_parallel_dyn(combine_task, &j, ce_tasks(cw, 65536, prows / 2));
    free(mem);
    for (int64_t s = 0; s < nseq; s++) seq[s].part_off = NULL, seq[s].part = NULL;
    if (atomic_load(&j.nomem))
        return ce_fail(CE_ERR_NOMEM, "attention: out of memory for attention scratch");
    return CE_OK;
}

ce_status ce_attention(ce_tensor *out, const ce_tensor *q, const ce_tensor *k, const ce_tensor *v,
                       const ce_tensor *pos, int64_t n_kv, float scale, ce_tensor *probs) {
    CE_PROFILE(CE_OP_ATTENTION, .t = {out, q, k, v, pos, probs}, .n = {n_kv});
    attn_ctx c;
    ce_status st = attn_prepare(&c, "attention", out, q, k, v, pos, n_kv, scale, probs);
    if (st) return st;
    if (c.T == 0) return CE_OK;
    return attn_run(&c, 1);
}

/* rows [r0, r0 + n) of a [N, ...] tensor, as a tensor of its own */
static ce_tensor row_view(const ce_tensor *t, int64_t r0, int64_t n) {
    ce_tensor v = *t;
    v.data = (char *)t->data + r0 * t->stride[0];
    v.shape[0] = n;
    v.flags = 0;
    return v;
}

/* attention_seqs reports a failing sequence's error with its index */
static ce_status seq_fail(ce_status st, int64_t s) {
    char msg[400];
    snprintf(msg, sizeof msg, "%s", ce_last_error());
    return ce_fail(st, "%s (sequence %lld)", msg, (long long)s);
}

enum { ATTN_SEQS_MAX = 4096 };

ce_status ce_attention_seqs(ce_tensor *out, const ce_tensor *q, const ce_tensor *k_new, const ce_tensor *v_new,
                            const ce_tensor *pos, int64_t nseq, const int64_t *rows, ce_tensor *const *k_cache,
                            ce_tensor *const *v_cache, float scale) {
    CE_PROFILE(CE_OP_ATTENTION_SEQS, .t = {out, q, pos, k_cache, v_cache, rows}, .n = {nseq, k_new != NULL});
    const char *op = "attention_seqs";
    ce_status st;
    if (nseq < 1 || nseq > ATTN_SEQS_MAX)
        return ce_fail(CE_ERR_ARG, "%s: nseq must be in 1..%d, got %lld", op, ATTN_SEQS_MAX, (long long)nseq);
    if (!rows || !k_cache || !v_cache) return ce_fail(CE_ERR_ARG, "%s: rows, k_cache and v_cache are required", op);
    if ((k_new == NULL) != (v_new == NULL)) return ce_fail(CE_ERR_ARG, "%s: pass both k_new and v_new, or neither", op);
    if ((st = check3(q, op, "q", CE_F32)) || (st = check3(out, op, "out", CE_F32)) || (st = ce_check_writable(out, op, "out")))
        return st;
    if ((st = ce_check(pos, op, "pos", CE_I32))) return st;
    int64_t N = q->shape[0], total = 0;
    for (int64_t s = 0; s < nseq; s++) {
        if (rows[s] < 1) return ce_fail(CE_ERR_ARG, "%s: sequence %lld has %lld rows (at least 1)", op, (long long)s, (long long)rows[s]);
        if (rows[s] > N - total) return ce_fail(CE_ERR_SHAPE, "%s: the sequences' rows add up to more than q's %lld", op, (long long)N);
        total += rows[s];
    }
    if (total != N) return ce_fail(CE_ERR_SHAPE, "%s: the sequences' rows add up to %lld, but q has %lld", op, (long long)total, (long long)N);
    if (pos->ndim != 1 || pos->shape[0] != N)
        return ce_fail(CE_ERR_SHAPE, "%s: pos must be [%lld], got %lld elements", op, (long long)N, (long long)ce_tensor_numel(pos));
    if (k_new) {
        if ((st = check3(k_new, op, "k_new", CE_F32)) || (st = check3(v_new, op, "v_new", CE_F32))) return st;
        if (k_new->shape[0] != N || v_new->shape[0] != N)
            return ce_fail(CE_ERR_SHAPE, "%s: k_new and v_new need %lld rows, got %lld and %lld", op, (long long)N,
                           (long long)k_new->shape[0], (long long)v_new->shape[0]);
    }
    attn_ctx *seq = malloc((size_t)nseq * sizeof *seq + 2 * (size_t)nseq * sizeof(ce_tensor));
    if (!seq) return ce_fail(CE_ERR_NOMEM, "%s: out of memory for %lld sequences", op, (long long)nseq);
    ce_tensor *views = (ce_tensor *)(seq + nseq); /* q and out of each sequence (pos: one more below) */
    const int32_t *pp = (const int32_t *)pos->data;
    /* check every sequence before touching any cache: a bad call changes nothing */
    for (int64_t s = 0, r0 = 0; s < nseq; r0 += rows[s], s++) {
        if (!k_cache[s] || !v_cache[s]) { st = ce_fail(CE_ERR_ARG, "%s: sequence %lld has no cache", op, (long long)s); break; }
        if (k_new && ((st = ce_check_writable(k_cache[s], op, "k_cache")) || (st = ce_check_writable(v_cache[s], op, "v_cache")))) {
            st = seq_fail(st, s);
            break;
        }
        for (int64_t o = 0; o < s; o++)
            if (k_cache[o]->data == k_cache[s]->data || v_cache[o]->data == v_cache[s]->data) {
                st = ce_fail(CE_ERR_ARG, "%s: sequences %lld and %lld share a KV cache", op, (long long)o, (long long)s);
                break;
            }
        if (st) break;
        int64_t p0 = pp[r0];
        for (int64_t i = 1; i < rows[s]; i++)
            if (pp[r0 + i] != pp[r0] + i) {
                st = ce_fail(CE_ERR_ARG, "%s: sequence %lld's positions are not consecutive (%lld then %lld)", op,
                             (long long)s, (long long)pp[r0 + i - 1], (long long)pp[r0 + i]);
                break;
            }
        if (st) break;
        if (k_new && (p0 < 0 || p0 + rows[s] > k_cache[s]->shape[0])) {
            st = ce_fail(CE_ERR_RANGE, "%s: sequence %lld's %lld new rows at position %lld do not fit in its cache of %lld rows",
                         op, (long long)s, (long long)rows[s], (long long)p0, (long long)k_cache[s]->shape[0]);
            break;
        }
        if (k_new && (k_cache[s]->ndim != 3 || k_cache[s]->shape[1] != k_new->shape[1] || k_cache[s]->shape[2] != k_new->shape[2] ||
                      v_cache[s]->ndim != 3 || v_cache[s]->shape[1] != v_new->shape[1] || v_cache[s]->shape[2] != v_new->shape[2])) {
            st = ce_fail(CE_ERR_SHAPE, "%s: sequence %lld's cache rows do not match k_new/v_new [%lld, %lld, %lld]", op,
                         (long long)s, (long long)N, (long long)k_new->shape[1], (long long)k_new->shape[2]);
            break;
        }
        ce_tensor *qv = &views[2 * s], *ov = &views[2 * s + 1];
        *qv = row_view(q, r0, rows[s]);
        *ov = row_view(out, r0, rows[s]);
        ce_tensor pv = row_view(pos, r0, rows[s]);
        /* positions must be checked against the cache before the append makes them visible */
        if ((st = attn_prepare(&seq[s], op, ov, qv, k_cache[s], v_cache[s], &pv, p0 + rows[s], scale, NULL))) {
            st = seq_fail(st, s);
            break;
        }
        if (s && (seq[s].G != seq[0].G || seq[s].D != seq[0].D)) {
            st = ce_fail(CE_ERR_SHAPE, "%s: sequence %lld's heads differ from sequence 0's", op, (long long)s);
            break;
        }
    }
    for (int64_t s = 0, r0 = 0; !st && k_new && s < nseq; r0 += rows[s], s++) {
        ce_tensor kv = row_view(k_new, r0, rows[s]), vv = row_view(v_new, r0, rows[s]);
        if ((st = ce_copy_rows(k_cache[s], pp[r0], &kv)) || (st = ce_copy_rows(v_cache[s], pp[r0], &vv)))
            st = seq_fail(st, s);
    }
    if (!st) st = attn_run(seq, nseq);
    free(seq);
    return st;
}
