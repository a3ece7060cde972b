/* rows.c - copying whole rows into a tensor at a row offset (KV-cache appends). */
#include "internal.h"

static int half_or_f32(int dtype) { return dtype == CE_F32 || dtype == CE_F16 || dtype == CE_BF16; }

ce_status ce_copy_rows(ce_tensor *dst, int64_t row0, const ce_tensor *src) {
    CE_PROFILE(CE_OP_COPY_ROWS, .t = {dst, src}, .n = {row0});
    ce_status st;
    if ((st = ce_check_out(dst, "copy_rows", "dst", -1))) return st;
    if ((st = ce_check(src, "copy_rows", "src", -1))) return st;
    if (!half_or_f32(dst->dtype) || !half_or_f32(src->dtype))
        return ce_fail(CE_ERR_DTYPE, "copy_rows: %s to %s is not supported (F32, F16, BF16)",
                       ce_dtype_name(src->dtype), ce_dtype_name(dst->dtype));
    if (dst->ndim != src->ndim)
        return ce_fail(CE_ERR_SHAPE, "copy_rows: dst has %d dims but src %d", dst->ndim, src->ndim);
    for (int d = 1; d < dst->ndim; d++)
        if (dst->shape[d] != src->shape[d])
            return ce_fail(CE_ERR_SHAPE, "copy_rows: dim %d is %lld in dst but %lld in src", d,
                           (long long)dst->shape[d], (long long)src->shape[d]);
    int64_t n = src->shape[0], rows = dst->shape[0];
    if (row0 < 0 || row0 + n > rows)
        return ce_fail(CE_ERR_RANGE, "copy_rows: rows %lld..%lld do not fit in %lld rows", (long long)row0,
                       (long long)(row0 + n), (long long)rows);
    /* Rows may be strided in every dim but the last (a cache stored head-major is viewed
     * position-major), so copy one last-dim run at a time. */
    int nd = dst->ndim;
    int64_t len = nd > 1 ? dst->shape[nd - 1] : 1;
    int64_t n1 = nd > 2 ? dst->shape[1] : 1, n2 = nd > 3 ? dst->shape[2] : 1;
    size_t run = (size_t)(len * ce_dtype_block_bytes(dst->dtype));
    for (int64_t i = 0; i < n; i++)
        for (int64_t a = 0; a < n1; a++)
            for (int64_t b = 0; b < n2; b++) {
                char *d = (char *)dst->data + (row0 + i) * dst->stride[0];
                const char *s = (const char *)src->data + i * src->stride[0];
                if (nd > 2) { d += a * dst->stride[1]; s += a * src->stride[1]; }
                if (nd > 3) { d += b * dst->stride[2]; s += b * src->stride[2]; }
                if (dst->dtype == src->dtype)
                    memcpy(d, s, run);
                else if ((st = ce_convert(dst->dtype, d, src->dtype, s, len)))
                    return st;
            }
    return CE_OK;
}
