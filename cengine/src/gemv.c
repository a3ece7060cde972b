/* gemv.c - out = x @ w^T with the GEMV's arithmetic: the decode step (few rows of x) and, since
 * every row must get the same bits whatever M (batch invariance, matmul.c), prefill too.
 *
 * Decode is memory bound, so weights are read once, straight from their stored format. F32/F16/BF16 are
 * widened in registers and FMA'd against x; for Q8_0/Q4_0/Q4_1 a block's integers are converted
 * to F32, dotted with x (exact products), and the sum is scaled by d once per block (plus
 * m * sum(x) for Q4_1). Activations are never quantized: the result matches an F32 matmul on the
 * dequantized weights to a few ulps.
 * Threads share the output columns (weight rows): each thread's rows, taken a piece at a time and
 * stolen from when a thread falls behind (steal.c), in pieces whose bounds depend only on N. Each
 * output element is computed by one thread in an order that depends only on K, so results are
 * bit-identical for any thread count and for any tile shape (below).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "matmul.h"
#include "simd_load.h"

#if CE_HAVE_AVX2
enum {
    GEMV_ALIGN = 16, /* piece bounds of the thread split: a multiple of every tile's row count */
    GEMV_CHUNK = 32  /* the smallest piece an owner takes, in rows */
};
enum { SUCC_THREADS = 4 }; /* threads that prefetch their rows of the next GEMV (succ_link) */

/* A GEMV job: one x against one or more weights (ce_matmul_n). Their rows are numbered one after
 * the other, seg[s] computing rows [start[s], start[s + 1]), so the threads split and steal them
 * as the rows of one tall matrix: one pool job, one start-up, and no wait between the weights. */
typedef struct {
    mm_ctx *seg;               /* [nseg] one per weight, sharing x */
    int nseg;
    int q4;                    /* some weight is Q4_0/Q4_1: xq per thread, MXCSR */
    int q4n;                   /* Q4 unpacking with normal floats (q4_ints), for the whole call */
    int fx;                    /* and with its first products' addends in xq (q4n in the decode loop) */
    int zl;                    /* the 512-bit quant kernels run (Q4's xq in their layout), for the whole call */
    int loop;                  /* 0: the decode stream (M <= 2), 1: the blocked tiles (gemvs) */
    int var[CE_I32];           /* per weight dtype, the kernel variant (gemvs) */
    int64_t start[CE_MATMUL_MAX + 1];
    ce_steal_range *ranges;    /* [nranges] rows each thread has left */
    int nranges;               /* or 0 (ranges NULL): one thread runs all rows */
    const char *next[SUCC_THREADS]; /* per thread: where its rows of the expected next GEMV begin */
} gemv_job;

#define AI static inline __attribute__((always_inline))

/* Tile shapes for many rows of x (prefill, and decode of a batch: M > 2), chosen here by the
 * register file the compiler targets: P weight rows x R rows of x, each output with its own
 * accumulators, so the shape changes speed only, never bits. Block dtypes take R = 4 rows of x
 * (WIDE_PQ4 weight rows; WIDE_PQ for a pair of leftover rows), so each block's unpacking and d/m
 * conversion serve four rows instead of two: with 32 vector registers (AVX-512VL) 4x4 tiles, x
 * read from L1 by the FMAs, measured +15-25% at M = 8 on AMD Zen 4 (2x4 tiles: +0-10%; 8 rows of
 * x spill: 30-40% slower). F32/F16/BF16 keep pairs of x rows in ymm (2x2 tiles: 16 accumulators)
 * and take four in zmm (dot_tile_z: 2x4 tiles, two zmm accumulators per output), measured 1.06-1.18x
 * the 256-bit 2x2 tiles at M = 8 and 64 on Zen 4, where 2x2 zmm tiles were 0.85-0.95x. With AVX2's
 * 16 registers everything stays at pairs (WIDE_RQ = 2: 2x2 and 1x2 tiles), as four rows would spill. */
#if defined(__AVX512VL__)
#define GEMV_HAVE_Z 1 /* the 512-bit kernels, dot_tile_z and dot_tile_qz (run at ce_vec_bits == 512: gemvs) */
enum { WIDE_PQ = 4, WIDE_RQ = 4, WIDE_PQ4 = 4, WIDE_PF = 2 };
#define KEEP_IN_REG(v) __asm__("" : "+v"(v))
#else
#define GEMV_HAVE_Z 0
enum { WIDE_PQ = 2, WIDE_RQ = 2, WIDE_PQ4 = 2, WIDE_PF = 1 };
#define KEEP_IN_REG(v) __asm__("" : "+x"(v))
#endif

/* ---- GEMV: P weight rows x R rows of x, weights read in their stored format ---- */

/* dot_tile from the end of its 32-element blocks (k = 32 * (K / 32)): 8-element steps into each
 * output's first accumulator, the four summed pairwise, hsum8, then the last K % 8 products */
