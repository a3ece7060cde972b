/* matmul.c - out[..., N] = x[..., K] @ w[N, K]^T (+ bias): every Linear layer of the model.
 *
 * Two SIMD paths, picked by the number of rows M of x (never by the thread count):
 *  - GEMV (M < GEMM_MIN_M, the decode step): memory bound, so weights are read once, straight
 *    from their stored format. F32/F16/BF16 are widened in registers and FMA'd against x; for
 *    Q8_0/Q4_0/Q4_1 a block's integers are converted to F32, dotted with x (exact products), and
 *    the sum is scaled by d once per block (plus m * sum(x) for Q4_1). Activations are never
 *    quantized: the result matches an F32 matmul on the dequantized weights to a few ulps.
 *  - GEMM (prefill): each thread dequantizes a panel of NC weight rows x KC columns into F32,
 *    transposed into 16-column groups, and a 6x16 register-tiled FMA microkernel runs every
 *    6-row slice of x over it, so the dequantization is paid once per panel, not once per row.
 * Threads share the output columns (weight rows) in pieces whose bounds depend only on M, N, K
 * (GEMV: each thread's rows, taken a piece at a time and stolen from when a thread falls behind;
 * GEMM: NC-column panels claimed in order), and whichever threads run take them all
 * (ce_parallel_dyn). Each output element is computed by one thread in an order that depends only
 * on M, N, K, so results are bit-identical for any thread count. With ce_simd_on == 0 a plain
 * scalar loop (dequantize a row, then a sequential dot product) runs instead: the reference the
 * tests compare against.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"
#include "simd_load.h"

enum {
    MR = 6,          /* GEMM microkernel rows of x */
    NR = 16,         /* GEMM microkernel columns (two ymm accumulators per row) */
    KC = 256,        /* GEMM depth block: a 16-column group of the panel is 16 KiB, L1 sized */
    NC = 96,         /* GEMM panel columns per thread step: NC x KC floats = 96 KiB, L2 sized */
    GEMM_MIN_M = 8,  /* fewer rows: GEMV, one pass over the weights per 2 rows (packing a panel costs
                        about as much as 8 rows of GEMV) */
    SMALL_WORK = 1 << 15  /* M*N*K below this runs on one thread: not worth waking the pool */
};

struct gemv_range {
    _Alignas(64) _Atomic uint64_t v; /* a cache line each: owners never share theirs until the end */
};

typedef struct mm_ctx {
    int dtype;                 /* of w */
    const char *w;             /* row n of w starts at w + n * wstride */
    int64_t wstride;
    int64_t bsize, bbytes;     /* elements and bytes per block of w's dtype (1 and 4 for F32) */
    int64_t M, N, K;
    const float *const *xr;    /* [M] rows of x */
    float *const *outr;        /* [M] rows of out */
    const float *bias;         /* [N] or NULL */
    const float *xq;           /* GEMV on Q4_0/Q4_1: [M][K] x permuted and scaled for q4_bits */
    const float *sq;           /* and for Q4_1 [M][K / 32] pairs (0, scaled sum of x over a block),
                                  for Q4_0 [M][K] the offsets -8 x (build_xq's cq) */
    float xq_unscale[GEMM_MIN_M]; /* and per row of x, the factor that undoes the scaling */
    float *scratch;            /* GEMM / scalar: per-thread work areas */
    int64_t scratch_floats;    /* floats per thread */
    int split_rows;            /* GEMM with few columns: threads split M instead of N */
    _Atomic int64_t *next_unit; /* GEMM: the first work unit no thread has claimed */
} mm_ctx;

enum { SUCC_THREADS = 4 }; /* threads that prefetch their rows of the next GEMV (succ_link) */

/* A GEMV job: one x against one or more weights (ce_matmul_n). Their rows are numbered one after
 * the other, seg[s] computing rows [start[s], start[s + 1]), so the threads split and steal them
 * as the rows of one tall matrix: one pool job, one start-up, and no wait between the weights. */
typedef struct {
    mm_ctx *seg;               /* [nseg] one per weight, sharing x */
    int nseg;
    int q4;                    /* some weight is Q4_0/Q4_1: xq per thread, MXCSR */
    int64_t start[CE_MATMUL_MAX + 1];
    struct gemv_range *ranges; /* [nranges] rows each thread has left, (lo, hi) in 64 bits */
    int nranges;               /* or 0 (ranges NULL): one thread runs all rows */
    const char *next[SUCC_THREADS]; /* per thread: where its rows of the expected next GEMV begin */
} gemv_job;

/* Local and inline: the public ce_dtype_* functions are PLT calls that would break the kernels. */
static inline int is_block(int dtype) { return dtype == CE_Q8_0 || dtype == CE_Q4_0 || dtype == CE_Q4_1; }

static inline const char *w_at(const mm_ctx *c, int64_t n, int64_t k0) {
    return c->w + n * c->wstride + k0 / c->bsize * c->bbytes;
}

static inline float add_bias(const mm_ctx *c, float v, int64_t n) { return c->bias ? v + c->bias[n] : v; }

/* ---- scalar reference: dequantize row n, then a sequential dot product per row of x ---- */

static void scalar_task(void *p, int ith, int nth) {
    const mm_ctx *c = p;
    float *wrow = c->scratch + (int64_t)ith * c->scratch_floats;
    int64_t lo, hi;
    ce_split(c->N, ith, nth, NR, &lo, &hi);
    for (int64_t n = lo; n < hi; n++) {
        ce_dequantize_row(c->dtype, w_at(c, n, 0), wrow, c->K);
        for (int64_t m = 0; m < c->M; m++) {
            const float *x = c->xr[m];
            float s = 0.0f;
            for (int64_t k = 0; k < c->K; k++) s += x[k] * wrow[k];
            c->outr[m][n] = add_bias(c, s, n);
        }
    }
}

#if CE_HAVE_AVX2
#define AI static inline __attribute__((always_inline))

/* ---- GEMV: P weight rows x R rows of x (P * R <= 2), weights read in their stored format ---- */

/* res[p * R + r] = w[p] . x[r]. Each output has its own four accumulators, so its value does not
 * depend on which tile shape computed it. */
