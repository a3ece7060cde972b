/* attention.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_attention(ce_tensor *out, const ce_tensor *q, const ce_tensor *k, const ce_tensor *v, const ce_tensor *pos, int64_t n_kv, float scale, ce_tensor *probs) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