AI void dot_tile_tail(int dtype, int P, int R, const void *const *w, const float *const *x, int64_t K, int64_t k,
                      __m256 acc[][4], float *res) {
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

/* res[p * R + r] = w[p] . x[r]. Each output has its own four accumulators, so its value does not
 * depend on which tile shape computed it. */
AI void dot_tile(int dtype, int P, int R, const void *const *w, const float *const *x, int64_t K,
                 const char *pf, float *res) {
    const int64_t eb = dtype == CE_F32 ? 4 : 2; /* bytes per element */
    __m256 acc[4][4];
    for (int t = 0; t < P * R; t++)
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
    dot_tile_tail(dtype, P, R, w, x, K, k, acc, res);
}

#if GEMV_HAVE_Z
/* (lo | hi) */
AI __m512 zcat(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}

/* 16 elements of a non-block row from element k, as F32. Hot weights (the blocked prefill loop,
 * rows reused by four rows of x from L1/L2) take one 512-bit vcvtph2ps / vpmovzxwd; weights
 * streamed from DRAM (decode) two 256-bit conversions joined: on AMD Zen 4 the 512-bit widening
 * streamed F16/BF16 from DRAM at 0.54x the 256-bit kernel's speed, joined halves at 0.95-1.0x,
 * while in prefill the 512-bit form measured 1.17x (F16) and 1.29-1.32x (BF16) the 256-bit kernel
 * against 1.10x and 1.06-1.15x joined. llvm-mca's Skylake-AVX512 model agrees for hot weights
 * (BF16 prefill 0.38 against 0.63 cycles per 8 FMA lanes). */
AI __m512 ld16(int dtype, int hot, const void *row, int64_t k) {
    if (dtype == CE_F32) return _mm512_loadu_ps((const float *)row + k);
    if (!hot) return zcat(ld8(dtype, row, k), ld8(dtype, row, k + 8));
    const __m256i raw = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k));
    if (dtype == CE_F16) return _mm512_cvtph_ps(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

/* dot_tile in 512-bit registers, the same bits: an output's accumulators 0 and 1 (elements 0-15 of
 * each block) are one zmm, 2 and 3 the other, so each lane sees the same FMAs in the same order;
 * the halves go back to dot_tile's four ymm accumulators for the tail and the sums. */
AI void dot_tile_z(int dtype, int hot, int P, int R, const void *const *w, const float *const *x, int64_t K,
                   const char *pf, float *res) {
    const int64_t eb = dtype == CE_F32 ? 4 : 2;
    __m512 za[8][2];
    #pragma GCC unroll 8
    for (int t = 0; t < P * R; t++) za[t][0] = za[t][1] = _mm512_setzero_ps();
    int64_t nb = K / 32;
    for (int64_t b = 0; b < nb; b++) {
        for (int i = 0; i < P * eb / 2; i++) _mm_prefetch(pf + (b * P * eb / 2 + i) * 64, _MM_HINT_T0);
        for (int p = 0; p < P; p++) {
            const __m512 v0 = ld16(dtype, hot, w[p], 32 * b), v1 = ld16(dtype, hot, w[p], 32 * b + 16);
            for (int r = 0; r < R; r++) {
                za[p * R + r][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x[r] + 32 * b), za[p * R + r][0]);
                za[p * R + r][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(x[r] + 32 * b + 16), za[p * R + r][1]);
            }
        }
    }
    __m256 acc[8][4];
    for (int t = 0; t < P * R; t++)
        for (int i = 0; i < 2; i++) {
            acc[t][2 * i] = _mm512_castps512_ps256(za[t][i]);
            acc[t][2 * i + 1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(za[t][i]), 1));
        }
    dot_tile_tail(dtype, P, R, w, x, K, nb * 32, acc, res);
}
#endif

/* Block dtypes: per block, s = q . x in F32 (small-integer weights; two muls, two FMAs and an add
 * in a fixed tree), then acc = fma(d, s, acc). Q4_1 adds its m term and Q4_0 its -8 d one (m = -8 d,
 * with q the stored nibble 0..15: the same loop as Q4_1's, build_xq),
 * sum_b m_b S_b with S_b the sum of x over block b (precomputed per row of x), in the same loop,
 * for all P rows of a tile at once: their (d, m) pairs are inserted into one vector, converted by
 * one vcvtph2ps, and one FMA against S_b in the odd lanes accumulates m_p S_b in lane 2p + 1. Per
 * block and row that is about one uop, against three for a per-row broadcast and FMA (measured
 * ~5-10% slower) or a per-row copy of m to a buffer dotted later (10-30% slower when the weights
 * stream from DRAM, the case that matters: the stores queue behind the stream's loads).
 * One set of accumulators per output, in the same order whatever the tile shape, so an output's
 * value never depends on which tile (or thread) computed it. Error stays at a few F32 ulps of
 * sum |w x| (for Q4_1, of sum |d q x| + |m| sum |x|, as the m term is summed apart; for Q4_0, of
 * sum |d q x| + 8 |d| sum |x|). Each lane
 * of the m accumulator belongs to one row and sums its blocks in order, so it too is the same for
 * any P.
 * Q4 nibbles are never moved: q4_bits reads them in place as subnormal floats, q4_ints converts
 * them to normal ones (the path q4path.c picks; both give the same bits), so the x of Q4 rows is the permuted, power-of-two scaled copy xq built once per call
 * (per thread), and S and the result carry the same scaling.
 * The loop is bound by instruction throughput: a tile's P weight rows share the x loads (held in
 * registers), the P dependency chains are independent, and all rows are addressed from one moving
 * pointer. */

enum { PF_TILES = 2 }; /* block dtypes: prefetch the tile this many tiles ahead (measured: 2 > 1) */
enum { GEMV_RMAX = 4, GEMV_TILE_MAX = 16 }; /* rows of x, and outputs, of a tile at most */