AI void dot_tile(int dtype, int P, int R, const void *const *w, const float *const *x, int64_t K,
                 const char *pf, float *res) {
    const int64_t eb = dtype == CE_F32 ? 4 : 2; /* bytes per element */
    __m256 acc[2][4];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 4; i++) acc[t][i] = _mm256_setzero_ps();
    int64_t nb = K / 32, k = nb * 32;
    for (int64_t b = 0; b < nb; b++) {
        /* the next tile's rows, at P times this tile's pace (as in dot_tile_q) */
        for (int i = 0; i < P * eb / 2; i++) _mm_prefetch(pf + (b * P * eb / 2 + i) * 64, _MM_HINT_T0);
        for (int p = 0; p < P; p++) {
            __m256 v[4];
            ld32(dtype, w[p], b, v);
            for (int r = 0; r < R; r++)
                for (int i = 0; i < 4; i++)
                    acc[p * R + r][i] = _mm256_fmadd_ps(v[i], _mm256_loadu_ps(x[r] + 32 * b + 8 * i),
                                                        acc[p * R + r][i]);
        }
    }
    if (!is_block(dtype))
        for (; k + 8 <= K; k += 8)
            for (int p = 0; p < P; p++) {
                __m256 v = ld8(dtype, w[p], k);
                for (int r = 0; r < R; r++)
                    acc[p * R + r][0] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x[r] + k), acc[p * R + r][0]);
            }
    for (int t = 0; t < P * R; t++)
        res[t] = hsum8(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
    for (; k < K; k++) /* the last K % 8 elements of F32/F16/BF16 rows */
        for (int p = 0; p < P; p++) {
            float wv = dtype == CE_F32 ? ((const float *)w[p])[k]
                     : dtype == CE_F16 ? ce_f16_to_f32(((const uint16_t *)w[p])[k])
                                       : ce_bf16_to_f32(((const uint16_t *)w[p])[k]);
            for (int r = 0; r < R; r++) res[p * R + r] += wv * x[r][k];
        }
}

/* Block dtypes: per block, s = q . x in F32 (small-integer weights; two muls, two FMAs and an add
 * in a fixed tree; for Q4_0 four FMAs that each add their lanes' -8 x, then two adds), then
 * acc = fma(d, s, acc). Q4_1 adds its m term,
 * sum_b m_b S_b with S_b the sum of x over block b (precomputed per row of x), in the same loop,
 * for all P rows of a tile at once: their (d, m) pairs are inserted into one vector, converted by
 * one vcvtph2ps, and one FMA against S_b in the odd lanes accumulates m_p S_b in lane 2p + 1. Per
 * block and row that is about one uop, against three for a per-row broadcast and FMA (measured
 * ~5-10% slower) or a per-row copy of m to a buffer dotted later (10-30% slower when the weights
 * stream from DRAM, the case that matters: the stores queue behind the stream's loads).
 * One set of accumulators per output, in the same order whatever the tile shape, so an output's
 * value never depends on which tile (or thread) computed it. Error stays at a few F32 ulps of
 * sum |w x| (for Q4_1, of sum |d q x| + |m| sum |x|, as the m term is summed apart). Each lane
 * of the m accumulator belongs to one row and sums its blocks in order, so it too is the same for
 * any P.
 * Q4 nibbles are never moved or converted: q4_bits reads them in place as subnormal floats (see
 * there), so the x of Q4 rows is the permuted, power-of-two scaled copy xq built once per call
 * (per thread), and S and the result carry the same scaling.
 * The loop is bound by instruction throughput: a tile's P weight rows share the x loads (held in
 * registers), the P dependency chains are independent, and all rows are addressed from one moving
 * pointer. */

enum { PF_TILES = 2 }; /* block dtypes: prefetch the tile this many tiles ahead (measured: 2 > 1) */

/* 2^e for e in [-149, 127], exactly, from the bits */
static inline float pow2f(int e) {
    uint32_t b = e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149);
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* xq[32b .. 32b + 32) for q4_bits: vector k of block b is x[32b + k + 4l] (l = 0..7) times
 * 2^(E - sh), sh = 8k + 4(l / 4) (16 + 4(l / 4) for k = 3). If sq (Q4_1): (sq[2b], sq[2b + 1]) =
 * (0, 2^(E - 149) * (sum of x over block b)), the pair the m term broadcasts. If cq (Q4_0): cq
 * is laid out as xq and holds -8 x 2^(E - 149), so fma(lane of q4_bits, xq, cq) is (q - 8) x on
 * the products' scale, rounded once (subtracting 8 on q4_bits' grid would give subnormal results,
 * which cost Zen 3 extra cycles: this form measured +13-24% for Q4_0). E puts the largest |x|
 * near 2^100, so the products q * x * 2^(E - 149) are normal unless |x| is below ~2^-76 of the
 * largest. Returns the factor 2^(149 - E) that undoes the scaling (E stays in [22, 127], so both
 * are finite floats). */
static float build_xq(const float *x, int64_t K, float *xq, float *sq, float *cq) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 mx = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k)));
    float l[8], amax = 0.0f;
    _mm256_storeu_ps(l, mx);
    for (int i = 0; i < 8; i++) amax = l[i] > amax ? l[i] : amax;
    int e = 0; /* amax < 2^e; read from the bits (libm's frexpf is a call, on every thread) */
    uint32_t ab;
    memcpy(&ab, &amax, 4);
    if (ab >= 0x00800000u && ab < 0x7F800000u) e = (int)(ab >> 23) - 126;
    else if (amax > 0.0f && amax <= 0x1p127f) frexpf(amax, &e); /* subnormal amax */
    int E = 100 - e < 22 ? 22 : 100 - e > 127 ? 127 : 100 - e;
    const float pE = pow2f(E), fs = pow2f(E - 149);
    __m256 sv[4];
    for (int k = 0; k < 4; k++) {
        float lo = pE * pow2f(k < 3 ? -8 * k : -16), hi = lo * 0x1p-4f;
        sv[k] = _mm256_setr_ps(lo, lo, lo, lo, hi, hi, hi, hi);
    }
    for (int64_t b = 0; b < K / 32; b++) {
        const float *p = x + 32 * b;
        __m256 a = _mm256_loadu_ps(p), bb = _mm256_loadu_ps(p + 8), cc = _mm256_loadu_ps(p + 16),
               d = _mm256_loadu_ps(p + 24);
        if (sq) sq[2 * b] = 0.0f, sq[2 * b + 1] = hsum8(_mm256_add_ps(_mm256_add_ps(a, bb), _mm256_add_ps(cc, d))) * fs;
        /* rows (4 floats) r and r + 4 in the two halves, then a 4x4 transpose in each half */
        __m256 r0 = _mm256_permute2f128_ps(a, cc, 0x20), r1 = _mm256_permute2f128_ps(a, cc, 0x31);
        __m256 r2 = _mm256_permute2f128_ps(bb, d, 0x20), r3 = _mm256_permute2f128_ps(bb, d, 0x31);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 v[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(xq + 32 * b + 8 * k, _mm256_mul_ps(v[k], sv[k]));
        if (cq) /* Q4_0: -8 x on the products' scale, so fma(q, xq, cq) = (q - 8) x rounded once */
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(cq + 32 * b + 8 * k, _mm256_mul_ps(v[k], _mm256_set1_ps(-8.0f * fs)));
    }
    return pow2f(149 - E);
}

