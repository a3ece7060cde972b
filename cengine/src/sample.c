/* sample.c - token sampling over one row of logits: repetition penalty, then
 * temperature / top-k / min-p / top-p and a draw from the caller's uniform number.
 *
 * Sampling runs once per generated token on one row, so it stays single-threaded; the cost that
 * matters is sorting, and only the tokens that can still be chosen get sorted. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include "internal.h"

ce_status ce_repetition_penalty(ce_tensor *logits, const ce_tensor *ids, float penalty) {
    CE_PROFILE(CE_OP_REPETITION_PENALTY, .t = {logits, ids});
    ce_status st;
    if ((st = ce_check_out(logits, "repetition_penalty", "logits", CE_F32))) return st; /* in place */
    if ((st = ce_check(ids, "repetition_penalty", "ids", CE_I32))) return st;
    if (!(penalty > 0.0f) || !isfinite(penalty))
        return ce_fail(CE_ERR_ARG, "repetition_penalty: penalty must be a positive number, got %g", penalty);
    if (!ce_tensor_is_contiguous(logits) || !ce_tensor_is_contiguous(ids))
        return ce_fail(CE_ERR_LAYOUT, "repetition_penalty: tensors must be contiguous");
    int64_t V = ce_tensor_numel(logits), n = ce_tensor_numel(ids);
    float *l = (float *)logits->data;
    const int32_t *id = (const int32_t *)ids->data;
    for (int64_t i = 0; i < n; i++)
        if (id[i] < 0 || id[i] >= V)
            return ce_fail(CE_ERR_RANGE, "repetition_penalty: id %d at %lld is outside 0..%lld", id[i],
                           (long long)i, (long long)(V - 1));
    if (penalty == 1.0f || n == 0) return CE_OK;
    unsigned char *seen = calloc((size_t)V, 1);
    if (!seen) return ce_fail(CE_ERR_NOMEM, "repetition_penalty: out of memory");
    for (int64_t i = 0; i < n; i++) {
        int32_t t = id[i];
        if (seen[t]) continue;
        seen[t] = 1;
        l[t] = l[t] > 0 ? l[t] / penalty : l[t] * penalty;
    }
    free(seen);
    return CE_OK;
}

typedef struct { float p; int32_t id; } cand;

static int cand_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

ce_status ce_sample(const ce_tensor *logits, float temperature, int64_t top_k, float top_p, float min_p,
                    double r, int32_t *out_id) {
    CE_PROFILE(CE_OP_SAMPLE, .t = {logits});
    ce_status st;
    if ((st = ce_check(logits, "sample", "logits", CE_F32))) return st;
    if (!out_id) return ce_fail(CE_ERR_ARG, "sample: out_id is NULL");
    if (!ce_tensor_is_contiguous(logits)) return ce_fail(CE_ERR_LAYOUT, "sample: logits must be contiguous");
    int64_t V = ce_tensor_numel(logits);
    if (V < 1) return ce_fail(CE_ERR_SHAPE, "sample: logits are empty");
    if (isnan(temperature) || top_k < 0 || !(top_p > 0.0f && top_p <= 1.0f) || !(min_p >= 0.0f && min_p <= 1.0f)
        || !(r >= 0.0 && r < 1.0))
        return ce_fail(CE_ERR_ARG, "sample: invalid settings (temperature %g, top_k %lld, top_p %g, min_p %g, r %g)",
                       temperature, (long long)top_k, top_p, min_p, r);
    const float *l = (const float *)logits->data;
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (l[i] > l[best]) best = i;
    if (!isfinite(l[best]))
        return ce_fail(CE_ERR_ARG, "sample: the largest logit is %g; logits must be finite numbers", l[best]);
    if (temperature <= 0.0f || top_k == 1) {
        *out_id = (int32_t)best;
        return CE_OK;
    }
    float inv_t = 1.0f / temperature, lmax = l[best];
    /* p_i / p_max = exp((l_i - l_max) / T); anything under this ratio cannot matter */
    float floor_ratio = min_p > 0.0f ? min_p : 1e-9f;
    float cut = lmax + logf(floor_ratio) * temperature;
    cand *c = malloc((size_t)V * sizeof *c);
    if (!c) return ce_fail(CE_ERR_NOMEM, "sample: out of memory");
    int64_t n = 0;
    for (int64_t i = 0; i < V; i++)
        if (l[i] >= cut) {
            c[n].p = expf((l[i] - lmax) * inv_t);
            c[n].id = (int32_t)i;
            n++;
        }
    qsort(c, (size_t)n, sizeof *c, cand_desc);
    if (top_k > 0 && top_k < n) n = top_k;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) total += c[i].p;
    if (top_p < 1.0f) {
        double acc = 0.0;
        int64_t keep = n;
        for (int64_t i = 0; i < n; i++) {
            acc += c[i].p;
            if (acc >= top_p * total) { keep = i + 1; break; }
        }
        n = keep;
        total = 0.0;
        for (int64_t i = 0; i < n; i++) total += c[i].p;
    }
    double target = r * total, acc = 0.0;
    int32_t pick = c[n - 1].id;
    for (int64_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (target < acc) { pick = c[i].id; break; }
    }
    free(c);
    *out_id = pick;
    return CE_OK;
}
