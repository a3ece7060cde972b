/* matmul_scalar.c - the reference matmul the SIMD kernels are tested against (ce_simd_on == 0):
 * dequantize weight row n, then a sequential dot product per row of x. Each output depends on its
 * own row of x and row of w only, so it is the same for any M, row position and thread count. */
#include <stdlib.h>
#include "matmul.h"

static void scalar_task(void *p, int ith, int nth) {
    const mm_ctx *c = p;
    float *wrow = c->scratch + (int64_t)ith * c->scratch_floats;
    int64_t lo, hi;
    ce_split(c->N, ith, nth, 16, &lo, &hi);
    for (int64_t n = lo; n < hi; n++) {
        ce_dequantize_row(c->dtype, mm_w_at(c, n, 0), wrow, c->K);
        for (int64_t m = 0; m < c->M; m++) {
            const float *x = c->xr[m];
            float s = 0.0f;
            for (int64_t k = 0; k < c->K; k++) s += x[k] * wrow[k];
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