/* floats of sq per row of x: Q4_1's (0, S) pair per block, Q4_0's offset per element */
static inline int64_t sq_floats(int dtype, int64_t K) { return dtype == CE_Q4_1 ? 2 * (K / 32) : K; }

/* xq of every row of x into buf ([M][K]), then their sq ([M][sq_floats]); points c at them */
static void build_xqs(mm_ctx *c, float *buf) {
    const int64_t ex = sq_floats(c->dtype, c->K);
    float *sq = buf + c->M * c->K;
    for (int64_t m = 0; m < c->M; m++)
        c->xq_unscale[m] = build_xq(c->xr[m], c->K, buf + m * c->K, c->dtype == CE_Q4_1 ? sq + m * ex : NULL,
                                    c->dtype == CE_Q4_0 ? sq + m * ex : NULL);
    c->xq = buf;
    c->sq = sq;
}

static inline int is_q4(int dtype) { return dtype == CE_Q4_0 || dtype == CE_Q4_1; }

/* floats of xq and sq that the weights seg[0..n) need: one copy per Q4 dtype among them */
static int64_t xq_floats(const mm_ctx *seg, int n) {
    int64_t f = 0;
    for (int s = 0, seen = 0; s < n; s++)
        if (is_q4(seg[s].dtype) && !(seen & 1 << seg[s].dtype)) {
            seen |= 1 << seg[s].dtype;
            f += seg[s].M * (seg[s].K + sq_floats(seg[s].dtype, seg[s].K));
        }
    return f;
}

/* xq for every Q4 weight of seg[0..n) that has none, into buf (xq_floats of them): weights of
 * one dtype share a copy */
static void build_seg_xqs(mm_ctx *seg, int n, float *buf) {
    for (int s = 0; s < n; s++) {
        if (!is_q4(seg[s].dtype) || seg[s].xq) continue;
        build_xqs(&seg[s], buf);
        buf += seg[s].M * (seg[s].K + sq_floats(seg[s].dtype, seg[s].K));
        for (int t = s + 1; t < n; t++)
            if (seg[t].dtype == seg[s].dtype) {
                seg[t].xq = seg[s].xq, seg[t].sq = seg[s].sq;
                memcpy(seg[t].xq_unscale, seg[s].xq_unscale, sizeof seg[s].xq_unscale);
            }
    }
}

/* 4 bytes at any alignment (a block's (d, m) pair) */
static inline int ld_i32(const void *p) {
    int v;
    memcpy(&v, p, 4);
    return v;
}

/* res[p * R + r] = w[p] . x[r] for the P weight rows of a tile starting at w0 (row stride ws) and
 * R rows of x (Q4: xq rows, with their block sums sq and unscaling factors us). */
AI void dot_tile_q(int dtype, int P, int R, const char *w0, int64_t ws, const float *const *x,
                   const float *const *sq, const float *us, int64_t nb, const char *pf, float *res) {
    const int64_t bb = dtype == CE_Q8_0 ? 34 : dtype == CE_Q4_0 ? 18 : 20;
    const int npf = (int)((P * bb + 63) / 64);
    __m256 acc[4], macc[2];
    for (int t = 0; t < P * R; t++) acc[t] = _mm256_setzero_ps();
    for (int r = 0; r < R; r++) macc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const char *blk = w0 + b * bb;
        /* Odd-sized blocks defeat the hardware prefetcher: stream the rows of a tile ahead (adjacent
         * in memory) at P times this tile's pace, so they are in cache when that tile starts. */
        for (int i = 0; i < npf; i++) _mm_prefetch(pf + b * bb * P + 64 * i, _MM_HINT_T0);
        __m256 xv[2][4], sv[2];
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                xv[r][i] = _mm256_loadu_ps(x[r] + 32 * b + 8 * i);
                /* keep x in registers: gcc would rather reload it for every row */
                __asm__("" : "+x"(xv[r][i]));
            }
            if (dtype == CE_Q4_1) /* the pair (0, S_b), through a may-alias vector load */
                sv[r] = _mm256_castsi256_ps(_mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)(sq[r] + 2 * b))));
        }
        if (dtype == CE_Q4_1) { /* the (d, m) pairs of the P rows, converted at once: lanes 2p, 2p + 1 */
            __m128i dm = _mm_cvtsi32_si128(ld_i32(blk));
            if (P > 1) dm = _mm_insert_epi32(dm, ld_i32(blk + ws), 1);
            if (P > 2) dm = _mm_insert_epi32(dm, ld_i32(blk + 2 * ws), 2);
            if (P > 3) dm = _mm_insert_epi32(dm, ld_i32(blk + 3 * ws), 3);
            __m256 dmf = _mm256_cvtph_ps(dm);
            for (int r = 0; r < R; r++) macc[r] = _mm256_fmadd_ps(dmf, sv[r], macc[r]);
        }
        for (int p = 0; p < P; p++) {
            __m256 v[4], d;
            ld32_ints(dtype, blk + p * ws, 0, v, &d);
            for (int r = 0; r < R; r++) {
                __m256 s;
                if (dtype == CE_Q4_0) {
                    const float *cb = sq[r] + 32 * b;
                    s = _mm256_add_ps(_mm256_add_ps(_mm256_fmadd_ps(v[0], xv[r][0], _mm256_loadu_ps(cb)),
                                                    _mm256_fmadd_ps(v[1], xv[r][1], _mm256_loadu_ps(cb + 8))),
                                      _mm256_add_ps(_mm256_fmadd_ps(v[2], xv[r][2], _mm256_loadu_ps(cb + 16)),
                                                    _mm256_fmadd_ps(v[3], xv[r][3], _mm256_loadu_ps(cb + 24))));
                } else {
                    s = _mm256_add_ps(_mm256_fmadd_ps(v[1], xv[r][1], _mm256_mul_ps(v[0], xv[r][0])),
                                      _mm256_fmadd_ps(v[3], xv[r][3], _mm256_mul_ps(v[2], xv[r][2])));
                }
                acc[p * R + r] = _mm256_fmadd_ps(d, s, acc[p * R + r]);
            }
        }
    }
    float ml[2][8];
    for (int r = 0; r < R; r++) _mm256_storeu_ps(ml[r], macc[r]);
    for (int t = 0; t < P * R; t++) {
        res[t] = hsum8(acc[t]);
        if (dtype == CE_Q4_1) res[t] += ml[t % R][2 * (t / R) + 1];
        if (dtype != CE_Q8_0) res[t] *= us[t % R];
    }
}

