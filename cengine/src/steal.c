/* steal.c - range stealing: work split evenly between threads, rebalanced when one falls behind.
 *
 * Rows are split evenly, but a thread whose core runs slower (another guest on it, a page walk, an
 * interrupt) would leave the others waiting at the end of every call. So each thread takes its own
 * rows a piece at a time from a (lo, hi) pair it shares with thieves, and a thread that is done
 * steals the upper half of what another has left. Owners take from the bottom and thieves from the
 * top, so the owner's stream stays contiguous and the atomics only contend at the end. Every
 * boundary is a multiple of the caller's `align`, so a kernel that tiles rows in units dividing it
 * tiles each row the same way whoever computes it, and results stay bit-identical for any thread
 * count. Since every thread drains every range before it stops, any subset of the threads
 * computes all rows: a thread kept off its core is simply left out (ce_parallel_dyn). Measured on
 * the GEMV with 2 threads, interleaved A/B: lm-head-sized calls +0-9% (Q8_0) and +0-4% (Q4_1),
 * decode-sized calls unchanged; with another busy program on the machine, decode 2.5x faster
 * (with the pool's dynamic jobs). */
#include "internal.h"

static inline uint64_t rng_pack(int64_t lo, int64_t hi) { return (uint64_t)lo | (uint64_t)hi << 32; }

void ce_steal_init(ce_steal_range *r, int64_t lo, int64_t hi) { atomic_init(&r->v, rng_pack(lo, hi)); }

/* take [lo, hi) from the bottom (owner) or the upper half (thief) of range r; 0 when it is empty */
static int take(_Atomic uint64_t *r, int thief, int64_t align, int64_t min_piece, int64_t *lo, int64_t *hi) {
    uint64_t v = atomic_load_explicit(r, memory_order_relaxed);
    for (;;) {
        int64_t a = (int64_t)(v & 0xFFFFFFFFu), b = (int64_t)(v >> 32), cut;
        if (a >= b) return 0;
        if (!thief) { /* [a, cut): big pieces first, min_piece rows at the end */
            int64_t n = (b - a) / 4 / align * align;
            cut = a + (n < min_piece ? min_piece : n);
            if (cut > b) cut = b;
        } else { /* [cut, b): the upper half, or all of a small rest */
            cut = (a + (b - a) / 2 + align - 1) / align * align;
            if (cut >= b) cut = a;
        }
        uint64_t rest = thief ? rng_pack(a, cut) : rng_pack(cut, b);
        if (atomic_compare_exchange_weak_explicit(r, &v, rest, memory_order_relaxed, memory_order_relaxed)) {
            *lo = thief ? cut : a, *hi = thief ? b : cut;
            return 1;
        }
    }
}

void ce_steal_run(ce_steal_range *ranges, int nranges, int ith, int64_t align, int64_t min_piece,
                  ce_steal_fn fn, void *ctx) {
    int64_t lo, hi;
    if (ith < nranges) {
        _Atomic uint64_t *mine = &ranges[ith].v;
        for (int first = 1; take(mine, 0, align, min_piece, &lo, &hi); first = 0) {
            /* our next piece follows this one: the caller may prefetch on to the end of what is ours */
            int64_t ahead = (int64_t)(atomic_load_explicit(mine, memory_order_relaxed) >> 32);
            fn(ctx, lo, hi, ahead, first);
        }
    }
    /* then the others' rests, until every range is empty: whichever threads run (ce_parallel_dyn
     * may leave late ones out) compute every row */
    for (int k = 1; k < nranges + (ith >= nranges); k++) {
        int r = (ith + k) % nranges;
        while (take(&ranges[r].v, 1, align, min_piece, &lo, &hi)) fn(ctx, lo, hi, hi, 1);
    }
}