/* 2^e for e in [-149, 127], exactly, from the bits */
static inline float pow2f(int e) {
    uint32_t b = e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149);
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* xq[32b .. 32b + 32) for q4_bits: vector k of block b is x[32b + k + 4l] (l = 0..7) times
 * 2^(E - sh), sh = 8k + 4(l / 4) (16 + 4(l / 4) for k = 3), and (sq[2b], sq[2b + 1]) =
 * (0, ms 2^(E - 149) * (sum of x over block b)), the pair the m term multiplies: ms = 1 for Q4_1
 * (w = d q + m) and -8 for Q4_0 (w = d q - 8 d, so m = -8 d: the -8 rides in the m term, and a
 * Q4_0 block costs what a Q4_1 block does; folding -8 x into each product's FMA instead took 4
 * more loads and 2 more adds per block and row: on Zen 4 the batch-invariant prefill rose from 43
 * to 66 GFLOP/s per thread with this form, decode stayed as fast). ms is a
 * power of two times -1, so S ms 2^(E - 149) is exact and fma(d, ms S, .) rounds as fma(ms d, S, .)
 * does (the scalar twin's form). E puts the largest |x| near 2^100, so the products q * x *
 * 2^(E - 149) are normal unless |x| is below ~2^-76 of the largest. Returns the factor 2^(149 - E)
 * that undoes the scaling (E stays in [22, 127], so both are finite floats).
 * For q4_ints (q4n: lanes q * 2^sh, 2^149 times q4_bits') x is scaled by 2^(E - Q4N_SHIFT - sh)
 * and the sums by 2^(E - Q4N_SHIFT): every product, sum and partial result is then the q4_bits
 * path's times 2^(149 - Q4N_SHIFT) exactly, all normal and far from overflow (|products| < 2^78),
 * so both paths give the same bits whenever the q4_bits path's products are normal, i.e. unless
 * some |x| is below ~2^-76 of the largest (there q4_ints is the more accurate one).
 * fx (q4_ints_fx, the normal path in the decode stream): vector 2 is scaled by 2^8 more (its lanes
 * come from the bytes shifted right by 8), and each block's 32 x are followed by its 16 addends
 * -2^23 xq of vectors 0 and 2, so a row is 48 floats per block. */
enum { Q4N_SHIFT = 26 };
static float build_xq(const float *x, int64_t K, float *xq, float *sq, float ms, int q4n, int fx, int zl) {
    const int64_t xb = fx ? 48 : 32; /* floats of xq per block: x, then q4_ints' addends */
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
    const int pe = q4n ? E - Q4N_SHIFT : E - 149; /* the products' scale is 2^pe */
    const float pE = pow2f(q4n ? pe : E), fs = ms * pow2f(pe);
    __m256 sv[4];
    for (int k = 0; k < 4; k++) {
        /* q4_ints takes vector 2 from the bytes shifted right by 8: its lanes are q * 2^(sh - 8) */
        float lo = pE * pow2f(k == 2 && fx ? -8 : k < 3 ? -8 * k : -16), hi = lo * 0x1p-4f;
        sv[k] = _mm256_setr_ps(lo, lo, lo, lo, hi, hi, hi, hi);
    }
    for (int64_t b = 0; b < K / 32; b++) {
        const float *p = x + 32 * b;
        __m256 a = _mm256_loadu_ps(p), bb = _mm256_loadu_ps(p + 8), cc = _mm256_loadu_ps(p + 16),
               d = _mm256_loadu_ps(p + 24);
        sq[2 * b] = 0.0f, sq[2 * b + 1] = hsum8(_mm256_add_ps(_mm256_add_ps(a, bb), _mm256_add_ps(cc, d))) * fs;
        /* rows (4 floats) r and r + 4 in the two halves, then a 4x4 transpose in each half */
        __m256 r0 = _mm256_permute2f128_ps(a, cc, 0x20), r1 = _mm256_permute2f128_ps(a, cc, 0x31);
        __m256 r2 = _mm256_permute2f128_ps(bb, d, 0x20), r3 = _mm256_permute2f128_ps(bb, d, 0x31);
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        __m256 v[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        /* zl (the 512-bit kernel): vectors in the order 0, 2, 1, 3, so that (0, 2) and (1, 3) are
         * one zmm each */
        static const int at[2][4] = {{0, 1, 2, 3}, {0, 2, 1, 3}};
        for (int k = 0; k < 4; k++) {
            const __m256 xs = _mm256_mul_ps(v[k], sv[k]);
            _mm256_storeu_ps(xq + xb * b + 8 * at[zl][k], xs);
            /* q4_ints' first products: fma(2^23 + n, xs, -2^23 xs) = n xs, rounded once; -2^23 xs
             * is exact (xs < 2^75 here, or amax 2^-4 when E is clamped at 22: finite for |x| <
             * 2^109, while the subnormal path's xq already overflows past 2^106) */
            if (fx && (k == 0 || k == 2)) _mm256_storeu_ps(xq + xb * b + 32 + 4 * k, _mm256_mul_ps(xs, _mm256_set1_ps(-0x1p23f)));
        }
    }
    return pow2f(-pe);
}

/* floats of sq per row of x: the (0, ms S) pair per block */
static inline int64_t sq_floats(int64_t K) { return 2 * (K / 32); }

/* floats of an xq row: 32 per block, 48 on the normal path (its first products' addends ride in
 * the same row, block by block: a pointer per row of x is all the 4x4 tiles have registers for;
 * a separate array's pointers spilled the accumulators, prefill 55 -> 41 GFLOP/s) */
static inline int64_t xq_floats_row(int64_t K, int fx) { return fx ? K / 2 * 3 : K; }

/* floats of xq, sq and the unscaling factor per row of x */
static inline int64_t xq_row_floats(int64_t K, int fx) { return xq_floats_row(K, fx) + sq_floats(K) + 1; }

/* xq of every row of x into buf ([M][xq_floats_row]), then their sq ([M][sq_floats]) and
 * unscaling factors ([M]); points c at them */
static void build_xqs(mm_ctx *c, float *buf, int q4n, int fx, int zl) {
    const int64_t ex = sq_floats(c->K), xr = xq_floats_row(c->K, fx);
    float *sq = buf + c->M * xr, *us = sq + c->M * ex;
    for (int64_t m = 0; m < c->M; m++)
        us[m] = build_xq(c->xr[m], c->K, buf + m * xr, sq + m * ex, c->dtype == CE_Q4_0 ? -8.0f : 1.0f, q4n, fx, zl);
    c->xq = buf;
    c->sq = sq;
    c->xq_unscale = us;
}

/* floats of xq and sq that the weights seg[0..n) need: one copy per Q4 dtype among them */
static int64_t xq_floats(const mm_ctx *seg, int n, int fx) {
    int64_t f = 0;
    for (int s = 0, seen = 0; s < n; s++)
        if (mm_is_q4(seg[s].dtype) && !(seen & 1 << seg[s].dtype)) {
            seen |= 1 << seg[s].dtype;
            f += seg[s].M * xq_row_floats(seg[s].K, fx);
        }
    return f;
}

/* xq for every Q4 weight of seg[0..n) that has none, into buf (xq_floats of them): weights of
 * one dtype share a copy */
static void build_seg_xqs(mm_ctx *seg, int n, float *buf, int q4n, int fx, int zl) {
    for (int s = 0; s < n; s++) {
        if (!mm_is_q4(seg[s].dtype) || seg[s].xq) continue;
        build_xqs(&seg[s], buf, q4n, fx, zl);
        buf += seg[s].M * xq_row_floats(seg[s].K, fx);
        for (int t = s + 1; t < n; t++)
            if (seg[t].dtype == seg[s].dtype)
                seg[t].xq = seg[s].xq, seg[t].sq = seg[s].sq, seg[t].xq_unscale = seg[s].xq_unscale;
    }
}

/* 4 bytes at any alignment (a block's (d, m) pair) */
static inline int ld_i32(const void *p) {
    int v;
    memcpy(&v, p, 4);
    return v;
}

/* The first product of each pair in a block's tree: for Q4 an FMA with a zero addend, not a
 * multiply. Both round q x once (the FMA gives +0 for a -0 product, as the scalar twin does; no
 * output can tell, since every accumulator starts at +0), but AMD Zen 4 takes q4_bits' subnormal
 * lanes at full speed in FMAs only: with vmulps a Q4 GEMV of 1536x576 weights in L2 (1 thread)
 * ran at 10-14.5 GB/s, varying from process to process, and at 15.1 (Q4_0) and 17.1 (Q4_1) with
 * the FMA; the normal-float path measured the same either way. Q8_0 (normal lanes) keeps the mul. */
AI __m256 q_mul(int dtype, __m256 v, __m256 x, __m256 c) {
    return dtype == CE_Q8_0 ? _mm256_mul_ps(v, x) : _mm256_fmadd_ps(v, x, c);
}

/* the m terms' factors of a tile's P weight rows at block blk, converted by one vcvtph2ps: lanes
 * (2p, 2p + 1) = (d, m) of row p for Q4_1, (0, d) for Q4_0, whose m = -8 d takes its -8 from sq
 * (build_xq); the even lanes meet sq's zeros */
AI __m256 dm_pairs(int dtype, int P, const char *blk, int64_t ws) {
    __m128i dm = _mm_cvtsi32_si128(ld_i32(blk));
    if (P > 1) dm = _mm_insert_epi32(dm, ld_i32(blk + ws), 1);
    if (P > 2) dm = _mm_insert_epi32(dm, ld_i32(blk + 2 * ws), 2);
    if (P > 3) dm = _mm_insert_epi32(dm, ld_i32(blk + 3 * ws), 3);
    /* Q4_0: (d, first two nibble bytes) -> (0, d), one shift for all P rows (ANDing the d lanes
     * instead would leave the nibbles, which may read as infinities, to meet sq's zeros) */
    if (dtype == CE_Q4_0) dm = _mm_slli_epi32(dm, 16);
    return _mm256_cvtph_ps(dm);
}

/* The m terms of a tile at block b: lane 2p + 1 of macc[r] gains m_p S_b of weight row p and row
 * r of x (sq's pair (0, ms S_b), through a may-alias vector load). Q8_0 has none. */
AI void m_terms(int dtype, int P, int R, const char *blk, int64_t ws, const float *const *sq, int64_t b,
                __m256 *macc) {
    if (dtype == CE_Q8_0) return;
    const __m256 dmf = dm_pairs(dtype, P, blk, ws);
    for (int r = 0; r < R; r++)
        macc[r] = _mm256_fmadd_ps(dmf, _mm256_castsi256_ps(_mm256_broadcastq_epi64(
                                           _mm_loadl_epi64((const __m128i *)(sq[r] + 2 * b)))), macc[r]);
}

/* res[p * R + r] from a block tile's accumulators: each output's lanes summed, plus its m term,
 * times its row's unscaling factor (Q4) */
AI void tile_results(int dtype, int P, int R, const __m256 *acc, const __m256 *macc, const float *us, float *res) {
    float ml[GEMV_RMAX][8];
    for (int r = 0; r < R; r++) _mm256_storeu_ps(ml[r], macc[r]);
    #pragma GCC unroll 16
    for (int t = 0; t < P * R; t++) {
        res[t] = hsum8(acc[t]);
        if (dtype != CE_Q8_0) res[t] = (res[t] + ml[t % R][2 * (t / R) + 1]) * us[t % R];
    }
}

/* res[p * R + r] = w[p] . x[r] for the P weight rows of a tile starting at w0 (row stride ws) and
 * R rows of x (Q4: xq rows, with their block sums sq and unscaling factors us; for q4n each
 * block's 32 x are followed by the 16 addends of its first products). */
AI void dot_tile_q(int dtype, int q4n, int fx, int P, int R, const char *w0, int64_t ws, const float *const *x,
                   const float *const *sq, const float *us, int64_t nb, const char *pf, float *res) {
    const int64_t xb = fx ? 48 : 32;
    const int64_t bb = dtype == CE_Q8_0 ? 34 : dtype == CE_Q4_0 ? 18 : 20;
    const int npf = (int)((P * bb + 63) / 64);
    __m256 acc[GEMV_TILE_MAX], macc[GEMV_RMAX];
    /* unrolled fully: otherwise gcc stores the accumulators to the stack every block (acc[] indexed
     * by a loop it left rolled), measured ~3% at M = 8 */
    #pragma GCC unroll 16
    for (int t = 0; t < P * R; t++) acc[t] = _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps();
    for (int r = 0; r < R; r++) macc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const char *blk = w0 + b * bb;
        /* Odd-sized blocks defeat the hardware prefetcher: stream the rows of a tile ahead (adjacent
         * in memory) at P times this tile's pace, so they are in cache when that tile starts. */
        for (int i = 0; i < npf; i++) _mm_prefetch(pf + b * bb * P + 64 * i, _MM_HINT_T0);
        __m256 xv[GEMV_RMAX][4], cv[GEMV_RMAX][2];
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 4; i++) {
                xv[r][i] = _mm256_loadu_ps(x[r] + xb * b + 8 * i);
                /* keep x in registers: gcc would rather reload it for every row (more rows of x
                 * than fit are left to the compiler, which folds the loads into the FMAs) */
                if (R <= 2) KEEP_IN_REG(xv[r][i]);
            }
            /* the first products' addends: 0, or q4_ints' -2^23 x (fx, build_xq) */
            for (int i = 0; i < 2; i++) {
                cv[r][i] = fx ? _mm256_loadu_ps(x[r] + xb * b + 32 + 8 * i) : zero;
                if (fx && R <= 2) KEEP_IN_REG(cv[r][i]);
            }
        }
        m_terms(dtype, P, R, blk, ws, sq, b, macc);
        for (int p = 0; p < P; p++) {
            __m256 v[4], d;
            ld32_ints(dtype, fx ? 2 : q4n, blk + p * ws, 0, v, &d);
            for (int r = 0; r < R; r++) {
                const __m256 s = _mm256_add_ps(_mm256_fmadd_ps(v[1], xv[r][1], q_mul(dtype, v[0], xv[r][0], cv[r][0])),
                                               _mm256_fmadd_ps(v[3], xv[r][3], q_mul(dtype, v[2], xv[r][2], cv[r][1])));
                acc[p * R + r] = _mm256_fmadd_ps(d, s, acc[p * R + r]);
            }
        }
    }
    tile_results(dtype, P, R, acc, macc, us, res);
}

