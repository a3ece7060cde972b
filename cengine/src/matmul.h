/* matmul.h - what the matmul files share: the kernels' view of one out = x @ w^T + bias (mm_ctx)
 * and the entry points of each kernel family. matmul.c checks the arguments and picks the kernel
 * (mm_pick: the one place that chooses); gemv.c, gemm.c and matmul_scalar.c compute. */
#ifndef CE_MATMUL_H
#define CE_MATMUL_H

#include <stdatomic.h>
#include "internal.h"

enum {
    GEMM_MIN_M = 8,       /* with batch invariance off, from this many rows the packed GEMM runs
                             (packing a panel costs about as much as 8 rows of GEMV); fewer rows
                             (and any number with it on, the default) run the GEMV */
    MM_SMALL_WORK = 1 << 15 /* M*N*K below this runs on one thread: not worth waking the pool */
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
    const float *xq;           /* GEMV on Q4_0/Q4_1: [M][K] x permuted and scaled for the Q4 unpacking
                                  ([M][3K / 2] on the normal-float path: per block, 32 x then the
                                  16 addends of the first products, gemv.c's build_xq) */
    const float *sq;           /* and [M][K / 32] pairs (0, scaled sum of x over a block), times -8
                                  for Q4_0 (gemv.c's build_xq) */
    const float *xq_unscale;   /* and per row of x, the factor that undoes the scaling */
    float *scratch;            /* GEMM / scalar: per-thread work areas */
    int64_t scratch_floats;    /* floats per thread */
    int split_rows;            /* GEMM with few columns: threads split M instead of N */
    int wide;                  /* GEMM: the 512-bit microkernel (ce_vec_bits[CE_VK_GEMM] == 512), for the whole call */
    _Atomic int64_t *next_unit; /* GEMM: the first work unit no thread has claimed */
} mm_ctx;

/* Local and inline: the public ce_dtype_* functions are PLT calls that would break the kernels. */
static inline int mm_is_block(int dtype) { return dtype == CE_Q8_0 || dtype == CE_Q4_0 || dtype == CE_Q4_1; }
static inline int mm_is_q4(int dtype) { return dtype == CE_Q4_0 || dtype == CE_Q4_1; }

static inline const char *mm_w_at(const mm_ctx *c, int64_t n, int64_t k0) {
    return c->w + n * c->wstride + k0 / c->bsize * c->bbytes;
}

static inline float mm_add_bias(const mm_ctx *c, float v, int64_t n) { return c->bias ? v + c->bias[n] : v; }

/* The kernel families. Each runs one whole matmul (mm_gemv_run: several weights sharing x) on up
 * to nth threads, with results that do not depend on nth. */
ce_status mm_scalar_run(mm_ctx *c, int nth);              /* matmul_scalar.c: the reference */
#if CE_HAVE_AVX2
ce_status mm_gemv_run(mm_ctx *seg, int n, int nth);       /* gemv.c: any M */
ce_status mm_gemm_run(mm_ctx *c, int nth);                /* gemm.c: M >= GEMM_MIN_M, opt-in */
#endif

#endif
