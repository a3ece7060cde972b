/* select.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_argmax(ce_tensor *out, const ce_tensor *x) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_topk(ce_tensor *values, ce_tensor *indices, const ce_tensor *x, int64_t k) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