#if GEMV_HAVE_Z
/* dot_tile_q in 512-bit registers, the same bits: vectors 0 and 2 of a block (and 1 and 3) share a
 * zmm, weights and x alike, so s = fma(v1, x1, v0 x0) + fma(v3, x3, v2 x2) is one
 * zmm mul, one zmm FMA and the sum of its two halves. For Q4 the unpacking takes one broadcast, two
 * ANDs and one variable shift instead of a broadcast, four ANDs and a shift (x is xq in build_xq's
 * zl order); Q8_0 reads its bytes and x in element order, so both take a lane shuffle per pair. */
AI void dot_tile_qz(int dtype, int q4n, int fx, int P, int R, const char *w0, int64_t ws, const float *const *x,
                    const float *const *sq, const float *us, int64_t nb, const char *pf, float *res) {
    const int64_t xb = fx ? 48 : 32;
    const int64_t bb = dtype == CE_Q8_0 ? 34 : dtype == CE_Q4_0 ? 18 : 20, qoff = dtype == CE_Q4_1 ? 4 : 2;
    const int npf = (int)((P * bb + 63) / 64);
    const __m512i m02 = _mm512_setr_epi32(0xF, 0xF, 0xF, 0xF, 0xF0, 0xF0, 0xF0, 0xF0, 0xF << 16, 0xF << 16, 0xF << 16,
                                          0xF << 16, 0xF << 20, 0xF << 20, 0xF << 20, 0xF << 20);
    const __m512i m13 = _mm512_setr_epi32(0xF << 8, 0xF << 8, 0xF << 8, 0xF << 8, 0xF << 12, 0xF << 12, 0xF << 12,
                                          0xF << 12, 0xF << 16, 0xF << 16, 0xF << 16, 0xF << 16, 0xF << 20, 0xF << 20,
                                          0xF << 20, 0xF << 20);
    const __m512i sh13 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8);
    /* q4_ints' vectors 0 and 2 (simd_load.h): vector 2 from the bytes shifted right by 8, so both
     * come from the shifted bytes of z13, masked and ORed into 2^23 by one vpternlogd */
    const __m512i m02n = _mm512_setr_epi32(0xF, 0xF, 0xF, 0xF, 0xF0, 0xF0, 0xF0, 0xF0, 0xF << 8, 0xF << 8, 0xF << 8,
                                           0xF << 8, 0xF << 12, 0xF << 12, 0xF << 12, 0xF << 12);
    const __m512i one = _mm512_set1_epi32(Q4N_MAGIC);
    const __m512 zero = _mm512_setzero_ps();
    __m256 acc[GEMV_TILE_MAX], macc[GEMV_RMAX];
    #pragma GCC unroll 16
    for (int t = 0; t < P * R; t++) acc[t] = _mm256_setzero_ps();
    for (int r = 0; r < R; r++) macc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const char *blk = w0 + b * bb;
        for (int i = 0; i < npf; i++) _mm_prefetch(pf + b * bb * P + 64 * i, _MM_HINT_T0);
        __m512 xv[GEMV_RMAX][2], cv[GEMV_RMAX];
        for (int r = 0; r < R; r++) {
            for (int i = 0; i < 2; i++) xv[r][i] = _mm512_loadu_ps(x[r] + xb * b + 16 * i);
            cv[r] = fx ? _mm512_loadu_ps(x[r] + xb * b + 32) : zero; /* q4_ints' addends (dot_tile_q) */
            if (fx && R <= 2) KEEP_IN_REG(cv[r]);
            if (dtype == CE_Q8_0) { /* (x0 | x1), (x2 | x3) -> (x0 | x2), (x1 | x3) */
                const __m512 lo = xv[r][0];
                xv[r][0] = _mm512_shuffle_f32x4(lo, xv[r][1], 0x44);
                xv[r][1] = _mm512_shuffle_f32x4(lo, xv[r][1], 0xEE);
            }
            for (int i = 0; i < 2; i++)
                if (R <= 2) KEEP_IN_REG(xv[r][i]);
        }
        m_terms(dtype, P, R, blk, ws, sq, b, macc);
        for (int p = 0; p < P; p++) {
            const char *bp = blk + p * ws;
            const __m256 d = bcast_f16((const uint16_t *)bp);
            __m512 z02, z13;
            if (dtype == CE_Q8_0) {
                /* bytes (0-7 | 16-23) and (8-15 | 24-31), widened from registers (512-bit
                 * widenings from memory streamed slowly on Zen 4, as in ld16) */
                const __m128i q01 = _mm_loadu_si128((const __m128i *)(bp + qoff));
                const __m128i q23 = _mm_loadu_si128((const __m128i *)(bp + qoff + 16));
                z02 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi64(q01, q23)));
                z13 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpackhi_epi64(q01, q23)));
            } else {
                const __m512i bq = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(bp + qoff)));
                const __m512i b8 = _mm512_srlv_epi32(bq, sh13);
                if (fx) { /* z13 first: the vpternlogd then overwrites b8, its last use, with no copy */
                    z13 = _mm512_cvtepi32_ps(_mm512_and_si512(b8, m13));
                    z02 = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(b8, m02n, one, 0xEA)); /* (b8 & m) | one */
                } else {
                    z02 = _mm512_castsi512_ps(_mm512_and_si512(bq, m02));
                    z13 = _mm512_castsi512_ps(_mm512_and_si512(b8, m13));
                    if (q4n) {
                        z02 = _mm512_cvtepi32_ps(_mm512_castps_si512(z02));
                        z13 = _mm512_cvtepi32_ps(_mm512_castps_si512(z13));
                    }
                }
            }
            for (int r = 0; r < R; r++) {
                const __m512 t = _mm512_fmadd_ps(z13, xv[r][1], dtype == CE_Q8_0 ? _mm512_mul_ps(z02, xv[r][0])
                                                                                  : _mm512_fmadd_ps(z02, xv[r][0], cv[r]));
                __m256 s = _mm256_add_ps(_mm512_castps512_ps256(t),
                                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1)));
                acc[p * R + r] = _mm256_fmadd_ps(d, s, acc[p * R + r]);
            }
        }
    }
    tile_results(dtype, P, R, acc, macc, us, res);
}
#endif

