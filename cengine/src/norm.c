/* norm.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_rmsnorm(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, float eps) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_softmax(ce_tensor *out, const ce_tensor *x, float scale) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
