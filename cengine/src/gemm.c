/* gemm.c - out = x @ w^T for many rows of x (M >= GEMM_MIN_M: prefill).
 *
 * Each thread dequantizes a panel of GEMM_NC weight rows x GEMM_KC columns into F32, transposed
 * into 16-column groups, and a 6x16 register-tiled FMA microkernel runs every 6-row slice of x over
 * it, so the dequantization is paid once per panel, not once per row. With 512-bit registers
 * (ce_vec_bits[CE_VK_GEMM] == 512) a 6x32 microkernel takes two groups at once, the same bits. Work units
 * (panels, or row slices when there are few columns) are claimed in order by whichever threads run
 * (ce_parallel_dyn); each output element is computed whole by one thread in an order that depends
 * only on M, N, K, so results are bit-identical for any thread count.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include "matmul.h"

#if CE_HAVE_AVX2
enum {
    GEMM_MR = 6,   /* microkernel rows of x */
    GEMM_NR = 16,  /* microkernel columns (two ymm accumulators per row) */
    GEMM_KC = 256, /* depth block: a 16-column group of the panel is 16 KiB, L1 sized */
    GEMM_NC = 96   /* panel columns per thread step: GEMM_NC x GEMM_KC floats = 96 KiB, L2 sized */
};

#define AI static inline __attribute__((always_inline))

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

static const float zero_row[GEMM_KC];

/* Panel columns [n0, n0 + nc) x depth [k0, k0 + kc) as F32 groups of 16 columns:
 * bp[g * kc * 16 + k * 16 + j] = w[n0 + 16g + j][k0 + k], zero past the last column. */
static void pack_panel(const mm_ctx *c, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float *bp,
                       float *tmp) {
    for (int64_t g = 0; g * GEMM_NR < nc; g++, bp += kc * GEMM_NR) {
        const float *src[GEMM_NR];
        for (int j = 0; j < GEMM_NR; j++) {
            int64_t n = n0 + g * GEMM_NR + j;
            if (g * GEMM_NR + j >= nc) {
                src[j] = zero_row;
            } else if (c->dtype == CE_F32) {
                src[j] = (const float *)mm_w_at(c, n, k0);
            } else {
                ce_dequantize_row(c->dtype, mm_w_at(c, n, k0), tmp + j * GEMM_KC, kc);
                src[j] = tmp + j * GEMM_KC;
            }
        }
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8)
            for (int h = 0; h < 2; h++) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src[8 * h + i] + k);
                transpose8(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(bp + (k + i) * GEMM_NR + 8 * h, r[i]);
            }
        for (; k < kc; k++)
            for (int j = 0; j < GEMM_NR; j++) bp[k * GEMM_NR + j] = src[j][k];
    }
}

/* Row r of a microkernel tile: o[0..ncols) (+)= c0:c1. Kept out of line so the accumulators of
 * micro() stay in registers (an indexed epilogue loop makes gcc spill them every iteration). */
static void store_tile_row(float *o, __m256 c0, __m256 c1, int ncols, int acc) {
    if (ncols == GEMM_NR) {
        if (acc) {
            c0 = _mm256_add_ps(_mm256_loadu_ps(o), c0);
            c1 = _mm256_add_ps(_mm256_loadu_ps(o + 8), c1);
        }
        _mm256_storeu_ps(o, c0);
        _mm256_storeu_ps(o + 8, c1);
        return;
    }
    float t[GEMM_NR];
    _mm256_storeu_ps(t, c0);
    _mm256_storeu_ps(t + 8, c1);
    for (int j = 0; j < ncols; j++) o[j] = acc ? o[j] + t[j] : t[j];
}

/* C[r][0..ncols) (+)= sum_k a[r][k] * b[k][0..16) for r < mr; accumulate when `acc`. */
AI void micro(int mr, int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols,
              int acc) {
    __m256 c0[GEMM_MR], c1[GEMM_MR];
    const float *ap[GEMM_MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        c0[r] = c1[r] = _mm256_setzero_ps();
        ap[r] = a[r];
    }
    for (int64_t k = 0; k < kc; k++, b += GEMM_NR) {
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

#if defined(__AVX512F__) && defined(__AVX512VL__)
#define GEMM_HAVE_Z 1
/* Row r of a 512-bit tile: o[0..ncols) (+)= c0:c1, ncols in (16, 32], the last columns masked */
static void store_tile_row_z(float *o, __m512 c0, __m512 c1, int ncols, int acc) {
    const __mmask16 m1 = (__mmask16)((1u << (ncols - GEMM_NR)) - 1);
    if (acc) {
        c0 = _mm512_add_ps(_mm512_loadu_ps(o), c0);
        c1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + GEMM_NR), c1);
    }
    _mm512_storeu_ps(o, c0);
    _mm512_mask_storeu_ps(o + GEMM_NR, m1, c1);
}

/* micro over two adjacent 16-column groups of the panel (b and b + kc * 16) at once, a zmm per
 * group and row: 6x32 tiles, 12 accumulators. Each output still sums its products in k order, so
 * the bits are micro's. */
AI void micro_z(int mr, int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols,
                int acc) {
    __m512 c0[GEMM_MR], c1[GEMM_MR];
    const float *ap[GEMM_MR], *b1 = b + kc * GEMM_NR;
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        c0[r] = c1[r] = _mm512_setzero_ps();
        ap[r] = a[r];
    }
    for (int64_t k = 0; k < kc; k++, b += GEMM_NR, b1 += GEMM_NR) {
        __m512 v0 = _mm512_load_ps(b), v1 = _mm512_load_ps(b1);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512 av = _mm512_set1_ps(ap[r][k]);
            c0[r] = _mm512_fmadd_ps(av, v0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, v1, c1[r]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) store_tile_row_z(cp[r], c0[r], c1[r], ncols, acc);
}
#else
#define GEMM_HAVE_Z 0
#endif

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
#if GEMM_HAVE_Z
#define MICRO_Z_FN(R) \
    static void micro_z_##R(int64_t kc, const float *const *a, const float *b, float *const *cp, int ncols, \
                            int acc) { micro_z(R, kc, a, b, cp, ncols, acc); }