enum { GEMV_MAX_THREADS = 64 }; /* more would only queue on the memory bus (results do not change) */
enum { GEMV_P = 4 }; /* weight rows per tile of block dtypes when x has one row left */
enum { XQ_LOCAL = 8192 }; /* floats: Q4 GEMVs whose xq fits build it per thread (K up to ~7900 at M = 1;
                              ~5300 on the normal path, whose xq rows are 3K / 2) */

/* res[p * R + r] = w[n + p] . x[m + r] for P weight rows and R rows of x; the thread's rows end
 * at hi. hot: the weights are reused from cache (the blocked loop), not streamed (decode). */
AI void gemv_tile(int dtype, int var, int hot, int P, int R, const mm_ctx *c, int64_t n, int64_t hi, int64_t m,
                  float *res) {
    const char *w0 = mm_w_at(c, n, 0);
    /* The kernels prefetch the tile PF_TILES (block dtypes; 1 otherwise) ahead of this one. Past
     * the thread's rows that would fetch another thread's rows (or the next tensor) from DRAM for
     * nothing, so there they prefetch from x instead, which is in L1 already (the F32/F16/BF16 walk
     * runs a little past it: harmless, prefetches never fault). */
    const int ahead = mm_is_block(dtype) ? PF_TILES : 1;
    const char *pf = n + (ahead + 1) * P <= hi ? w0 + ahead * P * c->wstride : (const char *)c->xr[m];
    if (mm_is_block(dtype)) {
        const float *x[GEMV_RMAX], *sq[GEMV_RMAX];
        /* the normal path's first products take addends from xq in the decode stream only: in
         * the 4x4 tiles of the blocked loop their loads (2 per row of x and weight row) would be
         * the bottleneck (prefill measured 55 -> 41 GFLOP/s), and the conversions they save are not */
        const int fx = (var & 1) && !hot;
        const int64_t ex = sq_floats(c->K), xr = xq_floats_row(c->K, fx);
        for (int r = 0; r < R; r++) {
            x[r] = dtype == CE_Q8_0 ? c->xr[m + r] : c->xq + (m + r) * xr;
            sq[r] = dtype == CE_Q8_0 ? NULL : c->sq + (m + r) * ex;
        }
#if GEMV_HAVE_Z
        if (var & 2)
            dot_tile_qz(dtype, (var & 1) && !fx, fx, P, R, w0, c->wstride, x, sq, c->xq_unscale + m, c->K / 32, pf, res);
        else
#endif
            dot_tile_q(dtype, (var & 1) && !fx, fx, P, R, w0, c->wstride, x, sq, c->xq_unscale + m, c->K / 32, pf, res);
    } else {
        const void *w[4];
        for (int p = 0; p < 4; p++) w[p] = w0 + (p < P ? p : 0) * c->wstride;
#if GEMV_HAVE_Z
        if (var & 2)
            dot_tile_z(dtype, hot, P, R, w, c->xr + m, c->K, pf, res);
        else
#endif
            dot_tile(dtype, P, R, w, c->xr + m, c->K, pf, res);
    }
}

