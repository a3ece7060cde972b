/*
 * cengine.h - the one public header of the cengine inference engine.
 *
 * A five-minute tour:
 *
 *     ce_tensor *x = NULL, *w = NULL, *y = NULL;
 *     int64_t xs[2] = {1, 576}, ws[2] = {1536, 576}, ys[2] = {1, 1536};
 *     ce_tensor_new(&x, CE_F32, 2, xs);              // owned, zero-filled
 *     ce_tensor_wrap(&w, CE_Q4_1, 2, ws, mapped);    // borrowed: points into an mmap, never copied
 *     ce_tensor_new(&y, CE_F32, 2, ys);
 *     if (ce_matmul(y, x, w, NULL) != CE_OK)         // y = x @ w^T  (a Linear layer)
 *         fprintf(stderr, "%s\n", ce_last_error());
 *     float *out = (float *)y->data;                 // read the result
 *     ce_tensor_free(x); ce_tensor_free(w); ce_tensor_free(y);
 *
 * Conventions
 *  - Shapes are outermost first, like PyTorch: a matrix is {rows, cols}. A Linear weight is
 *    {out_features, in_features}, so every weight row is one output and is contiguous.
 *  - Strides are in bytes. Block-quantised dtypes (Q8_0, Q4_0, Q4_1) store each row as whole
 *    32-element blocks, bit-exact to the GGUF layout, so a GGUF tensor is used in place.
 *  - Every fallible call returns a ce_status (CE_OK = 0, errors < 0) and leaves a message for
 *    ce_last_error() (thread-local). Nothing here calls exit() or abort() on bad input.
 *  - Ops run on one persistent thread pool; each kernel splits rows by (thread index, count) in a
 *    fixed way, so results do not depend on the thread count.
 *
 * The block between CENGINE_CDEF_BEGIN/END is fed to cffi's cdef after preprocessing with
 * -DCENGINE_CDEF, so the Python binding cannot drift from this header.
 */
#ifndef CENGINE_H
#define CENGINE_H

#ifndef CENGINE_CDEF
#include <stddef.h>
#include <stdint.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* CENGINE_CDEF_BEGIN */

enum { CE_ABI_VERSION = 1, CE_MAX_DIMS = 4, CE_BLOCK = 32, CE_MATMUL_MAX = 8 };

typedef int ce_status;
enum {
    CE_OK = 0,
    CE_ERR_ARG = -1,      /* null pointer, bad enum, bad scalar argument */
    CE_ERR_SHAPE = -2,    /* shapes do not fit the op */
    CE_ERR_DTYPE = -3,    /* a dtype the op does not accept */
    CE_ERR_RANGE = -4,    /* an index (token id, position, k) out of range */
    CE_ERR_NOMEM = -5,    /* allocation failed */
    CE_ERR_LAYOUT = -6,   /* strides the op cannot use (needs contiguous rows), misaligned blocks */
    CE_ERR_INTERNAL = -7  /* a broken invariant; please report */
};

typedef enum {
    CE_F32 = 0,
    CE_F16 = 1,
    CE_BF16 = 2,
    CE_Q8_0 = 3,   /* 32 x int8 + f16 scale: 34 bytes per block */
    CE_Q4_0 = 4,   /* 32 x 4-bit (offset 8) + f16 scale: 18 bytes per block */
    CE_Q4_1 = 5,   /* 32 x 4-bit + f16 scale + f16 min: 20 bytes per block */
    CE_I32 = 6,    /* token ids, positions, indices */
    CE_DTYPE_COUNT = 7
} ce_dtype;

typedef enum {
    CE_ROPE_ADJACENT = 0, /* rotate pairs (x[2i], x[2i+1]): GGUF / Meta Llama layout */
    CE_ROPE_HALF = 1      /* rotate pairs (x[i], x[i+d/2]): Hugging Face layout */
} ce_rope_mode;

/* Every public op, for the profiler's counters (ce_profile_read) and traces. The name table in
 * tensor.c (ce_op_name) is checked against CE_OP_COUNT. */