enum { GEMV_MAX_THREADS = 64 }; /* more would only queue on the memory bus (results do not change) */
enum { GEMV_P = 4 }; /* weight rows per tile of block dtypes when x has one row left */
enum { XQ_LOCAL = 8192 }; /* floats: Q4 GEMVs whose xq fits build it per thread (K up to ~7900 at M = 1) */

/* res[p * R + r] = w[n + p] . x[m + r] for P weight rows and R rows of x; the thread's rows end
 * at hi. */
AI void gemv_tile(int dtype, int P, int R, const mm_ctx *c, int64_t n, int64_t hi, int64_t m, float *res) {
    const char *w0 = w_at(c, n, 0);
    /* The kernels prefetch the tile PF_TILES (block dtypes; 1 otherwise) ahead of this one. Past
     * the thread's rows that would fetch another thread's rows (or the next tensor) from DRAM for
     * nothing, so there they prefetch from x instead, which is in L1 already (the F32/F16/BF16 walk
     * runs a little past it: harmless, prefetches never fault). */
    const int ahead = is_block(dtype) ? PF_TILES : 1;
    const char *pf = n + (ahead + 1) * P <= hi ? w0 + ahead * P * c->wstride : (const char *)c->xr[m];
    if (is_block(dtype)) {
        const float *x[2] = {c->xr[m], c->xr[m + R - 1]}, *sq[2] = {NULL, NULL};
        if (dtype != CE_Q8_0) {
            const int64_t ex = sq_floats(dtype, c->K);
            x[0] = c->xq + m * c->K, x[1] = c->xq + (m + R - 1) * c->K;
            sq[0] = c->sq + m * ex, sq[1] = c->sq + (m + R - 1) * ex;
        }
        dot_tile_q(dtype, P, R, w0, c->wstride, x, sq, c->xq_unscale + m, c->K / 32, pf, res);
    } else {
        const void *w[2] = {w0, w0 + (P - 1) * c->wstride};
        dot_tile(dtype, P, R, w, c->xr + m, c->K, pf, res);
    }
}

/* Outputs [lo, hi) of rows m, m + 1 (R = 2) or m alone (R = 1) of x: pairs of x rows share each
 * weight row; a single x row takes weight rows in tiles. */
AI void gemv_rows(int dtype, int R, const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi, int64_t m) {
    float res[GEMV_P * 2];
    int64_t n = lo;
    if (R == 2) {
        for (; n < hi; n++) {
            gemv_tile(dtype, 1, 2, c, n, pfhi, m, res);
            c->outr[m][n] = add_bias(c, res[0], n);
            c->outr[m + 1][n] = add_bias(c, res[1], n);
        }
        return;
    }
    if (is_block(dtype))
        for (; n + GEMV_P <= hi; n += GEMV_P) {
            gemv_tile(dtype, GEMV_P, 1, c, n, pfhi, m, res);
            for (int p = 0; p < GEMV_P; p++) c->outr[m][n + p] = add_bias(c, res[p], n + p);
        }
    for (; n + 2 <= hi; n += 2) {
        gemv_tile(dtype, 2, 1, c, n, pfhi, m, res);
        c->outr[m][n] = add_bias(c, res[0], n);
        c->outr[m][n + 1] = add_bias(c, res[1], n + 1);
    }
    if (n < hi) {
        gemv_tile(dtype, 1, 1, c, n, pfhi, m, res);
        c->outr[m][n] = add_bias(c, res[0], n);
    }
}

AI void gemv_range(int dtype, const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi) {
    for (int64_t m = 0; m < c->M; m += 2) gemv_rows(dtype, c->M - m >= 2 ? 2 : 1, c, lo, hi, pfhi, m);
}

typedef void (*gemv_fn)(const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi);
#define GEMV_FN(T, DT) \
    static void gemv_##T(const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi) { gemv_range(DT, c, lo, hi, pfhi); }
GEMV_FN(f32, CE_F32)
GEMV_FN(f16, CE_F16)
GEMV_FN(bf16, CE_BF16)
GEMV_FN(q8_0, CE_Q8_0)
GEMV_FN(q4_0, CE_Q4_0)
GEMV_FN(q4_1, CE_Q4_1)
static const gemv_fn gemvs[] = {gemv_f32, gemv_f16, gemv_bf16, gemv_q8_0, gemv_q4_0, gemv_q4_1};

/* GEMV rows are split evenly, but a thread whose core runs slower (another guest on it, a page
 * walk, an interrupt) would leave the other waiting at the end of every call. So each thread takes
 * its own rows a piece at a time from a (lo, hi) pair it shares with thieves, and a thread that is
 * done steals the upper half of what another has left. Owners take from the bottom and thieves
 * from the top, so the owner's stream stays contiguous and the atomics only contend at the end.
 * Every boundary is a multiple of NR, so each row is tiled the same way whoever computes it, and
 * results stay bit-identical for any thread count. Since every thread drains every range before
 * it stops, any subset of the threads computes all rows: a thread kept off its core is simply
 * left out (ce_parallel_dyn). Measured with 2 threads, interleaved A/B: lm-head-sized calls +0-9%
 * (Q8_0) and +0-4% (Q4_1), decode-sized calls unchanged; with another busy program on the
 * machine, decode 2.5x faster (with the pool's dynamic jobs). */
enum { GEMV_CHUNK = 32 }; /* the smallest piece an owner takes, in rows */

static inline uint64_t rng_pack(int64_t lo, int64_t hi) { return (uint64_t)lo | (uint64_t)hi << 32; }

/* take [lo, hi) from the bottom (owner) or the upper half (thief) of range r; 0 when it is empty */
static int rng_take(_Atomic uint64_t *r, int thief, int64_t *lo, int64_t *hi) {
    uint64_t v = atomic_load_explicit(r, memory_order_relaxed);
    for (;;) {
        int64_t a = (int64_t)(v & 0xFFFFFFFFu), b = (int64_t)(v >> 32), cut;
        if (a >= b) return 0;
        if (!thief) { /* [a, cut): big pieces first, GEMV_CHUNK rows at the end */
            int64_t n = (b - a) / 4 / NR * NR;
            cut = a + (n < GEMV_CHUNK ? GEMV_CHUNK : n);
            if (cut > b) cut = b;
        } else { /* [cut, b): the upper half, or all of a small rest */
            cut = (a + (b - a) / 2 + NR - 1) / NR * NR;
            if (cut >= b) cut = a;
        }
        uint64_t rest = thief ? rng_pack(a, cut) : rng_pack(cut, b);
        if (atomic_compare_exchange_weak_explicit(r, &v, rest, memory_order_relaxed, memory_order_relaxed)) {
            *lo = thief ? cut : a, *hi = thief ? b : cut;
            return 1;
        }
    }
}