/* Outputs [lo, hi) of rows m .. m + R - 1 of x: R >= 2 rows of x share each weight row; a single
 * x row takes weight rows in tiles. */
AI void gemv_rows(int dtype, int var, int R, int wide, const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi, int64_t m) {
    float res[GEMV_TILE_MAX];
    int64_t n = lo;
    if (R >= 2) {
        /* prefill: wider tiles share the x loads between weight rows */
        const int wp = !wide ? 1 : !mm_is_block(dtype) ? WIDE_PF : R > 2 ? WIDE_PQ4 : WIDE_PQ;
        if (wp > 1)
            for (; n + wp <= hi; n += wp) {
                gemv_tile(dtype, var, wide, wp, R, c, n, pfhi, m, res);
                for (int p = 0; p < wp; p++)
                    for (int r = 0; r < R; r++) c->outr[m + r][n + p] = mm_add_bias(c, res[p * R + r], n + p);
            }
        for (; n < hi; n++) {
            gemv_tile(dtype, var, wide, 1, R, c, n, pfhi, m, res);
            for (int r = 0; r < R; r++) c->outr[m + r][n] = mm_add_bias(c, res[r], n);
        }
        return;
    }
    if (mm_is_block(dtype))
        for (; n + GEMV_P <= hi; n += GEMV_P) {
            gemv_tile(dtype, var, wide, GEMV_P, 1, c, n, pfhi, m, res);
            for (int p = 0; p < GEMV_P; p++) c->outr[m][n + p] = mm_add_bias(c, res[p], n + p);
        }
    for (; n + 2 <= hi; n += 2) {
        gemv_tile(dtype, var, wide, 2, 1, c, n, pfhi, m, res);
        c->outr[m][n] = mm_add_bias(c, res[0], n);
        c->outr[m][n + 1] = mm_add_bias(c, res[1], n + 1);
    }
    if (n < hi) {
        gemv_tile(dtype, var, wide, 1, 1, c, n, pfhi, m, res);
        c->outr[m][n] = mm_add_bias(c, res[0], n);
    }
}

