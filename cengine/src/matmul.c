/* matmul.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_matmul(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
