/* embed_copy.c - embedding lookup (any weight dtype) and strided copy with dtype conversion.
 *
 * Conversions: F16 / BF16 widen exactly to F32 and narrow with round-to-nearest-even; block dtypes
 * go through ce_dequantize_row / ce_quantize_row (quant.c) one whole row at a time; a block row
 * copied to the same block dtype is copied bytewise (no requantisation loss). Float -> I32
 * truncates toward zero as C and torch do, saturating at the I32 limits, with NaN -> 0.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "internal.h"

/* ---- element conversion over strided runs ---- */
static inline float load_f(const char *p, int dtype) {
    uint16_t h;
    float f;
    int32_t i;
    switch (dtype) {
    case CE_F16: memcpy(&h, p, 2); return ce_f16_to_f32(h);
    case CE_BF16: memcpy(&h, p, 2); return ce_bf16_to_f32(h);
    case CE_I32: memcpy(&i, p, 4); return (float)i;
    default: memcpy(&f, p, 4); return f;
    }
}

static inline int32_t f32_to_i32(float f) {
    if (f != f) return 0;
    if (f >= 2147483648.0f) return INT32_MAX;
    if (f <= -2147483648.0f) return INT32_MIN;
    return (int32_t)f;
}

static inline void store_f(char *p, int dtype, float f) {
    uint16_t h;
    int32_t i;
    switch (dtype) {
    case CE_F16: h = ce_f32_to_f16(f); memcpy(p, &h, 2); break;
    case CE_BF16: h = ce_f32_to_bf16(f); memcpy(p, &h, 2); break;
    case CE_I32: i = f32_to_i32(f); memcpy(p, &i, 4); break;
    default: memcpy(p, &f, 4); break;
    }
}

/* n elements from src (dtype st, ss bytes apart) to dst (dtype dt, ds bytes apart); not blocks. */
static void convert_run(char *dst, int dt, int64_t ds, const char *src, int st, int64_t ss, int64_t n) {
    int64_t eb = ce_dtype_block_bytes(dt);
    if (dt == st && ds == eb && ss == eb) {
        memmove(dst, src, (size_t)(n * eb));
    } else if (dt == st) { /* same dtype, strided: move the bytes (keeps I32 exact, NaN payloads) */
        for (int64_t i = 0; i < n; i++) memmove(dst + i * ds, src + i * ss, (size_t)eb);
    } else if (st == CE_F32 && dt == CE_F16) { /* the KV cache write: worth its own loop */
        for (int64_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, src + i * ss, 4);
            uint16_t h = ce_f32_to_f16(f);
            memcpy(dst + i * ds, &h, 2);
        }
    } else {
        for (int64_t i = 0; i < n; i++) store_f(dst + i * ds, dt, load_f(src + i * ss, st));
    }
}

/* pointer to element e of t in row-major order over its shape, any strides; not blocks */
static char *elem_ptr(const ce_tensor *t, int64_t e) { return ce_flat_ptr(t, e, t->ndim - 1); }

/* src row -> dst row of n elements, either side possibly a block dtype; tmp holds n floats. */
static void convert_row(const ce_tensor *dst, char *d, const ce_tensor *src, const char *s, int64_t n,
                        float *tmp) {
    int dt = dst->dtype, st = src->dtype;
    int64_t ds = dst->stride[dst->ndim - 1], ss = src->stride[src->ndim - 1];
    if (!ce_dtype_is_block(dt) && !ce_dtype_is_block(st)) {
        convert_run(d, dt, ds, s, st, ss, n);
        return;
    }
    if (dt == st) { /* same block dtype: the row's bytes */
        int64_t rb = 0;
        ce_row_bytes(dt, n, &rb);
        memmove(d, s, (size_t)rb);
        return;
    }
    if (ce_dtype_is_block(st)) ce_dequantize_row(st, s, tmp, n);
    else convert_run((char *)tmp, CE_F32, 4, s, st, ss, n);
    if (ce_dtype_is_block(dt)) ce_quantize_row(dt, tmp, d, n);
    else convert_run(d, dt, ds, (const char *)tmp, CE_F32, 4, n);
}

/* ---- embedding ---- */
typedef struct {
    ce_tensor *out;
    const ce_tensor *w;
    const int32_t *ids;
    int64_t n, D;
} embed_ctx;

static void embed_task(void *p, int ith, int nth) {
    const embed_ctx *c = p;
    int64_t lo, hi;
    ce_split(c->n, ith, nth, 1, &lo, &hi);
    int dt = c->w->dtype;
    for (int64_t i = lo; i < hi; i++) {
        const char *row = (const char *)c->w->data + (int64_t)c->ids[i] * c->w->stride[0];
        float *o = (float *)ce_row_ptr(c->out, i);
        if (ce_dtype_is_block(dt)) ce_dequantize_row(dt, row, o, c->D);
        else convert_run((char *)o, CE_F32, 4, row, dt, c->w->stride[1], c->D);
    }
}