/* Many rows of x (prefill, a batch's decode step): blocks of GEMV_MB_BYTES of x, and within a
 * block stretches of GEMV_NB weight rows that every group of four (block dtypes; else two) of its
 * x rows runs over while they are in L1/L2, so the weights are read from memory once per block of
 * x and unpacked once per group of x rows. The loop order changes nothing in any output's
 * arithmetic. */
enum { GEMV_NB = 32, GEMV_MB_BYTES = 256 << 10 };

AI void gemv_decode(int dtype, int var, const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi) {
    for (int64_t m = 0; m < c->M; m += 2) gemv_rows(dtype, var, c->M - m >= 2 ? 2 : 1, 0, c, lo, hi, pfhi, m);
}

AI void gemv_blocked(int dtype, int var, const mm_ctx *c, int64_t lo, int64_t hi) {
    int64_t mb = GEMV_MB_BYTES / (4 * c->K) / 2 * 2;
    if (mb < 2) mb = 2;
    for (int64_t m0 = 0; m0 < c->M; m0 += mb) {
        int64_t m1 = c->M - m0 < mb ? c->M : m0 + mb;
        for (int64_t n0 = lo; n0 < hi; n0 += GEMV_NB) {
            int64_t n1 = hi - n0 < GEMV_NB ? hi : n0 + GEMV_NB;
            int64_t m = m0;
            /* WIDE_RQ rows of x per tile for block dtypes (each block unpacked once for all) and
             * for any dtype in zmm (var & 2) */
            if (WIDE_RQ > 2 && (mm_is_block(dtype) || (var & 2))) {
                for (; m + WIDE_RQ <= m1; m += WIDE_RQ) gemv_rows(dtype, var, WIDE_RQ, 1, c, n0, n1, n1, m);
                if (m1 - m == 3) { /* three left (M = 3, 7, ...: a batch as its sequences finish) */
                    gemv_rows(dtype, var, 3, 1, c, n0, n1, n1, m);
                    m += 3;
                }
            }
            for (; m < m1; m += 2) gemv_rows(dtype, var, m1 - m >= 2 ? 2 : 1, 1, c, n0, n1, n1, m);
        }
    }
}

typedef void (*gemv_fn)(const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi);
/* var (the variant) in the kernels below: bit 0, Q4 lanes as normal floats (q4_ints) instead of subnormal ones
 * (q4_bits); bit 1, 512-bit registers (dot_tile_z, dot_tile_qz).
 * Decode (M <= 2: one stream over the weights) and the blocked loop of more rows are separate
 * functions: compiled as one, the wide tiles' loops left gcc short of general registers in the
 * decode loop (row pointers kept in xmm registers: M = 1 measured 1.6x slower). */
#define GEMV_FN(T, DT, VAR) \
    __attribute__((noinline)) static void gemv_dec_##T(const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi) { \
        gemv_decode(DT, VAR, c, lo, hi, pfhi); \
    } \
    __attribute__((noinline)) static void gemv_blk_##T(const mm_ctx *c, int64_t lo, int64_t hi, int64_t pfhi) { \
        (void)pfhi; /* the blocked loop reuses its rows from cache: it prefetches within them */ \
        gemv_blocked(DT, VAR, c, lo, hi); \
    }
GEMV_FN(f32, CE_F32, 0)
GEMV_FN(f16, CE_F16, 0)
GEMV_FN(bf16, CE_BF16, 0)
GEMV_FN(q8_0, CE_Q8_0, 0)
GEMV_FN(q4_0_sub, CE_Q4_0, 0)
GEMV_FN(q4_1_sub, CE_Q4_1, 0)
GEMV_FN(q4_0_norm, CE_Q4_0, 1)
GEMV_FN(q4_1_norm, CE_Q4_1, 1)
#if GEMV_HAVE_Z
GEMV_FN(f32_z, CE_F32, 2)
GEMV_FN(f16_z, CE_F16, 2)
GEMV_FN(bf16_z, CE_BF16, 2)
GEMV_FN(q8_0_z, CE_Q8_0, 2)
GEMV_FN(q4_0_sub_z, CE_Q4_0, 2)
GEMV_FN(q4_1_sub_z, CE_Q4_1, 2)
GEMV_FN(q4_0_norm_z, CE_Q4_0, 3)
GEMV_FN(q4_1_norm_z, CE_Q4_1, 3)
#define GEMV_Z(L, T) gemv_##L##_##T##_z
#else /* never selected: gemv_job.var has no width bit without the 512-bit kernels */
#define GEMV_Z(L, T) gemv_##L##_##T
#endif
#define GEMV_ROW(L, Q) gemv_##L##_f32, gemv_##L##_f16, gemv_##L##_bf16, gemv_##L##_q8_0, gemv_##L##_q4_0_##Q, gemv_##L##_q4_1_##Q
#define GEMV_ROW_Z(L, Q) GEMV_Z(L, f32), GEMV_Z(L, f16), GEMV_Z(L, bf16), GEMV_Z(L, q8_0), GEMV_Z(L, q4_0_##Q), GEMV_Z(L, q4_1_##Q)