typedef enum {
    CE_OP_MATMUL = 0,
    CE_OP_EMBEDDING,
    CE_OP_RMSNORM,
    CE_OP_ROPE,
    CE_OP_SOFTMAX,
    CE_OP_SILU,
    CE_OP_GELU,
    CE_OP_SILU_MUL,
    CE_OP_ADD,
    CE_OP_MUL,
    CE_OP_SCALE,
    CE_OP_ATTENTION,
    CE_OP_ARGMAX,
    CE_OP_TOPK,
    CE_OP_COPY,
    CE_OP_MATMUL_N,
    CE_OP_COPY_ROWS,
    CE_OP_CONVERT,
    CE_OP_REPETITION_PENALTY,
    CE_OP_SAMPLE,
    CE_OP_ATTENTION_SEQS,
    CE_OP_COUNT
} ce_op;

/* CE_TENSOR_READ_ONLY: the data is memory the caller may not write (a read-only mapping, an
 * immutable buffer). Every op refuses such a tensor as an output or in-place operand (CE_ERR_ARG)
 * instead of faulting on the first store; views of it inherit the flag. The caller sets it. */
enum { CE_TENSOR_OWNS_DATA = 1, CE_TENSOR_READ_ONLY = 2 };

typedef struct ce_tensor {
    void *data;              /* first element; owned (freed with the tensor) or borrowed */
    int32_t dtype;           /* ce_dtype */
    int32_t ndim;            /* 1..CE_MAX_DIMS */
    int64_t shape[4];        /* outermost first; unused dims are 1 */
    int64_t stride[4];       /* bytes between consecutive indices of each dim */
    int32_t flags;           /* CE_TENSOR_OWNS_DATA | CE_TENSOR_READ_ONLY */
} ce_tensor;

/* ---- build, errors, threads ---- */
const char *ce_version(void);          /* "0.1.0" */
int ce_abi_version(void);              /* CE_ABI_VERSION the library was built with */
const char *ce_build_info(void);       /* compiler flags and SIMD features compiled in */
const char *ce_source_hash(void);      /* sha256 of the sources it was built from */
const char *ce_last_error(void);       /* message of the last failed call on this thread */
const char *ce_status_name(ce_status s);
const char *ce_dtype_name(int dtype);
const char *ce_op_name(int op);

ce_status ce_set_threads(int n);       /* 1..256; the pool is rebuilt only when n changes */
int ce_get_threads(void);
int ce_default_threads(void);          /* online cores */
void ce_set_simd(int enabled);         /* 0: scalar reference kernels (tests), 1: SIMD if present */
int ce_get_simd(void);                 /* 1 when SIMD kernels are selected and available */
/* Vector width of the GEMV, packed-GEMM and attention kernels: 512 (where compiled in with AVX-512F/VL and
 * supported by the CPU) or 256 (AVX2). Both give the same bits. CE_VECTOR_AUTO: the start-up
 * probe's choice (the default: 512 only where 512-bit FMAs give >= 1.3x the flops of 256-bit ones,
 * as on Intel server cores; env TOOLKIT_VECTOR_BITS=256|512|auto sets the start value).
 * CE_ERR_ARG for other values or when 512 is unavailable. */
enum { CE_VECTOR_AUTO = 0 };
ce_status ce_set_vector_bits(int bits);
int ce_get_vector_bits(void);          /* the width in use (but see CE_VK_*): 256 or 512 */
int ce_get_vector_bits_setting(void);  /* CE_VECTOR_AUTO, 256 or 512 */
/* The kernel families whose width is chosen apart (vecwidth.c's table): with CE_VECTOR_AUTO the
 * GEMV's F32/F16/BF16 tiles over M > 2 rows of x run at 512 wherever the 512-bit kernels can
 * (they gain from the register file even where 512-bit FMAs give no more flops), the others at
 * the probe's width (ce_get_vector_bits); a forced width applies to all. */