ce_status ce_embedding(ce_tensor *out, const ce_tensor *w, const ce_tensor *ids) {
    CE_PROFILE(CE_OP_EMBEDDING, .t = {out, w, ids});
    ce_status st;
    if ((st = ce_check_out(out, "embedding", "out", CE_F32))) return st;
    if ((st = ce_check(w, "embedding", "w", -1))) return st;
    if ((st = ce_check(ids, "embedding", "ids", CE_I32))) return st;
    if (w->dtype == CE_I32)
        return ce_fail(CE_ERR_DTYPE, "embedding: w must be a float or block dtype, got I32");
    if (w->ndim != 2) return ce_fail(CE_ERR_SHAPE, "embedding: w must be [vocab, D], got %d dims", w->ndim);
    if (!ce_tensor_is_contiguous(ids)) return ce_fail(CE_ERR_LAYOUT, "embedding: ids must be contiguous");
    int64_t V = w->shape[0], D = w->shape[1], n = ce_tensor_numel(ids);
    if (ce_cols(out) != D || ce_tensor_numel(out) != n * D)
        return ce_fail(CE_ERR_SHAPE, "embedding: out must be [%lld, %lld], got %lld elements (last dim %lld)",
                       (long long)n, (long long)D, (long long)ce_tensor_numel(out), (long long)ce_cols(out));
    const int32_t *id = (const int32_t *)ids->data;
    for (int64_t i = 0; i < n; i++)
        if (id[i] < 0 || id[i] >= V)
            return ce_fail(CE_ERR_RANGE,
                           "embedding: id %d at position %lld is outside 0..%lld (vocab size %lld)",
                           id[i], (long long)i, (long long)(V - 1), (long long)V);
    if (n == 0 || D == 0) return CE_OK;
    embed_ctx c = {out, w, id, n, D};
    ce_parallel_n(embed_task, &c, ce_tasks(n * D, 32768, n));
    return CE_OK;
}

/* ---- copy ---- */
typedef struct {
    ce_tensor *dst;
    const ce_tensor *src;
    int64_t rows, cols; /* flat: 1 row of numel */
    int flat;
    atomic_int nomem;
} copy_ctx;

static void copy_task(void *p, int ith, int nth) {
    copy_ctx *c = p;
    int64_t lo, hi;
    if (c->flat) { /* both contiguous, no blocks: split the elements */
        ce_split(c->cols, ith, nth, 256, &lo, &hi);
        int dt = c->dst->dtype, st = c->src->dtype;
        int64_t db = ce_dtype_block_bytes(dt), sb = ce_dtype_block_bytes(st);
        convert_run((char *)c->dst->data + lo * db, dt, db, (const char *)c->src->data + lo * sb, st, sb,
                    hi - lo);
        return;
    }
    ce_split(c->rows, ith, nth, 1, &lo, &hi);
    if (lo >= hi) return;
    float *tmp = NULL;
    if (ce_dtype_is_block(c->dst->dtype) || ce_dtype_is_block(c->src->dtype)) {
        tmp = malloc((size_t)c->cols * sizeof(float));
        if (!tmp) { atomic_store(&c->nomem, 1); return; }
    }
    for (int64_t r = lo; r < hi; r++)
        convert_row(c->dst, ce_row_ptr(c->dst, r), c->src, ce_row_ptr(c->src, r), c->cols, tmp);
    free(tmp);
}

static ce_status check_any(const ce_tensor *t, const char *name) {
    if (!t) return ce_fail(CE_ERR_ARG, "copy: %s is NULL", name);
    if (t->dtype < 0 || t->dtype >= CE_DTYPE_COUNT)
        return ce_fail(CE_ERR_DTYPE, "copy: %s has unknown dtype %d", name, t->dtype);
    if (t->ndim < 1 || t->ndim > CE_MAX_DIMS)
        return ce_fail(CE_ERR_SHAPE, "copy: %s has %d dims", name, t->ndim);
    if (!t->data && ce_tensor_numel(t) > 0) return ce_fail(CE_ERR_ARG, "copy: %s has no data", name);
    return CE_OK;
}

ce_status ce_copy(ce_tensor *dst, const ce_tensor *src) {
    CE_PROFILE(CE_OP_COPY, .t = {dst, src});
    ce_status st;
    if ((st = check_any(dst, "dst")) || (st = check_any(src, "src")) || (st = ce_check_writable(dst, "copy", "dst")))
        return st;
    int64_t n = ce_tensor_numel(src);
    if (ce_tensor_numel(dst) != n)
        return ce_fail(CE_ERR_SHAPE, "copy: dst has %lld elements but src has %lld",
                       (long long)ce_tensor_numel(dst), (long long)n);
    int blocks = ce_dtype_is_block(dst->dtype) || ce_dtype_is_block(src->dtype);
    if (blocks && ce_cols(dst) != ce_cols(src))
        return ce_fail(CE_ERR_SHAPE,
                       "copy: %s -> %s copies whole rows: last dims must match, got %lld and %lld",
                       ce_dtype_name(src->dtype), ce_dtype_name(dst->dtype), (long long)ce_cols(src),
                       (long long)ce_cols(dst));
    if (n == 0) return CE_OK;
    copy_ctx c = {dst, src, ce_rows(src), ce_cols(src), 0, 0};
    if (!blocks && ce_tensor_is_contiguous(dst) && ce_tensor_is_contiguous(src)) {
        c.flat = 1;
        c.rows = 1;
        c.cols = n;
    } else if (ce_cols(dst) != ce_cols(src)) {
        /* different row lengths and strided: walk the flat element order of each side */
        for (int64_t e = 0; e < n; e++)
            convert_run(elem_ptr(dst, e), dst->dtype, 0, elem_ptr(src, e), src->dtype, 0, 1);
        return CE_OK;
    }
    ce_parallel_n(copy_task, &c, ce_tasks(n, 65536, c.flat ? (n + 255) / 256 : c.rows));
    if (atomic_load(&c.nomem))
        return ce_fail(CE_ERR_NOMEM, "copy: out of memory for a row of %lld", (long long)c.cols);
    return CE_OK;
}