/* Block dtypes: the first tiles of a stretch of rows [lo, hi), before the kernels' own prefetch
 * distance: nothing else fetches them early. */
static void prefetch_start(const mm_ctx *c, int64_t lo, int64_t hi) {
    if (!is_block(c->dtype)) return;
    const char *a = w_at(c, lo, 0), *e = w_at(c, hi < lo + PF_TILES * GEMV_P ? hi : lo + PF_TILES * GEMV_P, 0);
    for (; a < e; a += 64) _mm_prefetch(a, _MM_HINT_T0);
}

/* the weight whose rows hold job row r */
static inline int seg_of(const gemv_job *j, int64_t r) {
    int s = 0;
    while (s + 1 < j->nseg && r >= j->start[s + 1]) s++;
    return s;
}

/* prefetch_start for job rows [lo, hi) */
static void prefetch_rows(const gemv_job *j, int64_t lo, int64_t hi) {
    int s = seg_of(j, lo);
    int64_t a = j->start[s], b = j->start[s + 1];
    prefetch_start(&j->seg[s], lo - a, (hi < b ? hi : b) - a);
}

/* Job rows [lo, hi), the thread's prefetching stopping at pfhi; a stretch that runs on into the
 * next weight prefetches that weight's first tiles before finishing this one's. */
static void run_rows(const gemv_job *j, int64_t lo, int64_t hi, int64_t pfhi) {
    for (int s = seg_of(j, lo); lo < hi; s++) {
        int64_t a = j->start[s], b = j->start[s + 1], e = hi < b ? hi : b;
        if (e < hi) prefetch_start(&j->seg[s + 1], 0, (hi < j->start[s + 2] ? hi : j->start[s + 2]) - b);
        gemvs[j->seg[s].dtype](&j->seg[s], lo - a, e - a, (pfhi < b ? pfhi : b) - a);
        lo = e;
    }
}

static void gemv_chunks(const gemv_job *j, int ith) {
    if (!j->ranges) { /* one thread */
        prefetch_rows(j, 0, j->start[j->nseg]);
        run_rows(j, 0, j->start[j->nseg], j->start[j->nseg]);
        return;
    }
    int64_t lo, hi;
    if (ith < j->nranges) {
        _Atomic uint64_t *mine = &j->ranges[ith].v;
        for (int first = 1; rng_take(mine, 0, &lo, &hi); first = 0) {
            /* prefetch on to the end of what is still ours: our next chunk follows this one */
            int64_t pfhi = (int64_t)(atomic_load_explicit(mine, memory_order_relaxed) >> 32);
            if (first) prefetch_rows(j, lo, pfhi);
            run_rows(j, lo, hi, pfhi);
        }
    }
    /* then the others' rests, until every range is empty: whichever threads run (ce_parallel_dyn
     * may leave late ones out) compute every row */
    for (int k = 1; k < j->nranges + (ith >= j->nranges); k++) {
        int r = (ith + k) % j->nranges;
        while (rng_take(&j->ranges[r].v, 1, &lo, &hi)) {
            prefetch_rows(j, lo, hi);
            run_rows(j, lo, hi, hi);
        }
    }
}

/* A decode step runs the same GEMVs in the same order every token, so the one that followed a
 * weight last time will most likely follow it again. Each call looks up the GEMV that followed
 * it last time (keyed by its first weight's address) and, when a thread has finished its rows,
 * prefetches the first SUCC_BYTES of that thread's rows of the next call: the stream then starts
 * warm instead of waiting on DRAM (and page walks) at every call. Measured with 2 threads on
 * 768-row calls streaming from DRAM: +3-6% interleaved, up to +15% against one long call.
 * A wrong guess costs a few KiB of bandwidth and never a result: the table only ever feeds
 * prefetches, which cannot fault, so its relaxed atomic fields may even disagree with each other
 * when two threads issue GEMVs at once. */
enum { SUCC_SLOTS = 1024, SUCC_BYTES = 8192 };
static struct {
    _Atomic uintptr_t key;                   /* first weight's address of the call this slot is about */
    _Atomic uintptr_t next[SUCC_THREADS];    /* per thread: where its rows of the call after it began */
} succ[SUCC_SLOTS];
static _Atomic uintptr_t succ_prev; /* the last GEMV's key */

static inline size_t succ_slot(uintptr_t key) { return (size_t)((key >> 6) * 0x9E3779B97F4A7C15ull >> 54) % SUCC_SLOTS; }

/* Links this call to the previous GEMV (first[i]: job row where thread i starts, or -1), and
 * returns in j->next where the call expected after this one begins. */
static void succ_link(gemv_job *j, const int64_t first[SUCC_THREADS]) {
    const uintptr_t key = (uintptr_t)j->seg[0].w;
    const uintptr_t prev = atomic_exchange_explicit(&succ_prev, key, memory_order_relaxed);
    if (prev) {
        size_t p = succ_slot(prev);
        atomic_store_explicit(&succ[p].key, prev, memory_order_relaxed);
        for (int i = 0; i < SUCC_THREADS; i++) {
            uintptr_t a = 0;
            if (first[i] >= 0) {
                int s = seg_of(j, first[i]);
                a = (uintptr_t)w_at(&j->seg[s], first[i] - j->start[s], 0);
            }
            atomic_store_explicit(&succ[p].next[i], a, memory_order_relaxed);
        }
    }
    size_t k = succ_slot(key);
    int hit = atomic_load_explicit(&succ[k].key, memory_order_relaxed) == key;
    for (int i = 0; i < SUCC_THREADS; i++)
        j->next[i] = hit ? (const char *)atomic_load_explicit(&succ[k].next[i], memory_order_relaxed) : NULL;
}

