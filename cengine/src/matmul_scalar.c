/* matmul_scalar.c - the reference matmul the SIMD kernels are tested against (ce_simd_on == 0), and
 * the kernel for CPUs without AVX2.
 *
 * It is the SIMD GEMV's twin, lane by lane (gemv.c: dot_tile, dot_tile_q): each output keeps the
 * same 8-lane accumulators, takes the same products in the same trees, and sums the lanes in
 * hsum8's order, so the SIMD kernels, both Q4 unpacking paths included, must give its bits
 * exactly (the Q4 paths scale x and the products by powers of two, which changes no rounding
 * while the products are normal: every |x| of a row above 2^-76 of its largest). Each output
 * depends on its own row of x and row of w only: the same for any M, row position and thread
 * count. fmaf is one rounding, as the FMAs are (a libm call where the CPU has no FMA). */
#include <math.h>
#include <stdlib.h>
#include "matmul.h"

/* hsum8's order: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) */
static inline float hsum8_twin(const float a[8]) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); }

/* F32/F16/BF16 (dot_tile): four accumulators of 8 lanes over 32-element blocks, then 8-element
 * steps into the first, the four summed pairwise, hsum8, and the last K % 8 products added in order */
static float dot_float(const float *w, const float *x, int64_t K) {
    float acc[4][8] = {{0}};
    int64_t nb = K / 32, k = nb * 32;
    for (int64_t b = 0; b < nb; b++)
        for (int i = 0; i < 4; i++)
            for (int l = 0; l < 8; l++) acc[i][l] = fmaf(w[32 * b + 8 * i + l], x[32 * b + 8 * i + l], acc[i][l]);
    for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; l++) acc[0][l] = fmaf(w[k + l], x[k + l], acc[0][l]);
    float t[8];
    for (int l = 0; l < 8; l++) t[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    float res = hsum8_twin(t);
    for (; k < K; k++) {
        float p = w[k] * x[k]; /* a product then a sum, as the SIMD tail does */
        res = res + p;
    }
    return res;
}

/* Q8_0/Q4_0/Q4_1 (dot_tile_q): per block, lane l of vector k holds element 8k + l (Q8_0) or k + 4l
 * (Q4: q4_bits' order, q the stored nibble 0..15); s = fma(q1, x1, q0 x0) + fma(q3, x3, q2 x2);
 * acc_l = fma(d, s, acc_l); Q4_1 adds sum_b m_b S_b (S_b: the block's sum of x in the order
 * build_xq takes it), accumulated apart, and Q4_0 the same with m_b = -8 d_b (exact in F32). */
static float dot_block(int dtype, const char *w, const float *x, int64_t K) {
    const int64_t bb = dtype == CE_Q8_0 ? 34 : dtype == CE_Q4_0 ? 18 : 20;
    float acc[8] = {0}, macc = 0.0f;
    for (int64_t b = 0; b < K / 32; b++) {
        const char *blk = w + b * bb;
        const float *xb = x + 32 * b;
        uint16_t dh, mh = 0;
        memcpy(&dh, blk, 2);
        const uint8_t *qs = (const uint8_t *)blk + (dtype == CE_Q4_1 ? 4 : 2);
        const float d = ce_f16_to_f32(dh);
        if (dtype != CE_Q8_0) {
            if (dtype == CE_Q4_1) memcpy(&mh, blk + 2, 2);
            float t[8];
            for (int j = 0; j < 8; j++) t[j] = (xb[j] + xb[8 + j]) + (xb[16 + j] + xb[24 + j]);
            macc = fmaf(dtype == CE_Q4_1 ? ce_f16_to_f32(mh) : -8.0f * d, hsum8_twin(t), macc);
        }
        for (int l = 0; l < 8; l++) {
            float q[4], xv[4];
            for (int k = 0; k < 4; k++) {
                int e = dtype == CE_Q8_0 ? 8 * k + l : k + 4 * l;
                q[k] = dtype == CE_Q8_0 ? (float)(int8_t)qs[e] : (float)(e < 16 ? qs[e] & 15 : qs[e - 16] >> 4);
                xv[k] = xb[e];
            }
            /* Q4: the first products as FMAs with a zero addend, as gemv.c's q_mul does (+0 for -0) */
            const float p0 = dtype == CE_Q8_0 ? q[0] * xv[0] : fmaf(q[0], xv[0], 0.0f);
            const float p2 = dtype == CE_Q8_0 ? q[2] * xv[2] : fmaf(q[2], xv[2], 0.0f);
            const float s = fmaf(q[1], xv[1], p0) + fmaf(q[3], xv[3], p2);
            acc[l] = fmaf(d, s, acc[l]);
        }
    }
    float res = hsum8_twin(acc);
    return dtype != CE_Q8_0 ? res + macc : res;
}

static void scalar_task(void *p, int ith, int nth) {
    const mm_ctx *c = p;
    float *wrow = c->scratch + (int64_t)ith * c->scratch_floats;
    int64_t lo, hi;
    ce_split(c->N, ith, nth, 16, &lo, &hi);
    for (int64_t n = lo; n < hi; n++) {
        const char *w = mm_w_at(c, n, 0);
        if (!mm_is_block(c->dtype)) ce_dequantize_row(c->dtype, w, wrow, c->K); /* F16/BF16: exact */
        for (int64_t m = 0; m < c->M; m++) {
            float s = mm_is_block(c->dtype) ? dot_block(c->dtype, w, c->xr[m], c->K)
                                            : dot_float(wrow, c->xr[m], c->K);
            c->outr[m][n] = mm_add_bias(c, s, n);
        }
    }
}

ce_status mm_scalar_run(mm_ctx *c, int nth) {
    c->scratch_floats = (c->K + 15) / 16 * 16;
    c->scratch = aligned_alloc(64, (size_t)nth * (size_t)c->scratch_floats * sizeof(float));
    if (!c->scratch) return ce_fail(CE_ERR_NOMEM, "matmul: out of memory for %d work areas", nth);
    ce_parallel_n(scalar_task, c, nth);
    free(c->scratch);
    return CE_OK;
}
