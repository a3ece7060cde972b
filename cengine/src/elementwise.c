/* elementwise.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_silu(ce_tensor *out, const ce_tensor *x) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_gelu(ce_tensor *out, const ce_tensor *x) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_silu_mul(ce_tensor *out, const ce_tensor *gate, const ce_tensor *up) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_add(ce_tensor *out, const ce_tensor *a, const ce_tensor *b) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_mul(ce_tensor *out, const ce_tensor *a, const ce_tensor *b) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_scale(ce_tensor *out, const ce_tensor *x, float s) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