static void gemv_task(void *p, int ith, int nth) {
    (void)nth; /* whichever threads run share the rows (gemv_chunks) */
    const gemv_job *j = p;
    /* q4_bits feeds subnormals to the FMAs: a caller's denormals-are-zero mode (bit 6) would zero
     * them, and flush-to-zero (bit 15) the tiny products of |x| far below the largest. Libraries
     * built with -ffast-math set both for the whole process when they load. */
    const unsigned csr = _mm_getcsr(), dazftz = 0x8040;
    if (j->q4 && (csr & dazftz)) _mm_setcsr(csr & ~dazftz);
    if (j->q4 && xq_floats(j->seg, j->nseg) <= XQ_LOCAL) {
        /* Each thread builds its own xq, on its stack: no allocation, and the worker reads x
         * once instead of pulling every line of a shared copy from the caller's cache. Measured
         * 5-12% faster per decode-sized call with 2 threads (the most on the smallest). */
        _Alignas(64) float buf[XQ_LOCAL];
        mm_ctx seg[CE_MATMUL_MAX];
        memcpy(seg, j->seg, (size_t)j->nseg * sizeof *seg);
        build_seg_xqs(seg, j->nseg, buf);
        gemv_job lj = *j;
        lj.seg = seg;
        gemv_chunks(&lj, ith);
    } else {
        gemv_chunks(j, ith); /* no Q4, or the caller built one shared xq (gemv_run) */
    }
    if (ith < SUCC_THREADS && j->next[ith])
        for (int64_t b = 0; b < SUCC_BYTES; b += 64) _mm_prefetch(j->next[ith] + b, _MM_HINT_T0);
    if (j->q4 && (csr & dazftz)) _mm_setcsr(csr);
}

/* The GEMV of seg[0..n) (filled in but for xq): split between up to nth threads. */
static ce_status gemv_run(mm_ctx *seg, int n, int nth) {
    gemv_job j = {.seg = seg, .nseg = n};
    for (int s = 0; s < n; s++) {
        j.start[s + 1] = j.start[s] + seg[s].N;
        j.q4 |= is_q4(seg[s].dtype);
    }
    const int64_t N = j.start[n];
    /* xq and sq, x as q4_bits reads it: built here, once, only when too big for gemv_task's
     * per-thread stack copy */
    float *xq = NULL;
    if (xq_floats(seg, n) > XQ_LOCAL) {
        xq = aligned_alloc(64, (size_t)((xq_floats(seg, n) * 4 + 63) / 64 * 64));
        if (!xq) return ce_fail(CE_ERR_NOMEM, "matmul: out of memory");
        build_seg_xqs(seg, n, xq);
    }
    struct gemv_range ranges[GEMV_MAX_THREADS];
    if (nth > GEMV_MAX_THREADS) nth = GEMV_MAX_THREADS;
    if (N > UINT32_MAX) nth = 1; /* the ranges pack rows in 32 bits */
    int64_t first[SUCC_THREADS]; /* the job row each thread starts at, or -1 */
    for (int i = 0; i < SUCC_THREADS; i++) first[i] = i == 0 && N > 0 ? 0 : -1;
    for (int i = 0; nth > 1 && i < nth; i++) {
        int64_t lo, hi;
        ce_split(N, i, nth, NR, &lo, &hi);
        atomic_init(&ranges[i].v, rng_pack(lo, hi));
        if (i < SUCC_THREADS) first[i] = lo < hi ? lo : -1;
    }
    succ_link(&j, first);
    if (nth > 1) {
        j.ranges = ranges;
        j.nranges = nth;
        ce_parallel_dyn(gemv_task, &j, nth);
    } else {
        ce_parallel_n(gemv_task, &j, 1);
    }
    free(xq);
    return CE_OK;
}

/* ---- GEMM ---- */

AI void transpose8(__m256 r[8]) {
    __m256 t[8], s[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++) {
        __m256 *u = t + 4 * h;
        s[4 * h + 0] = _mm256_shuffle_ps(u[0], u[2], 0x44);
        s[4 * h + 1] = _mm256_shuffle_ps(u[0], u[2], 0xEE);
        s[4 * h + 2] = _mm256_shuffle_ps(u[1], u[3], 0x44);
        s[4 * h + 3] = _mm256_shuffle_ps(u[1], u[3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
    }
}

static const float zero_row[KC];

/* Panel columns [n0, n0 + nc) x depth [k0, k0 + kc) as F32 groups of 16 columns:
 * bp[g * kc * 16 + k * 16 + j] = w[n0 + 16g + j][k0 + k], zero past the last column. */
static void pack_panel(const mm_ctx *c, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float *bp,
                       float *tmp) {
    for (int64_t g = 0; g * NR < nc; g++, bp += kc * NR) {
        const float *src[NR];
        for (int j = 0; j < NR; j++) {
            int64_t n = n0 + g * NR + j;
            if (g * NR + j >= nc) {
                src[j] = zero_row;
            } else if (c->dtype == CE_F32) {
                src[j] = (const float *)w_at(c, n, k0);
            } else {
                ce_dequantize_row(c->dtype, w_at(c, n, k0), tmp + j * KC, kc);
                src[j] = tmp + j * KC;
            }
        }
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8)
            for (int h = 0; h < 2; h++) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src[8 * h + i] + k);
                transpose8(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(bp + (k + i) * NR + 8 * h, r[i]);
            }
        for (; k < kc; k++)
            for (int j = 0; j < NR; j++) bp[k * NR + j] = src[j][k];
    }
}

/* Row r of a microkernel tile: o[0..ncols) (+)= c0:c1. Kept out of line so the accumulators of
 * micro() stay in registers (an indexed epilogue loop makes gcc spill them every iteration). */
static void store_tile_row(float *o, __m256 c0, __m256 c1, int ncols, int acc) {
    if (ncols == NR) {
        if (acc) {
            c0 = _mm256_add_ps(_mm256_loadu_ps(o), c0);
            c1 = _mm256_add_ps(_mm256_loadu_ps(o + 8), c1);
        }
        _mm256_storeu_ps(o, c0);
        _mm256_storeu_ps(o + 8, c1);
        return;
    }
    float t[NR];
    _mm256_storeu_ps(t, c0);
    _mm256_storeu_ps(t + 8, c1);
    for (int j = 0; j < ncols; j++) o[j] = acc ? o[j] + t[j] : t[j];
}

/* C[r][0..ncols) (+)= sum_k a[r][k] * b[k][0..16) for r < mr; accumulate when `acc`. */
AI void micro(int mr, int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols,
              int acc) {
    __m256 c0[MR], c1[MR];
    const float *ap[MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        c0[r] = c1[r] = _mm256_setzero_ps();
        ap[r] = a[r];
    }
    for (int64_t k = 0; k < kc; k++, b += NR) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m256 av = _mm256_broadcast_ss(ap[r] + k);
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) store_tile_row(cp[r], c0[r], c1[r], ncols, acc);
}

typedef void (*micro_fn)(int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols,
                         int acc);
