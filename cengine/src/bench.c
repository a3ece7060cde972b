#include "internal.h"
double ce_bench_read_bandwidth(int64_t nbytes, int reps) { (void)nbytes; (void)reps; ce_fail(CE_ERR_INTERNAL, "not implemented"); return -1.0; }
