/* matmul.c - out[..., N] = x[..., K] @ w[N, K]^T (+ bias): every Linear layer of the model.
 *
 * This file checks the arguments and picks the kernel (mm_pick); the kernels live in gemv.c (few
 * rows of x: the decode step), gemm.c (many rows: prefill) and matmul_scalar.c (the reference,
 * with ce_simd_on == 0). The choice depends on the number of rows M of x, never on the thread
 * count, and every kernel gives bits that do not depend on the thread count.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include "matmul.h"

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
    if ((st = ce_check_out(out, op, "out", CE_F32)) || (st = ce_check(x, op, "x", CE_F32)) || (st = ce_check(w, op, "w", -1)))
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

static inline int small_work(int64_t M, int64_t N, int64_t K) { return (double)M * (double)N * (double)K < MM_SMALL_WORK; }

typedef enum { MM_SCALAR, MM_GEMV, MM_GEMM } mm_kernel;

/* Batch invariance: every row of out gets the same bits whatever M and its position. The GEMV
 * computes each output in an order that depends on K only, so with it on, every M runs the GEMV
 * (rows blocked so the weights are unpacked once per pair of rows, gemv.c); off, M >= GEMM_MIN_M
 * runs the packed GEMM, whose sums round differently from the GEMV's. */
static _Atomic int batch_invariant = 1;

void ce_set_batch_invariant(int enabled) { atomic_store(&batch_invariant, enabled != 0); }
int ce_get_batch_invariant(void) { return atomic_load(&batch_invariant); }

/* The one place that chooses a matmul kernel family (the dtype, instruction set and Q4 unpacking
 * path are chosen inside gemv.c's table, once per process). */
static mm_kernel mm_pick(int64_t M) {
#if CE_HAVE_AVX2
    if (ce_simd_on) return M < GEMM_MIN_M || atomic_load_explicit(&batch_invariant, memory_order_relaxed) ? MM_GEMV : MM_GEMM;
#endif
    (void)M;
    return MM_SCALAR;
}

static ce_status mm_run(mm_kernel k, mm_ctx *seg, int n, int nth) {
#if CE_HAVE_AVX2
    if (k == MM_GEMV) return mm_gemv_run(seg, n, nth);
    if (k == MM_GEMM) return mm_gemm_run(seg, nth);
#endif
    (void)k, (void)n;
    return mm_scalar_run(seg, nth);
}

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
    } else {
        st = mm_run(mm_pick(M), &c, 1, small_work(M, N, K) ? 1 : ce_get_threads());
    }
    if (xr != xr_small) {
        free(xr);
        free(orow);
    }
    return st;
}

ce_status ce_matmul(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias) {
    CE_PROFILE(CE_OP_MATMUL, .t = {out, x, w, bias});
    ce_status st = check_matmul("matmul", out, x, w, bias);
    return st ? st : matmul_checked(out, x, w, bias);
}

/* the checks of ce_matmul_n: each weight's, and no output overlapping anything */
static ce_status check_matmul_n(int n, ce_tensor *const *out, const ce_tensor *x, const ce_tensor *const *w,
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
    return CE_OK;
}

/* ce_matmul_n, checked: with few rows of x the weights run as one GEMV job (one pool start-up,
 * no wait between them); otherwise one matmul each (compute bound, nothing to share) */
static ce_status matmul_n_checked(int n, ce_tensor *const *out, const ce_tensor *x, const ce_tensor *const *w,
                                  const ce_tensor *const *bias) {
    const int64_t M = ce_rows(x), K = ce_cols(x);
    if (mm_pick(M) == MM_GEMV && M > 0 && K > 0) {
        const float *xr_small[GEMM_MIN_M];
        float *or_small[CE_MATMUL_MAX * GEMM_MIN_M];
        const float **xr = xr_small;
        float **orow = or_small;
        if (M > GEMM_MIN_M) {
            xr = malloc((size_t)M * sizeof *xr);
            orow = malloc((size_t)(n * M) * sizeof *orow);
            if (!xr || !orow) {
                free(xr);
                free(orow);
                return ce_fail(CE_ERR_NOMEM, "matmul_n: out of memory for %lld row pointers", (long long)M);
            }
        }
        mm_ctx seg[CE_MATMUL_MAX];
        int64_t N = 0;
        for (int64_t m = 0; m < M; m++) xr[m] = (const float *)ce_row_ptr(x, m);
        for (int i = 0; i < n; i++) {
            for (int64_t m = 0; m < M; m++) orow[i * M + m] = (float *)ce_row_ptr(out[i], m);
            seg[i] = mm_setup(x, w[i], bias ? bias[i] : NULL, xr, orow + i * M);
            N += w[i]->shape[0];
        }
        ce_status st = mm_run(MM_GEMV, seg, n, small_work(M, N, K) ? 1 : ce_get_threads());
        if (xr != xr_small) {
            free(xr);
            free(orow);
        }
        return st;
    }
    for (int i = 0; i < n; i++) {
        ce_status st = matmul_checked(out[i], x, w[i], bias ? bias[i] : NULL);
        if (st) return st;
    }
    return CE_OK;
}

ce_status ce_matmul_n(int n, ce_tensor *const *out, const ce_tensor *x, const ce_tensor *const *w,
                      const ce_tensor *const *bias) {
    CE_PROFILE(CE_OP_MATMUL_N, .t = {out, x, w, bias}, .n = {n});
    ce_status st = check_matmul_n(n, out, x, w, bias);
    return st ? st : matmul_n_checked(n, out, x, w, bias);
}
