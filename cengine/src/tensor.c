/* tensor.c - tensors (owned or borrowed memory, strided views), dtype facts, errors, names. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "internal.h"

#ifndef CE_SOURCE_HASH
#define CE_SOURCE_HASH "unknown"
#endif
#ifndef CE_BUILD_FLAGS
#define CE_BUILD_FLAGS ""
#endif
#define CE_VERSION_STRING "0.1.0"

/* ---- errors ---- */
static _Thread_local char err_buf[512];

ce_status ce_fail(ce_status status, const char *fmt, ...) {
    ce_fail_count++;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    return status;
}

const char *ce_last_error(void) { return err_buf; }

void ce_internal_error(const char *file, int line, const char *what) {
    /* Invariants only: a message, not a crash of the user's kernel. The caller still returns. */
    ce_fail_count++;
    snprintf(err_buf, sizeof err_buf, "cengine internal error at %s:%d: %s", file, line, what);
    fprintf(stderr, "%s\n", err_buf);
}

static const char *status_names[] = {"ok", "invalid argument", "shape mismatch", "unsupported dtype",
                                      "index out of range", "out of memory", "unsupported layout",
                                      "internal error"};

const char *ce_status_name(ce_status s) {
    if (s > 0 || s < CE_ERR_INTERNAL) return "unknown status";
    return status_names[-s];
}

/* ---- names and build facts ---- */
static const char *dtype_names[] = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "I32"};
_Static_assert(sizeof dtype_names / sizeof dtype_names[0] == CE_DTYPE_COUNT, "dtype name table");

static const char *op_names[] = {"matmul", "embedding", "rmsnorm", "rope", "softmax", "silu", "gelu",
                                 "silu_mul", "add", "mul", "scale", "attention", "argmax", "topk",
                                 "copy", "matmul_n", "copy_rows", "convert", "repetition_penalty",
                                 "sample", "attention_seqs"};
_Static_assert(sizeof op_names / sizeof op_names[0] == CE_OP_COUNT, "op name table");

const char *ce_dtype_name(int dtype) {
    return dtype >= 0 && dtype < CE_DTYPE_COUNT ? dtype_names[dtype] : "unknown";
}
const char *ce_op_name(int op) { return op >= 0 && op < CE_OP_COUNT ? op_names[op] : "unknown"; }
const char *ce_version(void) { return CE_VERSION_STRING; }
int ce_abi_version(void) { return CE_ABI_VERSION; }
const char *ce_source_hash(void) { return CE_SOURCE_HASH; }

const char *ce_build_info(void) {
    static _Thread_local char buf[768]; /* the Q4 path and vector width can change: rebuilt per call, per thread */
    size_t n = (size_t)snprintf(buf, sizeof buf, "%s", CE_BUILD_FLAGS
#if CE_HAVE_AVX2
        " simd=avx2+fma+f16c"
#else
        " simd=none"
#endif
#ifdef __AVX512F__
        " avx512f"
#endif
#ifdef __AVX512BF16__
        " avx512bf16"
#endif
    );
    if (n < sizeof buf) {
        ce_vector_describe(buf + n, sizeof buf - n);
        n += strlen(buf + n);
    }
    if (n < sizeof buf) ce_q4_describe(buf + n, sizeof buf - n);
    return buf;
}

double ce_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- dtypes ---- */
int ce_dtype_is_block(int dtype) { return dtype == CE_Q8_0 || dtype == CE_Q4_0 || dtype == CE_Q4_1; }

int64_t ce_dtype_block_size(int dtype) { return ce_dtype_is_block(dtype) ? CE_BLOCK : 1; }

int64_t ce_dtype_block_bytes(int dtype) {
    switch (dtype) {
    case CE_F32: case CE_I32: return 4;
    case CE_F16: case CE_BF16: return 2;
    case CE_Q8_0: return sizeof(ce_block_q8_0);
    case CE_Q4_0: return sizeof(ce_block_q4_0);
    case CE_Q4_1: return sizeof(ce_block_q4_1);
    default: return 0;
    }
}