#define MICRO_FN(R) \
    static void micro_##R(int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols, \
                          int acc) { micro(R, kc, a, b, cp, ncols, acc); }
MICRO_FN(1)
MICRO_FN(2)
MICRO_FN(3)
MICRO_FN(4)
MICRO_FN(5)
MICRO_FN(6)
static const micro_fn micros[MR + 1] = {NULL, micro_1, micro_2, micro_3, micro_4, micro_5, micro_6};

/* GEMM work units, claimed in order by whichever threads run (ce_parallel_dyn): NC-column panels
 * of the output, or with few columns (split_rows) GEMM_ROWS-row slices. Each output element is
 * still computed whole by one thread in a fixed order, so the bits do not depend on who ran. */
enum { GEMM_ROWS = 16 * MR };

static void gemm_unit(const mm_ctx *c, float *bp, float *tmp, int64_t n_lo, int64_t n_hi, int64_t m_lo, int64_t m_hi);

static void gemm_task(void *p, int ith, int nth) {
    (void)nth;
    const mm_ctx *c = p;
    float *bp = c->scratch + (int64_t)ith * c->scratch_floats; /* [NC * KC], 64-byte aligned */
    float *tmp = bp + NC * KC;                                  /* [NR * KC] dequantized rows */
    const int64_t units = c->split_rows ? (c->M + GEMM_ROWS - 1) / GEMM_ROWS : (c->N + NC - 1) / NC;
    for (int64_t u; (u = atomic_fetch_add(c->next_unit, 1)) < units;) {
        if (c->split_rows)
            gemm_unit(c, bp, tmp, 0, c->N, u * GEMM_ROWS, c->M < (u + 1) * GEMM_ROWS ? c->M : (u + 1) * GEMM_ROWS);
        else
            gemm_unit(c, bp, tmp, u * NC, c->N < (u + 1) * NC ? c->N : (u + 1) * NC, 0, c->M);
    }
}

static void gemm_unit(const mm_ctx *c, float *bp, float *tmp, int64_t n_lo, int64_t n_hi, int64_t m_lo, int64_t m_hi) {
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += NC) {
        int64_t nc = n_hi - n0 < NC ? n_hi - n0 : NC;
        for (int64_t k0 = 0; k0 < c->K; k0 += KC) {
            int64_t kc = c->K - k0 < KC ? c->K - k0 : KC;
            pack_panel(c, n0, nc, k0, kc, bp, tmp);
            for (int64_t m = m_lo; m < m_hi; m += MR) {
                int mr = m_hi - m < MR ? (int)(m_hi - m) : MR;
                const float *a[MR];
                for (int r = 0; r < mr; r++) a[r] = c->xr[m + r] + k0;
                for (int64_t g = 0; g * NR < nc; g++) {
                    float *cp[MR];
                    for (int r = 0; r < mr; r++) cp[r] = c->outr[m + r] + n0 + g * NR;
                    int ncols = nc - g * NR < NR ? (int)(nc - g * NR) : NR;
                    micros[mr](kc, a, bp + g * kc * NR, cp, ncols, k0 > 0);
                }
            }
        }
    }
    if (c->bias)
        for (int64_t m = m_lo; m < m_hi; m++)
            for (int64_t n = n_lo; n < n_hi; n++) c->outr[m][n] += c->bias[n];
}
#endif /* CE_HAVE_AVX2 */

/* ---- entry point: checks, then dispatch ---- */

/* [lo, hi): the bytes t spans; 0 when it is empty. */
static int byte_span(const ce_tensor *t, uintptr_t *lo, uintptr_t *hi) {
    int64_t a = 0, b = 0, rb = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] == 0) return 0;
    for (int i = 0; i < t->ndim - 1; i++) {
        int64_t s = (t->shape[i] - 1) * t->stride[i];
        if (s < 0) a += s; else b += s;
    }
    ce_row_bytes(t->dtype, ce_cols(t), &rb);
    *lo = (uintptr_t)t->data + a;
    *hi = (uintptr_t)t->data + b + rb;
    return 1;
}

static int overlaps(const ce_tensor *p, const ce_tensor *q) {
    uintptr_t a0, a1, b0, b1;
    if (!q || !byte_span(p, &a0, &a1) || !byte_span(q, &b0, &b1)) return 0;
    return a0 < b1 && b0 < a1;
}

/* the checks of one (out, x, w, bias); op names the call in messages */
static ce_status check_matmul(const char *op, const ce_tensor *out, const ce_tensor *x, const ce_tensor *w,
                              const ce_tensor *bias) {
    ce_status st;
    if ((st = ce_check(out, op, "out", CE_F32)) || (st = ce_check(x, op, "x", CE_F32)) || (st = ce_check(w, op, "w", -1)))
        return st;
    if (w->dtype == CE_I32)
        return ce_fail(CE_ERR_DTYPE, "%s: w must be F32, F16, BF16, Q8_0, Q4_0 or Q4_1, got I32", op);
    if (w->ndim != 2) return ce_fail(CE_ERR_SHAPE, "%s: w must be 2-D [N, K], got %d dims", op, w->ndim);
    int64_t N = w->shape[0], K = w->shape[1], M = ce_rows(x);
    if (ce_cols(x) != K)
        return ce_fail(CE_ERR_SHAPE, "%s: x has K = %lld columns but w is [N=%lld, K=%lld]", op,
                       (long long)ce_cols(x), (long long)N, (long long)K);
    if (ce_dtype_is_block(w->dtype) && K % CE_BLOCK)
        return ce_fail(CE_ERR_LAYOUT, "%s: %s weights need K to be a multiple of 32, got %lld", op,
                       ce_dtype_name(w->dtype), (long long)K);
    if (ce_cols(out) != N)
        return ce_fail(CE_ERR_SHAPE, "%s: out has %lld columns but w has N = %lld rows", op,
                       (long long)ce_cols(out), (long long)N);
    if (ce_rows(out) != M)
        return ce_fail(CE_ERR_SHAPE, "%s: out has %lld rows but x has %lld", op, (long long)ce_rows(out),
                       (long long)M);
    if (bias) {
        if ((st = ce_check(bias, op, "bias", CE_F32))) return st;
        if (ce_tensor_numel(bias) != N || ce_cols(bias) != N)
            return ce_fail(CE_ERR_SHAPE, "%s: bias must have shape [%lld], got %lld elements", op, (long long)N,
                           (long long)ce_tensor_numel(bias));
    }
    int64_t rb;
    ce_row_bytes(w->dtype, K, &rb);
    if (N > 1 && w->stride[0] < rb)
        return ce_fail(CE_ERR_LAYOUT, "%s: w rows must not overlap (row stride %lld < %lld bytes)", op,
                       (long long)w->stride[0], (long long)rb);
    if (overlaps(out, x) || overlaps(out, w) || overlaps(out, bias))
        return ce_fail(CE_ERR_ARG, "%s: out must not overlap x, w or bias", op);
    return CE_OK;
}

