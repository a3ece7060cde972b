/* quant.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_convert(int dst_dtype, void *dst, int src_dtype, const void *src, int64_t n) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
void ce_dequantize_row(int dtype, const void *src, float *dst, int64_t n) { (void)dtype; (void)src; (void)dst; (void)n; }
void ce_quantize_row(int dtype, const float *src, void *dst, int64_t n) { (void)dtype; (void)src; (void)dst; (void)n; }