ce_status ce_row_bytes(int dtype, int64_t n, int64_t *out_bytes) {
    if (!out_bytes) return ce_fail(CE_ERR_ARG, "ce_row_bytes: out_bytes is NULL");
    if (dtype < 0 || dtype >= CE_DTYPE_COUNT) return ce_fail(CE_ERR_DTYPE, "unknown dtype %d", dtype);
    if (n < 0) return ce_fail(CE_ERR_SHAPE, "negative element count %lld", (long long)n);
    int64_t bs = ce_dtype_block_size(dtype);
    if (n % bs)
        return ce_fail(CE_ERR_LAYOUT, "%s rows need a multiple of %lld elements, got %lld",
                       ce_dtype_name(dtype), (long long)bs, (long long)n);
    *out_bytes = n / bs * ce_dtype_block_bytes(dtype);
    return CE_OK;
}

/* ---- tensors ---- */
/* Bytes per element, 0 for block dtypes (their rows are addressed whole). */
static int64_t elem_bytes(int dtype) { return ce_dtype_is_block(dtype) ? 0 : ce_dtype_block_bytes(dtype); }

static ce_status check_shape(int dtype, int ndim, const int64_t *shape) {
    if (dtype < 0 || dtype >= CE_DTYPE_COUNT) return ce_fail(CE_ERR_DTYPE, "unknown dtype %d", dtype);
    if (ndim < 1 || ndim > CE_MAX_DIMS)
        return ce_fail(CE_ERR_SHAPE, "tensors have 1 to %d dims, got %d", CE_MAX_DIMS, ndim);
    if (!shape) return ce_fail(CE_ERR_ARG, "shape is NULL");
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || shape[i] > ((int64_t)1 << 40))
            return ce_fail(CE_ERR_SHAPE, "dim %d has invalid size %lld", i, (long long)shape[i]);
    if (ce_dtype_is_block(dtype) && shape[ndim - 1] % CE_BLOCK)
        return ce_fail(CE_ERR_LAYOUT, "%s tensors need a last dim that is a multiple of 32, got %lld",
                       ce_dtype_name(dtype), (long long)shape[ndim - 1]);
    return CE_OK;
}

/* Fills contiguous strides; returns total bytes. */
static int64_t fill_contiguous(ce_tensor *t) {
    int64_t rb;
    ce_row_bytes(t->dtype, t->shape[t->ndim - 1], &rb);
    t->stride[t->ndim - 1] = elem_bytes(t->dtype);
    int64_t s = rb;
    for (int d = t->ndim - 2; d >= 0; d--) {
        t->stride[d] = s;
        s *= t->shape[d];
    }
    for (int d = t->ndim; d < CE_MAX_DIMS; d++) { t->shape[d] = 1; t->stride[d] = s; }
    return s;
}

static ce_status make(ce_tensor **out, int dtype, int ndim, const int64_t *shape) {
    if (!out) return ce_fail(CE_ERR_ARG, "out is NULL");
    *out = NULL;
    ce_status st = check_shape(dtype, ndim, shape);
    if (st) return st;
    ce_tensor *t = calloc(1, sizeof *t);
    if (!t) return ce_fail(CE_ERR_NOMEM, "out of memory for a tensor header");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    *out = t;
    return CE_OK;
}

ce_status ce_tensor_new(ce_tensor **out, int dtype, int ndim, const int64_t *shape) {
    ce_status st = make(out, dtype, ndim, shape);
    if (st) return st;
    ce_tensor *t = *out;
    int64_t bytes = fill_contiguous(t);
    /* 64-byte alignment: whole cache lines for the kernels; +64 so size 0 still allocates */
    size_t sz = ((size_t)bytes + 63) / 64 * 64 + 64;
    void *p = aligned_alloc(64, sz);
    if (!p) {
        free(t);
        *out = NULL;
        return ce_fail(CE_ERR_NOMEM, "out of memory allocating %lld bytes", (long long)bytes);
    }
    memset(p, 0, sz);
    t->data = p;
    t->flags = CE_TENSOR_OWNS_DATA;
    return CE_OK;
}

