/* embed_copy.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_embedding(ce_tensor *out, const ce_tensor *w, const ce_tensor *ids) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
ce_status ce_copy(ce_tensor *dst, const ce_tensor *src) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
