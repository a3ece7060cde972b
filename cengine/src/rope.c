/* rope.c - placeholder until implemented: every entry point reports CE_ERR_INTERNAL. */
#include "internal.h"

ce_status ce_rope(ce_tensor *x, const ce_tensor *pos, int64_t head_dim, int64_t n_rot, float theta, int mode) { return ce_fail(CE_ERR_INTERNAL, "%s is not implemented yet", __func__); }