/* The one place that picks a GEMV kernel: gemvs[loop][variant][dtype], loop 0 the decode stream
 * (M <= 2), 1 the blocked tiles (M > 2); the variant's Q4 bit is the Q4 path (ce_q4_normal,
 * q4path.c), its width bit the width of the kernel family gemv_family[loop][dtype] (ce_vec_bits,
 * vecwidth.c's table: the float tiles take 512 where the others follow the probe). */
static const gemv_fn gemvs[2][4][CE_I32] = {
    {{GEMV_ROW(dec, sub)}, {GEMV_ROW(dec, norm)}, {GEMV_ROW_Z(dec, sub)}, {GEMV_ROW_Z(dec, norm)}},
    {{GEMV_ROW(blk, sub)}, {GEMV_ROW(blk, norm)}, {GEMV_ROW_Z(blk, sub)}, {GEMV_ROW_Z(blk, norm)}},
};
#define GEMV_QUANT_FAMILIES CE_VK_GEMV_QUANT, CE_VK_GEMV_QUANT, CE_VK_GEMV_QUANT
static const int gemv_family[2][CE_I32] = {
    {CE_VK_GEMV_FLOAT_DECODE, CE_VK_GEMV_FLOAT_DECODE, CE_VK_GEMV_FLOAT_DECODE, GEMV_QUANT_FAMILIES},
    {CE_VK_GEMV_FLOAT_TILES, CE_VK_GEMV_FLOAT_TILES, CE_VK_GEMV_FLOAT_TILES, GEMV_QUANT_FAMILIES},
};

/* Block dtypes: the first tiles of a stretch of rows [lo, hi), before the kernels' own prefetch
 * distance: nothing else fetches them early. */
static void prefetch_start(const mm_ctx *c, int64_t lo, int64_t hi) {
    if (!mm_is_block(c->dtype)) return;
    const char *a = mm_w_at(c, lo, 0), *e = mm_w_at(c, hi < lo + PF_TILES * GEMV_P ? hi : lo + PF_TILES * GEMV_P, 0);
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
        const int dt = j->seg[s].dtype;
        gemvs[j->loop][j->var[dt]][dt](&j->seg[s], lo - a, e - a, (pfhi < b ? pfhi : b) - a);
        lo = e;
    }
}

/* ce_steal_run's callback: job rows [lo, hi) */
static void steal_piece(void *p, int64_t lo, int64_t hi, int64_t ahead, int first) {
    const gemv_job *j = p;
    if (first) prefetch_rows(j, lo, ahead);
    run_rows(j, lo, hi, ahead);
}

static void gemv_chunks(const gemv_job *j, int ith) {
    if (!j->ranges) { /* one thread */
        prefetch_rows(j, 0, j->start[j->nseg]);
        run_rows(j, 0, j->start[j->nseg], j->start[j->nseg]);
        return;
    }
    ce_steal_run(j->ranges, j->nranges, ith, GEMV_ALIGN, GEMV_CHUNK, steal_piece, (void *)j);
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
                a = (uintptr_t)mm_w_at(&j->seg[s], first[i] - j->start[s], 0);
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
    if (j->q4 && xq_floats(j->seg, j->nseg, j->fx) <= XQ_LOCAL) {
        /* Each thread builds its own xq, on its stack: no allocation, and the worker reads x
         * once instead of pulling every line of a shared copy from the caller's cache. Measured
         * 5-12% faster per decode-sized call with 2 threads (the most on the smallest). */
        _Alignas(64) float buf[XQ_LOCAL];
        mm_ctx seg[CE_MATMUL_MAX];
        memcpy(seg, j->seg, (size_t)j->nseg * sizeof *seg);
        build_seg_xqs(seg, j->nseg, buf, j->q4n, j->fx, j->zl);
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
ce_status mm_gemv_run(mm_ctx *seg, int n, int nth) {
    gemv_job j = {.seg = seg, .nseg = n, .q4n = ce_q4_normal, .loop = seg[0].M > 2};
    j.fx = j.q4n && !j.loop; /* as gemv_tile decides per tile */
    for (int dt = 0; dt < CE_I32; dt++) {
        const int z = GEMV_HAVE_Z && ce_vec_bits[gemv_family[j.loop][dt]] == 512;
        j.var[dt] = (mm_is_q4(dt) ? j.q4n : 0) | z << 1;
    }
    j.zl = j.var[CE_Q4_0] >> 1;
    for (int s = 0; s < n; s++) {
        j.start[s + 1] = j.start[s] + seg[s].N;
        j.q4 |= mm_is_q4(seg[s].dtype);
    }
    const int64_t N = j.start[n];
    /* xq and sq, x as q4_bits reads it: built here, once, only when too big for gemv_task's
     * per-thread stack copy */
    float *xq = NULL;
    if (xq_floats(seg, n, j.fx) > XQ_LOCAL) {
        xq = aligned_alloc(64, (size_t)((xq_floats(seg, n, j.fx) * 4 + 63) / 64 * 64));
        if (!xq) return ce_fail(CE_ERR_NOMEM, "matmul: out of memory");
        build_seg_xqs(seg, n, xq, j.q4n, j.fx, j.zl);
    }
    ce_steal_range ranges[GEMV_MAX_THREADS];
    if (nth > GEMV_MAX_THREADS) nth = GEMV_MAX_THREADS;
    if (N > UINT32_MAX) nth = 1; /* the ranges pack rows in 32 bits */
    int64_t first[SUCC_THREADS]; /* the job row each thread starts at, or -1 */
    for (int i = 0; i < SUCC_THREADS; i++) first[i] = i == 0 && N > 0 ? 0 : -1;
    for (int i = 0; nth > 1 && i < nth; i++) {
        int64_t lo, hi;
        ce_split(N, i, nth, GEMV_ALIGN, &lo, &hi);
        ce_steal_init(&ranges[i], lo, hi);
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
#endif /* CE_HAVE_AVX2 */