enum { CE_VK_GEMV_FLOAT_DECODE, CE_VK_GEMV_FLOAT_TILES, CE_VK_GEMV_QUANT, CE_VK_GEMM, CE_VK_ATTENTION, CE_VK_COUNT };
int ce_get_kernel_vector_bits(int kernel);     /* CE_VK_*: 256 or 512; -1 for another value */
const char *ce_vector_kernel_name(int kernel); /* "gemv_float_tiles", ...; NULL for another value */
double ce_vector_probe_ns(int bits);   /* the probe's ns per FMA instruction of that width (0: not run) */
const char *ce_vector_512_unavailable(void); /* why 512 cannot run here, or "" */
/* Q4 GEMV unpacking. Both paths give the same bits; CE_Q4_SUBNORMAL (nibbles read in place as
 * subnormal floats) is fastest where the CPU takes subnormal FMA operands at full speed (AMD Zen),
 * CE_Q4_NORMAL (converted to normal floats) where it does not (Intel). CE_Q4_AUTO: the start-up
 * probe's choice (the default; env TOOLKIT_Q4_PATH=normal|subnormal|auto sets the start value). */
enum { CE_Q4_AUTO = 0, CE_Q4_NORMAL = 1, CE_Q4_SUBNORMAL = 2 };
ce_status ce_set_q4_path(int path);
int ce_get_q4_path(void);              /* the path in use: CE_Q4_NORMAL or CE_Q4_SUBNORMAL */
int ce_get_q4_path_setting(void);      /* CE_Q4_AUTO or the forced path */
double ce_q4_probe_ns(int path);       /* the probe's ns per FMA with that path's operands */
/* 1 (default): every matmul row's result has the same bits whatever the number of rows M of x and
 * its position (a sequence's logits do not depend on what shares its batch). 0: M >= 8 may run a
 * packed GEMM whose rounding differs (for comparisons; not used by the models). */
void ce_set_batch_invariant(int enabled);
int ce_get_batch_invariant(void);

/* ---- dtypes ---- */
int ce_dtype_is_block(int dtype);      /* 1 for Q8_0, Q4_0, Q4_1 */
int64_t ce_dtype_block_size(int dtype);/* elements per block (32, or 1) */
int64_t ce_dtype_block_bytes(int dtype);/* bytes per block (or per element) */
ce_status ce_row_bytes(int dtype, int64_t n, int64_t *out_bytes); /* n must fill whole blocks */

/* Convert n contiguous elements between any two dtypes (quantize / dequantize / cast). */
ce_status ce_convert(int dst_dtype, void *dst, int src_dtype, const void *src, int64_t n);

/* ---- tensors ---- */
ce_status ce_tensor_new(ce_tensor **out, int dtype, int ndim, const int64_t *shape);
ce_status ce_tensor_wrap(ce_tensor **out, int dtype, int ndim, const int64_t *shape, void *data);
ce_status ce_tensor_view(ce_tensor **out, const ce_tensor *src, int ndim, const int64_t *shape,
                         const int64_t *stride, int64_t byte_offset);
void ce_tensor_free(ce_tensor *t);
int64_t ce_tensor_numel(const ce_tensor *t);
int64_t ce_tensor_nbytes(const ce_tensor *t);   /* bytes spanned by a contiguous tensor */
int ce_tensor_is_contiguous(const ce_tensor *t);

/* ---- ops: out = f(inputs). Outputs are F32 unless stated; shapes are checked. ---- */

/* out[..., N] = x[..., K] @ w[N, K]^T (+ bias[N]); x F32, w any dtype, bias F32 or NULL.
 * Rows of x may be strided; w rows must be contiguous. One row of x: GEMV; many: blocked GEMM. */
ce_status ce_matmul(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, const ce_tensor *bias);

/* out[i] = x @ w[i]^T (+ bias[i]) for i < n <= CE_MATMUL_MAX, one x against several weights (a
 * layer's q, k and v projections, or gate and up): the same results, bit for bit, as n ce_matmul
 * calls. With few rows of x the weights' rows run as one job, so the threads start once and never
 * wait for each other between weights. bias may be NULL, or hold NULLs. */
ce_status ce_matmul_n(int n, ce_tensor *const *out, const ce_tensor *x, const ce_tensor *const *w,
                      const ce_tensor *const *bias);

/* out[n, D] = w[ids[n], :]; w any dtype, ids I32 with any shape of n elements. */
ce_status ce_embedding(ce_tensor *out, const ce_tensor *w, const ce_tensor *ids);

/* out = x / sqrt(mean(x^2) + eps) * w over the last dim; w F32 [D] or NULL. */
ce_status ce_rmsnorm(ce_tensor *out, const ce_tensor *x, const ce_tensor *w, float eps);