/* the kernels' view of out = x @ w^T + bias, its rows of x and out at xr and orow */
static mm_ctx mm_setup(const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias, const float *const *xr,
                       float *const *orow) {
    return (mm_ctx){.dtype = w->dtype, .w = w->data, .wstride = w->stride[0],
                    .bsize = ce_dtype_block_size(w->dtype), .bbytes = ce_dtype_block_bytes(w->dtype),
                    .M = ce_rows(x), .N = w->shape[0], .K = w->shape[1], .xr = xr, .outr = orow,
                    .bias = bias ? (const float *)bias->data : NULL};
}

static inline int small_work(int64_t M, int64_t N, int64_t K) { return (double)M * (double)N * (double)K < SMALL_WORK; }

/* out = x @ w^T + bias, arguments already checked (check_matmul) */
static ce_status matmul_checked(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias) {
    ce_status st = CE_OK;
    int64_t N = w->shape[0], K = w->shape[1], M = ce_rows(x);
    if (M == 0 || N == 0) return CE_OK;

    /* Row pointers of x and out: strided outer dims cost nothing in the kernels. */
    const float *xr_small[8];
    float *or_small[8];
    const float **xr = xr_small;
    float **orow = or_small;
    if (M > 8) {
        xr = malloc((size_t)M * sizeof *xr);
        orow = malloc((size_t)M * sizeof *orow);
        if (!xr || !orow) {
            free(xr);
            free(orow);
            return ce_fail(CE_ERR_NOMEM, "matmul: out of memory for %lld row pointers", (long long)M);
        }
    }
    for (int64_t m = 0; m < M; m++) {
        xr[m] = (const float *)ce_row_ptr(x, m);
        orow[m] = (float *)ce_row_ptr(out, m);
    }
    mm_ctx c = mm_setup(x, w, bias, xr, orow);
    if (K == 0) { /* an empty sum: out = bias (or 0) */
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) orow[m][n] = c.bias ? c.bias[n] : 0.0f;
        goto done;
    }
    int nth = ce_get_threads();
    if (small_work(M, N, K)) nth = 1;
#if CE_HAVE_AVX2
    if (ce_simd_on && M < GEMM_MIN_M) {
        st = gemv_run(&c, 1, nth);
        goto done;
    }
#endif
    ce_task_fn fn = scalar_task;
    c.scratch_floats = (K + 15) / 16 * 16;
    int dynamic = 0; /* GEMM hands out work through atomics (ce_parallel_dyn) */
#if CE_HAVE_AVX2
    _Atomic int64_t next_unit = 0;
    if (ce_simd_on) {
        fn = gemm_task;
        c.scratch_floats = NC * KC + NR * KC;
        c.split_rows = N < (int64_t)NR * 2 * nth && M >= (int64_t)MR * 2 * nth;
        c.next_unit = &next_unit;
        dynamic = 1;
    }
#endif
    c.scratch = aligned_alloc(64, (size_t)nth * (size_t)c.scratch_floats * sizeof(float));
    if (!c.scratch) {
        st = ce_fail(CE_ERR_NOMEM, "matmul: out of memory for %d work areas", nth);
        goto done;
    }
    if (dynamic)
        ce_parallel_dyn(fn, &c, nth);
    else
        ce_parallel_n(fn, &c, nth);
    free(c.scratch);
done:
    if (xr != xr_small) {
        free(xr);
        free(orow);
    }
    return st;
}

ce_status ce_matmul(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias) {
    ce_status st = check_matmul("matmul", out, x, w, bias);
    return st ? st : matmul_checked(out, x, w, bias);
}

ce_status ce_matmul_n(int n, ce_tensor *const *out, const ce_tensor *x, const ce_tensor *const *w,
                      const ce_tensor *const *bias) {
    if (n < 1 || n > CE_MATMUL_MAX)
        return ce_fail(CE_ERR_ARG, "matmul_n: need 1 to %d weights, got %d", CE_MATMUL_MAX, n);
    if (!out || !w) return ce_fail(CE_ERR_ARG, "matmul_n: out and w must not be NULL");
    for (int i = 0; i < n; i++) {
        ce_status st = check_matmul("matmul_n", out[i], x, w[i], bias ? bias[i] : NULL);
        if (st) { /* the same check again, for a message that names the weight (snprintf costs
                     ~0.15 us: not on the path of every call) */
            char op[32];
            snprintf(op, sizeof op, "matmul_n (weight %d)", i);
            return check_matmul(op, out[i], x, w[i], bias ? bias[i] : NULL);
        }
        /* the outputs are written at once: none may overlap another output or any input */
        for (int k = 0; k < n; k++) {
            if (k < i && overlaps(out[i], out[k]))
                return ce_fail(CE_ERR_ARG, "matmul_n: out %d overlaps out %d", i, k);
            if (overlaps(out[i], w[k]) || (bias && overlaps(out[i], bias[k])))
                return ce_fail(CE_ERR_ARG, "matmul_n: out %d overlaps the weight or bias of %d", i, k);
        }
    }
#if CE_HAVE_AVX2
    const int64_t M = ce_rows(x), K = ce_cols(x);
    int64_t N = 0;
    for (int i = 0; i < n; i++) N += w[i]->shape[0];
    if (ce_simd_on && M > 0 && M < GEMM_MIN_M && K > 0) {
        const float *xr[GEMM_MIN_M];
        float *orow[CE_MATMUL_MAX][GEMM_MIN_M];
        mm_ctx seg[CE_MATMUL_MAX];
        for (int64_t m = 0; m < M; m++) xr[m] = (const float *)ce_row_ptr(x, m);
        for (int i = 0; i < n; i++) {
            for (int64_t m = 0; m < M; m++) orow[i][m] = (float *)ce_row_ptr(out[i], m);
            seg[i] = mm_setup(x, w[i], bias ? bias[i] : NULL, xr, orow[i]);
        }
        return gemv_run(seg, n, small_work(M, N, K) ? 1 : ce_get_threads());
    }
#endif
    /* many rows of x (GEMM: compute bound, nothing to share), the scalar reference, or nothing to do */
    for (int i = 0; i < n; i++) {
        ce_status st = matmul_checked(out[i], x, w[i], bias ? bias[i] : NULL);
        if (st) return st;
    }
    return CE_OK;
}