MICRO_Z_FN(1)
MICRO_Z_FN(2)
MICRO_Z_FN(3)
MICRO_Z_FN(4)
MICRO_Z_FN(5)
MICRO_Z_FN(6)
#else /* never selected: mm_ctx.wide is 0 without the 512-bit kernels */
#define micro_z_1 NULL
#define micro_z_2 NULL
#define micro_z_3 NULL
#define micro_z_4 NULL
#define micro_z_5 NULL
#define micro_z_6 NULL
#endif

/* The microkernel by width and rows of x: the one place that picks. [0]: 256-bit, 16 columns;
 * [1]: 512-bit, two 16-column groups (a lone last group takes [0]). */
static const micro_fn micros[2][GEMM_MR + 1] = {
    {NULL, micro_1, micro_2, micro_3, micro_4, micro_5, micro_6},
    {NULL, micro_z_1, micro_z_2, micro_z_3, micro_z_4, micro_z_5, micro_z_6},
};

/* GEMM work units, claimed in order by whichever threads run (ce_parallel_dyn): GEMM_NC-column panels
 * of the output, or with few columns (split_rows) GEMM_ROWS-row slices. Each output element is
 * still computed whole by one thread in a fixed order, so the bits do not depend on who ran. */
enum { GEMM_ROWS = 16 * GEMM_MR };

static void gemm_unit(const mm_ctx *c, float *bp, float *tmp, int64_t n_lo, int64_t n_hi, int64_t m_lo, int64_t m_hi);

static void gemm_task(void *p, int ith, int nth) {
    (void)nth;
    const mm_ctx *c = p;
    float *bp = c->scratch + (int64_t)ith * c->scratch_floats; /* [GEMM_NC * GEMM_KC], 64-byte aligned */
    float *tmp = bp + GEMM_NC * GEMM_KC;                                  /* [GEMM_NR * GEMM_KC] dequantized rows */
    const int64_t units = c->split_rows ? (c->M + GEMM_ROWS - 1) / GEMM_ROWS : (c->N + GEMM_NC - 1) / GEMM_NC;
    for (int64_t u; (u = atomic_fetch_add(c->next_unit, 1)) < units;) {
        if (c->split_rows)
            gemm_unit(c, bp, tmp, 0, c->N, u * GEMM_ROWS, c->M < (u + 1) * GEMM_ROWS ? c->M : (u + 1) * GEMM_ROWS);
        else
            gemm_unit(c, bp, tmp, u * GEMM_NC, c->N < (u + 1) * GEMM_NC ? c->N : (u + 1) * GEMM_NC, 0, c->M);
    }
}

static void gemm_unit(const mm_ctx *c, float *bp, float *tmp, int64_t n_lo, int64_t n_hi, int64_t m_lo, int64_t m_hi) {
    for (int64_t n0 = n_lo; n0 < n_hi; n0 += GEMM_NC) {
        int64_t nc = n_hi - n0 < GEMM_NC ? n_hi - n0 : GEMM_NC;
        for (int64_t k0 = 0; k0 < c->K; k0 += GEMM_KC) {
            int64_t kc = c->K - k0 < GEMM_KC ? c->K - k0 : GEMM_KC;
            pack_panel(c, n0, nc, k0, kc, bp, tmp);
            for (int64_t m = m_lo; m < m_hi; m += GEMM_MR) {
                int mr = m_hi - m < GEMM_MR ? (int)(m_hi - m) : GEMM_MR;
                const float *a[GEMM_MR];
                for (int r = 0; r < mr; r++) a[r] = c->xr[m + r] + k0;
                for (int64_t g = 0; g * GEMM_NR < nc;) {
                    float *cp[GEMM_MR];
                    for (int r = 0; r < mr; r++) cp[r] = c->outr[m + r] + n0 + g * GEMM_NR;
                    const int64_t left = nc - g * GEMM_NR;
                    const int two = c->wide && left > GEMM_NR; /* the 512-bit kernel takes two groups */
                    const int64_t cols = GEMM_NR * (1 + two);
                    micros[two][mr](kc, a, bp + g * kc * GEMM_NR, cp, (int)(left < cols ? left : cols), k0 > 0);
                    g += 1 + two;
                }
            }
        }
    }
    if (c->bias)
        for (int64_t m = m_lo; m < m_hi; m++)
            for (int64_t n = n_lo; n < n_hi; n++) c->outr[m][n] += c->bias[n];
}

ce_status mm_gemm_run(mm_ctx *c, int nth) {
    _Atomic int64_t next_unit = 0;
    c->scratch_floats = GEMM_NC * GEMM_KC + GEMM_NR * GEMM_KC;
    c->split_rows = c->N < (int64_t)GEMM_NR * 2 * nth && c->M >= (int64_t)GEMM_MR * 2 * nth;
    c->next_unit = &next_unit;
    c->wide = GEMM_HAVE_Z && ce_vec_bits[CE_VK_GEMM] == 512;
    c->scratch = aligned_alloc(64, (size_t)nth * (size_t)c->scratch_floats * sizeof(float));
    if (!c->scratch) return ce_fail(CE_ERR_NOMEM, "matmul: out of memory for %d work areas", nth);
    ce_parallel_dyn(gemm_task, c, nth);
    free(c->scratch);
    return CE_OK;
}
#endif /* CE_HAVE_AVX2 */