ce_status ce_tensor_wrap(ce_tensor **out, int dtype, int ndim, const int64_t *shape, void *data) {
    ce_status st = make(out, dtype, ndim, shape);
    if (st) return st;
    if (!data) {
        free(*out);
        *out = NULL;
        return ce_fail(CE_ERR_ARG, "ce_tensor_wrap: data is NULL");
    }
    fill_contiguous(*out);
    (*out)->data = data;
    return CE_OK;
}

/* [lo, hi): the bytes t touches relative to t->data; returns 0 when t is empty. */
static int extent(const ce_tensor *t, int64_t *lo, int64_t *hi) {
    *lo = *hi = 0;
    for (int i = 0; i < t->ndim; i++) if (t->shape[i] == 0) return 0;
    for (int i = 0; i < t->ndim - 1; i++) {
        int64_t span = (t->shape[i] - 1) * t->stride[i];
        if (span < 0) *lo += span; else *hi += span;
    }
    int64_t rb = 0;
    ce_row_bytes(t->dtype, t->shape[t->ndim - 1], &rb);
    if (ce_dtype_is_block(t->dtype)) {
        *hi += rb;
    } else {
        int64_t span = (t->shape[t->ndim - 1] - 1) * t->stride[t->ndim - 1];
        if (span < 0) *lo += span; else *hi += span;
        *hi += elem_bytes(t->dtype);
    }
    return 1;
}

ce_status ce_tensor_view(ce_tensor **out, const ce_tensor *src, int ndim, const int64_t *shape,
                         const int64_t *stride, int64_t byte_offset) {
    if (!src) return ce_fail(CE_ERR_ARG, "ce_tensor_view: src is NULL");
    ce_status st = make(out, src->dtype, ndim, shape);
    if (st) return st;
    ce_tensor *t = *out;
    if (stride) {
        for (int i = 0; i < ndim; i++) t->stride[i] = stride[i];
        for (int d = ndim; d < CE_MAX_DIMS; d++) { t->shape[d] = 1; t->stride[d] = 0; }
        if (ce_dtype_is_block(t->dtype)) t->stride[ndim - 1] = 0;
    } else {
        fill_contiguous(t);
    }
    int64_t slo, shi, lo, hi;
    int src_nonempty = extent(src, &slo, &shi);
    if (extent(t, &lo, &hi) && (!src_nonempty || byte_offset + lo < slo || byte_offset + hi > shi)) {
        free(t);
        *out = NULL;
        return ce_fail(CE_ERR_SHAPE, "view of bytes [%lld, %lld) falls outside its source [%lld, %lld)",
                       (long long)(byte_offset + lo), (long long)(byte_offset + hi), (long long)slo,
                       (long long)shi);
    }
    if (ce_dtype_is_block(src->dtype) && byte_offset % ce_dtype_block_bytes(src->dtype)) {
        free(t);
        *out = NULL;
        return ce_fail(CE_ERR_LAYOUT, "views of %s tensors must start on a block boundary",
                       ce_dtype_name(src->dtype));
    }
    t->data = (char *)src->data + byte_offset;
    t->flags = src->flags & CE_TENSOR_READ_ONLY; /* a view borrows; read-only memory stays so */
    return CE_OK;
}

void ce_tensor_free(ce_tensor *t) {
    if (!t) return;
    if (t->flags & CE_TENSOR_OWNS_DATA) free(t->data);
    free(t);
}