/* In place on x[T, H, D] (or [T, H*D] with head_dim): rotate the first n_rot dims of every head
 * by angle pos[t] * theta^(-2i/n_rot). pos is I32 [T]. */
ce_status ce_rope(ce_tensor *x, const ce_tensor *pos, int64_t head_dim, int64_t n_rot, float theta,
                  int mode);

/* out = softmax(x * scale) over the last dim. */
ce_status ce_softmax(ce_tensor *out, const ce_tensor *x, float scale);

ce_status ce_silu(ce_tensor *out, const ce_tensor *x);
ce_status ce_gelu(ce_tensor *out, const ce_tensor *x);   /* tanh approximation, as GPT-2 */
ce_status ce_silu_mul(ce_tensor *out, const ce_tensor *gate, const ce_tensor *up); /* SwiGLU */
ce_status ce_add(ce_tensor *out, const ce_tensor *a, const ce_tensor *b); /* b may broadcast rows */
ce_status ce_mul(ce_tensor *out, const ce_tensor *a, const ce_tensor *b); /* b may broadcast rows */
ce_status ce_scale(ce_tensor *out, const ce_tensor *x, float s);

/* Causal grouped-query attention of T new queries against a KV cache.
 *   q      [T, Hq, D]   F32
 *   k, v   [S, Hkv, D]  F32 or F16 (the cache; only the first n_kv rows are read), Hq % Hkv == 0
 *   pos    I32 [T]: absolute position of each query; query t sees keys 0..pos[t] (< n_kv)
 *   out    [T, Hq, D]
 *   probs  NULL, or F32 [Hq, T, n_kv]: the softmax probabilities (zeros where masked)
 * scale multiplies q.k (usually 1/sqrt(D)). */
ce_status ce_attention(ce_tensor *out, const ce_tensor *q, const ce_tensor *k, const ce_tensor *v,
                       const ce_tensor *pos, int64_t n_kv, float scale, ce_tensor *probs);

/* The attention of several sequences' new rows in one call (a batched decode step, or prefill
 * chunks side by side), each against its own KV cache, with the threads sharing all their work.
 * Sequence s owns rows [r_s, r_s + rows[s]) of q, k_new, v_new, pos and out (r_s = rows[0] + ...
 * + rows[s - 1]); its positions are consecutive, from p_s = pos[r_s]. Unless k_new and v_new are
 * NULL, its new keys and values are first written to rows p_s .. of k_cache[s] / v_cache[s]
 * (converted to the cache's dtype); then its queries attend to its keys 0..pos[t]. Each
 * sequence's output has exactly the bits ce_attention gives it alone (n_kv = p_s + rows[s]).
 * Every argument is checked before any cache is written.
 *   q, out [N, Hq, D] F32; k_new, v_new [N, Hkv, D] F32; pos I32 [N];
 *   k_cache[s], v_cache[s] [S_s, Hkv, D] F32 or F16, one pair per sequence, none shared. */
ce_status ce_attention_seqs(ce_tensor *out, const ce_tensor *q, const ce_tensor *k_new, const ce_tensor *v_new,
                            const ce_tensor *pos, int64_t nseq, const int64_t *rows, ce_tensor *const *k_cache,
                            ce_tensor *const *v_cache, float scale);

/* out I32 [R]: index of the max of each row of x[R, N] (first one on ties). */
ce_status ce_argmax(ce_tensor *out, const ce_tensor *x);
/* values F32 [R, k], indices I32 [R, k]: the k largest of each row, descending (stable on ties). */
ce_status ce_topk(ce_tensor *values, ce_tensor *indices, const ce_tensor *x, int64_t k);

/* dst = src elementwise with dtype conversion; same numel, any strides on F32/F16/BF16/I32 rows. */
ce_status ce_copy(ce_tensor *dst, const ce_tensor *src);

/* dst[row0 + i] = src[i] for every i < src->shape[0], converting dtype (F32/F16/BF16). Both have
 * the same dims after the first; any strides, except that the last dim is contiguous. Appends new
 * keys/values to a KV cache without making a view per layer. */
ce_status ce_copy_rows(ce_tensor *dst, int64_t row0, const ce_tensor *src);

