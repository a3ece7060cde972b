/* rows.c - copying whole rows into a tensor at a row offset (KV-cache appends). */
#include "internal.h"

/* CE_OK when every dim after the first is contiguous; *row_elems gets their element count. */
static ce_status inner_contiguous(const ce_tensor *t, const char *name, int64_t *row_elems) {
    int64_t elem = ce_dtype_block_bytes(t->dtype), n = 1, expect = elem;
    for (int d = t->ndim - 1; d >= 1; d--) {
        if (t->shape[d] > 1 && t->stride[d] != expect)
            return ce_fail(CE_ERR_LAYOUT, "copy_rows: the rows of %s must be contiguous", name);
        expect *= t->shape[d];
        n *= t->shape[d];
    }
    *row_elems = n;
    return CE_OK;
}

ce_status ce_copy_rows(ce_tensor *dst, int64_t row0, const ce_tensor *src) {
    ce_status st;
    if ((st = ce_check(dst, "copy_rows", "dst", -1))) return st;
    if ((st = ce_check(src, "copy_rows", "src", -1))) return st;
    for (const ce_tensor *t = dst; t; t = t == dst ? src : NULL)
        if (t->dtype != CE_F32 && t->dtype != CE_F16 && t->dtype != CE_BF16)
            return ce_fail(CE_ERR_DTYPE, "copy_rows: %s tensors are not supported (F32, F16, BF16)",
                           ce_dtype_name(t->dtype));
    int64_t nd = 0, ns = 0;
    if ((st = inner_contiguous(dst, "dst", &nd)) || (st = inner_contiguous(src, "src", &ns))) return st;
    if (nd != ns)
        return ce_fail(CE_ERR_SHAPE, "copy_rows: dst rows hold %lld elements but src rows %lld", (long long)nd,
                       (long long)ns);
    int64_t n = src->shape[0];
    int64_t rows = dst->shape[0];
    if (row0 < 0 || row0 + n > rows)
        return ce_fail(CE_ERR_RANGE, "copy_rows: rows %lld..%lld do not fit in %lld rows", (long long)row0,
                       (long long)(row0 + n), (long long)rows);
    for (int64_t i = 0; i < n; i++) {
        char *d = (char *)dst->data + (row0 + i) * dst->stride[0];
        const char *s = (const char *)src->data + i * src->stride[0];
        if (dst->dtype == src->dtype)
            memcpy(d, s, (size_t)(nd * ce_dtype_block_bytes(dst->dtype)));
        else if ((st = ce_convert(dst->dtype, d, src->dtype, s, nd)))
            return st;
    }
    return CE_OK;
}