int64_t ce_tensor_numel(const ce_tensor *t) {
    if (!t) return 0;
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int64_t ce_tensor_nbytes(const ce_tensor *t) {
    if (!t) return 0;
    int64_t rb = 0;
    ce_row_bytes(t->dtype, t->shape[t->ndim - 1], &rb);
    return rb * ce_rows(t);
}

int ce_tensor_is_contiguous(const ce_tensor *t) {
    if (!t) return 0;
    int64_t elem = elem_bytes(t->dtype);
    if (elem && t->shape[t->ndim - 1] > 1 && t->stride[t->ndim - 1] != elem) return 0;
    int64_t s;
    ce_row_bytes(t->dtype, t->shape[t->ndim - 1], &s);
    for (int d = t->ndim - 2; d >= 0; d--) {
        if (t->shape[d] > 1 && t->stride[d] != s) return 0;
        s *= t->shape[d];
    }
    return 1;
}

int64_t ce_rows(const ce_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim - 1; i++) n *= t->shape[i];
    return n;
}

int64_t ce_cols(const ce_tensor *t) { return t->shape[t->ndim - 1]; }

ce_status ce_check(const ce_tensor *t, const char *op, const char *name, int dtype) {
    if (!t) return ce_fail(CE_ERR_ARG, "%s: %s is NULL", op, name);
    if (!t->data && ce_tensor_numel(t) > 0) return ce_fail(CE_ERR_ARG, "%s: %s has no data", op, name);
    if (t->dtype < 0 || t->dtype >= CE_DTYPE_COUNT)
        return ce_fail(CE_ERR_DTYPE, "%s: %s has unknown dtype %d", op, name, t->dtype);
    if (dtype >= 0 && t->dtype != dtype)
        return ce_fail(CE_ERR_DTYPE, "%s: %s must be %s, got %s", op, name, ce_dtype_name(dtype),
                       ce_dtype_name(t->dtype));
    int64_t elem = elem_bytes(t->dtype);
    if (elem && t->shape[t->ndim - 1] > 1 && t->stride[t->ndim - 1] != elem)
        return ce_fail(CE_ERR_LAYOUT, "%s: %s needs a contiguous last dim", op, name);
    return CE_OK;
}

ce_status ce_check_positions(const ce_tensor *pos, int64_t T, int64_t limit, const char *op) {
    if (ce_tensor_numel(pos) != T || !ce_tensor_is_contiguous(pos))
        return ce_fail(CE_ERR_SHAPE, "%s: pos must be a contiguous I32 [%lld] (one position per row), got %lld elements",
                       op, (long long)T, (long long)ce_tensor_numel(pos));
    const int32_t *pp = (const int32_t *)pos->data;
    for (int64_t t = 0; t < T; t++) {
        if (pp[t] < 0)
            return ce_fail(CE_ERR_RANGE, "%s: pos[%lld] = %d is negative", op, (long long)t, pp[t]);
        if (limit >= 0 && pp[t] >= limit)
            return ce_fail(CE_ERR_RANGE, "%s: pos[%lld] = %d is outside 0..%lld", op, (long long)t, pp[t],
                           (long long)(limit - 1));
    }
    return CE_OK;
}

ce_status ce_check_same(const ce_tensor *a, const ce_tensor *b, const char *op, const char *na,
                        const char *nb) {
    if (ce_tensor_numel(a) != ce_tensor_numel(b) || ce_cols(a) != ce_cols(b))
        return ce_fail(CE_ERR_SHAPE, "%s: %s has %lld elements (last dim %lld) but %s has %lld (last dim %lld)",
                       op, na, (long long)ce_tensor_numel(a), (long long)ce_cols(a), nb,
                       (long long)ce_tensor_numel(b), (long long)ce_cols(b));
    return CE_OK;
}

ce_status ce_check_writable(const ce_tensor *t, const char *op, const char *name) {
    if (t && (t->flags & CE_TENSOR_READ_ONLY))
        return ce_fail(CE_ERR_ARG, "%s: %s is read-only (it wraps memory that may not be written, e.g. a read-only "
                       "mapping); write to a copy", op, name);
    return CE_OK;
}

ce_status ce_check_out(const ce_tensor *t, const char *op, const char *name, int dtype) {
    ce_status st = ce_check(t, op, name, dtype);
    return st ? st : ce_check_writable(t, op, name);
}