/* ---- sampling (one row of logits; deterministic: the caller supplies the random draw) ---- */
/* logits[ids[i]] is divided by penalty where positive, multiplied where negative (CTRL / HF
 * convention); each distinct id once. logits F32 [V], ids I32 [n] (n may be 0). In place. */
ce_status ce_repetition_penalty(ce_tensor *logits, const ce_tensor *ids, float penalty);
/* Picks one token from logits F32 [V]: temperature <= 0 is greedy (argmax); otherwise softmax of
 * logits / temperature restricted by top_k (0 = off), min_p (0 = off; drop p < min_p * p_max) and
 * top_p (1 = off; smallest prefix of the descending distribution with mass >= top_p), then the
 * token at cumulative mass r * total (r uniform in [0, 1)). Ties keep the lower id first. */
ce_status ce_sample(const ce_tensor *logits, float temperature, int64_t top_k, float top_p, float min_p,
                    double r, int32_t *out_id);

/* ---- profiler ----
 * When enabled, every op function above (one per ce_op; tensor, dtype and settings calls are not
 * ops) adds to its counters on return: calls, wall time
 * as the caller sees it (monotonic ns, threads included), bytes read and written (weights by
 * their stored dtype; each operand once, as a kernel streaming it from memory would), FLOPs (a
 * multiply-add is 2; attention counts its two dot products, 4 * D per query, head and key). A
 * call from inside another op (ce_copy_rows converting through ce_convert) is part of the outer
 * one. With an event log, each call also appends one ce_prof_event, tagged with the calling
 * thread's region (ce_profile_set_region; the caller gives regions their meaning). Calls that
 * fail count only in `failed`. Off, an op pays one predictable branch on entry and one on exit;
 * built with -DCE_NO_PROFILE (TOOLKIT_NO_PROFILE=1), not even that, and ce_profile_enable fails.
 * Counters are updated by the calling thread under a lock (never by pool workers), so calls
 * from several threads are counted correctly. */
typedef struct ce_prof_stats {
    int64_t calls, failed;     /* successful calls; failed calls (not in the other fields) */
    int64_t ns;                /* wall time, caller's view */
    int64_t bytes_read, bytes_written;
    int64_t weight_bytes;      /* the part of bytes_read that is weights (matmul w, embedding rows, norm w) */
    int64_t flops;
} ce_prof_stats;

typedef struct ce_prof_event {
    int32_t op;                /* ce_op */
    int32_t region;            /* the calling thread's region when the call began */
    int32_t thread;            /* 1, 2, ...: the order in which threads first recorded an event */
    int32_t pad_;
    int64_t t0_ns, dur_ns;     /* start (ce_profile_now_ns's clock) and wall time */
    int64_t bytes_read, bytes_written, weight_bytes, flops;
} ce_prof_event;

/* on: count (1) or stop counting (0; counters and log are kept). log_capacity: the most events
 * kept until the next reset (0: counters only); later events are counted in ce_profile_dropped. */
ce_status ce_profile_enable(int on, int64_t log_capacity);
int ce_profile_enabled(void);
void ce_profile_reset(void);           /* zero the counters, empty the log */
/* Copies the counters of ops 0..n-1 into out[n] (n <= CE_OP_COUNT). */
ce_status ce_profile_read(ce_prof_stats *out, int n);
/* Copies up to max logged events, from event `first` on, into out; returns how many (< 0: error). */
int64_t ce_profile_events(ce_prof_event *out, int64_t first, int64_t max);
int64_t ce_profile_event_count(void);
int64_t ce_profile_dropped(void);      /* events not logged because the log was full */
void ce_profile_set_region(int32_t region); /* this thread's region tag for events (0 = none) */
int32_t ce_profile_region(void);
int64_t ce_profile_now_ns(void);       /* CLOCK_MONOTONIC in ns: the events' clock */
int ce_profile_compiled(void);         /* 0 when built with -DCE_NO_PROFILE */

/* ---- benchmarks ---- */
/* Streams a buffer of nbytes, reps times, over all pool threads; returns seconds (<0 on error). */
double ce_bench_read_bandwidth(int64_t nbytes, int reps);
double ce_now(void);                   /* monotonic seconds */

/* CENGINE_CDEF_END */

#ifdef __cplusplus
}
#endif
#endif /* CENGINE_H */
