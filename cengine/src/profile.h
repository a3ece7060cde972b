/* profile.h - the one counting point of the engine: CE_PROFILE(op, ...) opens each public op.
 *
 * The macro declares a scope variable whose cleanup runs on every return of the function, so an
 * op is instrumented by one line at its top and its returns stay as they are. Off, it costs a
 * store, a load and a predictable branch on entry and a predictable branch on exit; built with
 * -DCE_NO_PROFILE it is nothing. The op's cost (bytes, FLOPs) is worked out from the arguments
 * it names, in profile.c, only when the call is recorded and only if it succeeded. */
#ifndef CE_PROFILE_H
#define CE_PROFILE_H

#include <stdint.h>
#include "cengine.h"

/* Bumped by ce_fail (and ce_internal_error): a scope whose count moved was a failed call. */
extern _Thread_local unsigned ce_fail_count;

/* What an op's cost is computed from: its tensors (t) and numbers (n), meaning per op. */
typedef struct {
    const void *t[6];
    int64_t n[3];
} ce_prof_args;

typedef struct {
    int64_t t0;          /* ns at entry; 0: not recording (profiling off at entry) */
    int op;
    int nested;          /* inside another op (recorded as part of that one) */
    unsigned fails;      /* ce_fail_count at entry */
    int32_t region;
    ce_prof_args args;
} ce_prof_scope;

#ifdef CE_NO_PROFILE
#define CE_PROFILE(op, ...) ((void)0)
#else
extern int ce_prof_on;
void ce_prof_open(ce_prof_scope *s, int op, const ce_prof_args *args);
void ce_prof_close_slow(ce_prof_scope *s);
static inline void ce_prof_close(ce_prof_scope *s) {
    if (__builtin_expect(s->t0 != 0, 0)) ce_prof_close_slow(s);
}
/* CE_PROFILE(CE_OP_ADD, .t = {out, a, b}): the designated initializers of a ce_prof_args. */
#define CE_PROFILE(op, ...)                                                                        \
    ce_prof_scope ce_prof_scope_ __attribute__((cleanup(ce_prof_close)));                          \
    ce_prof_scope_.t0 = 0;                                                                         \
    if (__builtin_expect(ce_prof_on, 0)) ce_prof_open(&ce_prof_scope_, (op), &(ce_prof_args){__VA_ARGS__})
#endif

#endif
