"""Functional ops: thin wrappers that allocate an output (unless `out=` is given) and call the engine.

The engine validates shapes and dtypes and reports errors by status code; these wrappers only check
what they need to allocate the output, so a hot-path call costs one cffi call plus a few attribute
reads. Pass `out=` (a preallocated Tensor) to avoid the allocation on hot paths.
"""
import math

from toolkit import errors

from ._lib import check, error_for, ffi, lib
from .tensor import Tensor

_NULL = ffi.NULL
_ROPE_MODES = {"adjacent": lib.CE_ROPE_ADJACENT, "half": lib.CE_ROPE_HALF}


def _t(x, name):
    if not isinstance(x, Tensor):
        raise errors.ArgumentTypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    return x._ct


def _bad(**args):
    """The typed error for the first argument that is not a Tensor (hot paths read `._ct` directly
    and call this only when that fails)."""
    for name, value in args.items():
        if value is not None and not isinstance(value, Tensor):
            return errors.ArgumentTypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    return errors.ArgumentTypeError("arguments must be Tensors")


def _ids(ids, name="ids"):
    """An I32 tensor from a Tensor or a list of ints."""
    if isinstance(ids, Tensor):
        return ids
    if isinstance(ids, (list, tuple, range)):
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise errors.ArgumentTypeError(f"{name} must be ints, got {i!r}")
        t = Tensor((len(ids),), "I32")
        return t.load(list(ids)) if len(ids) else t
    raise errors.ArgumentTypeError(f"{name} must be a Tensor or a list of ints, got {type(ids).__name__}")


def _like(x, last=None):
    shape = x.shape if last is None else x.shape[:-1] + (last,)
    return Tensor(shape, "F32")


def _matmul_out(x, w):
    """A new output for x @ w^T (the engine checks the rest)."""
    if w.ndim != 2:
        raise errors.ShapeError(f"matmul weight must be 2-D [N, K], got shape {w.shape}")
    return _like(x, w.shape[0])


def matmul(x, w, bias=None, out=None):
    """out[..., N] = x[..., K] @ w[N, K]^T (+ bias): a Linear layer; w may be any weight dtype."""
    # The hot path of every forward pass: ~200 calls per decoded token, so attribute reads
    # instead of isinstance checks, and the status test inline.
    try:
        xc, wc = x._ct, w._ct
        bc = _NULL if bias is None else bias._ct
        if out is None:
            out = _matmul_out(x, w)
        oc = out._ct
    except AttributeError:
        raise _bad(x=x, w=w, bias=bias, out=out) from None
    rc = lib.ce_matmul(oc, xc, wc, bc)
    if rc:
        raise error_for(rc)
    return out


linear = matmul

MATMUL_MAX = lib.CE_MATMUL_MAX


def matmul_n(x, ws, biases=None, outs=None):
    """[x @ w^T (+ b) for w, b in zip(ws, biases)]: several weights against one x in one engine call
    (a layer's q/k/v projections, or gate and up). The results are bit-identical to separate
    `matmul` calls; with a few rows of x the engine runs all the weights' rows as one job, so a
    decode step pays one thread start-up instead of one per weight. Up to MATMUL_MAX weights;
    biases and outs, when given, are sequences of the same length (biases may hold None)."""
    if not isinstance(ws, (list, tuple)) or not ws:
        raise errors.ArgumentTypeError(f"ws must be a non-empty list of weight Tensors, got {ws!r:.80}")
    n = len(ws)
    if n > MATMUL_MAX:
        raise errors.InvalidArgumentError(f"matmul_n takes at most {MATMUL_MAX} weights, got {n}")
    for name, seq in (("biases", biases), ("outs", outs)):
        if seq is not None and (not isinstance(seq, (list, tuple)) or len(seq) != n):
            raise errors.ArgumentTypeError(f"{name} must be a list of {n} (one per weight), got {seq!r:.80}")
    try:
        xc = x._ct
        wc = [w._ct for w in ws]
        bc = _NULL if biases is None else [_NULL if b is None else b._ct for b in biases]
        if outs is None:
            outs = [_matmul_out(x, w) for w in ws]
        oc = [o._ct for o in outs]
    except AttributeError:
        args = {"x": x, **{f"ws[{i}]": w for i, w in enumerate(ws)},
                **{f"biases[{i}]": b for i, b in enumerate(biases or ()) if b is not None},
                **{f"outs[{i}]": o for i, o in enumerate(outs or ())}}
        name = next((k for k, v in args.items() if not isinstance(v, Tensor)), None)
        if name is None:
            raise
        raise errors.ArgumentTypeError(f"{name} must be a Tensor, got {type(args[name]).__name__}") from None
    rc = lib.ce_matmul_n(n, oc, xc, wc, bc)
    if rc:
        raise error_for(rc)
    return list(outs)


def embedding(w, ids, out=None):
    """out[n, D] = w[ids[n]]; ids is an I32 Tensor or a list of ints; w any dtype."""
    wc = _t(w, "w")
    ids = _ids(ids)
    if out is None:
        if w.ndim != 2:
            raise errors.ShapeError(f"embedding weight must be 2-D [vocab, D], got shape {w.shape}")
        out = Tensor((ids.numel, w.shape[1]), "F32")
    check(lib.ce_embedding(_t(out, "out"), wc, ids._ct))
    return out


def rms_norm(x, w=None, eps=1e-5, out=None):
    """x / sqrt(mean(x^2) + eps) * w over the last dim."""
    try:
        xc = x._ct
        wc = _NULL if w is None else w._ct
        if out is None:
            out = _like(x)
        oc = out._ct
    except AttributeError:
        raise _bad(x=x, w=w, out=out) from None
    rc = lib.ce_rmsnorm(oc, xc, wc, eps)
    if rc:
        raise error_for(rc)
    return out


def rope_(x, pos, head_dim, theta=10000.0, n_rot=None, mode="adjacent"):
    """Rotary position embedding, in place on x [T, H, D] (or [T, H*D]); returns x.

    mode "adjacent" rotates pairs (2i, 2i+1) as GGUF/Meta Llama do; "half" rotates (i, i+D/2) as HF.
    """
    m = _ROPE_MODES.get(mode)
    if m is None:
        raise errors.InvalidArgumentError(f"rope mode must be 'adjacent' or 'half', got {mode!r}")
    pos = _ids(pos, "pos")
    check(lib.ce_rope(_t(x, "x"), pos._ct, head_dim, head_dim if n_rot is None else n_rot, theta, m))
    return x


def softmax(x, scale=1.0, out=None):
    xc = _t(x, "x")
    if out is None:
        out = _like(x)
    check(lib.ce_softmax(_t(out, "out"), xc, scale))
    return out


def _unary(fn, x, out):
    xc = _t(x, "x")
    if out is None:
        out = _like(x)
    check(fn(_t(out, "out"), xc))
    return out


def silu(x, out=None):
    return _unary(lib.ce_silu, x, out)


def gelu(x, out=None):
    return _unary(lib.ce_gelu, x, out)


def _binary(fn, a, b, out):
    try:
        ac, bc = a._ct, b._ct
        if out is None:
            out = _like(a)
        oc = out._ct
    except AttributeError:
        raise _bad(a=a, b=b, out=out) from None
    rc = fn(oc, ac, bc)
    if rc:
        raise error_for(rc)
    return out


def silu_mul(gate, up, out=None):
    """SwiGLU: silu(gate) * up."""
    return _binary(lib.ce_silu_mul, gate, up, out)


def add(a, b, out=None):
    """a + b; b has a's shape or is one row broadcast over a's rows."""
    return _binary(lib.ce_add, a, b, out)


def mul(a, b, out=None):
    """a * b; b has a's shape or is one row broadcast over a's rows."""
    return _binary(lib.ce_mul, a, b, out)


def scale(x, s, out=None):
    xc = _t(x, "x")
    if out is None:
        out = _like(x)
    check(lib.ce_scale(_t(out, "out"), xc, s))
    return out


def scaled_dot_product_attention(q, k, v, pos=None, n_kv=None, scale=None, out=None, return_probs=False,
                                 probs=None):
    """Causal grouped-query attention of queries q [T, Hq, D] over keys/values [S, Hkv, D].

    Only the first n_kv rows of k/v are read (default: all S). pos[t] is the absolute position of
    query t (default: the last T positions, n_kv - T .. n_kv - 1). Returns out [T, Hq, D], or
    (out, probs [Hq, T, n_kv]) with return_probs=True.
    """
    qc, kc, vc = _t(q, "q"), _t(k, "k"), _t(v, "v")
    if q.ndim != 3 or k.ndim != 3:
        raise errors.ShapeError(f"attention needs q [T, Hq, D] and k/v [S, Hkv, D], got {q.shape} and {k.shape}")
    T = q.shape[0]
    if n_kv is None:
        n_kv = k.shape[0]
    if pos is None:
        if T > n_kv:
            raise errors.ShapeError(f"{T} queries but only {n_kv} keys")
        pos = list(range(n_kv - T, n_kv))
    pos = _ids(pos, "pos")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    if out is None:
        out = _like(q)
    if return_probs and probs is None:
        probs = Tensor((q.shape[1], T, n_kv), "F32")
    pc = _NULL if probs is None else _t(probs, "probs")
    check(lib.ce_attention(_t(out, "out"), qc, kc, vc, pos._ct, n_kv, scale, pc))
    return (out, probs) if return_probs else out


def attention_seqs(q, pos, rows, k_caches, v_caches, k_new=None, v_new=None, scale=None, out=None):
    """The attention of several sequences' new rows in one engine call, each against its own cache.

    q [N, Hq, D] stacks the sequences' rows (rows[s] of them for sequence s, in order) and pos [N]
    their positions (consecutive within a sequence). With k_new/v_new [N, Hkv, D], each sequence's
    new keys and values are first written into k_caches[s]/v_caches[s] at its positions. Returns
    out [N, Hq, D]; each sequence's rows have the bits scaled_dot_product_attention gives it alone.
    The threads share every sequence's work, so a batched decode step is one call, not one per
    sequence. k_caches/v_caches may be a prepared `KVSet` (reused across calls) or lists of Tensors.
    """
    if not isinstance(q, Tensor) or q.ndim != 3:
        raise errors.ShapeError(f"attention_seqs needs q [N, Hq, D], got {q.shape if isinstance(q, Tensor) else type(q).__name__}")
    kv = k_caches if isinstance(k_caches, KVSet) else KVSet(rows, k_caches, v_caches)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[2])
    if out is None:
        out = _like(q)
    pos = _ids(pos, "pos")
    kn = _NULL if k_new is None else _t(k_new, "k_new")
    vn = _NULL if v_new is None else _t(v_new, "v_new")
    check(lib.ce_attention_seqs(_t(out, "out"), q._ct, kn, vn, pos._ct, kv.n, kv.rows, kv.k, kv.v, scale))
    return out


class KVSet:
    """The row counts and cache pointers of attention_seqs' sequences, converted once: a forward
    pass builds one per layer and each call passes it as it is."""

    __slots__ = ("n", "rows", "k", "v", "_keep")

    def __init__(self, rows, k_caches, v_caches):
        rows, k_caches, v_caches = list(rows), list(k_caches), list(v_caches)
        if not rows or len(k_caches) != len(rows) or len(v_caches) != len(rows):
            raise errors.InvalidArgumentError(
                f"attention_seqs needs one row count, k cache and v cache per sequence, got "
                f"{len(rows)}, {len(k_caches)} and {len(v_caches)}")
        for r in rows:
            if isinstance(r, bool) or not isinstance(r, int):
                raise errors.ArgumentTypeError(f"rows must be ints, got {r!r}")
        self.n = len(rows)
        self.rows = ffi.new("int64_t[]", rows)
        self.k = ffi.new("ce_tensor *[]", [_t(t, "k_caches[i]") for t in k_caches])
        self.v = ffi.new("ce_tensor *[]", [_t(t, "v_caches[i]") for t in v_caches])
        self._keep = (k_caches, v_caches)  # the tensors outlive the pointers


def argmax(x):
    """I32 [rows]: index of each row's maximum (first on ties)."""
    xc = _t(x, "x")
    out = Tensor((x.numel // x.shape[-1] if x.shape[-1] else 0,), "I32")
    check(lib.ce_argmax(out._ct, xc))
    return out


def topk(x, k):
    """(values F32 [rows, k], indices I32 [rows, k]): each row's k largest, descending."""
    xc = _t(x, "x")
    if isinstance(k, bool) or not isinstance(k, int):
        raise errors.ArgumentTypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= x.shape[-1]:
        raise errors.IndexOutOfRangeError(f"k must be in 1..{x.shape[-1]}, got {k}")
    rows = x.numel // x.shape[-1]
    values, indices = Tensor((rows, k), "F32"), Tensor((rows, k), "I32")
    check(lib.ce_topk(values._ct, indices._ct, xc, k))
    return values, indices


def all_finite(x):
    """True when every element of x (F32/F16/BF16, any shape) is finite: one engine matmul of its
    rows against a zero row, whose dot product is exactly 0 for finite rows and NaN when a row
    holds an infinity or a NaN (0 * inf = NaN)."""
    rows = x.contiguous().reshape(-1, x.shape[-1]) if x.numel else None
    if rows is None:
        return True
    if rows.dtype != "F32":
        rows = rows.to("F32")
    return all(math.isfinite(v) for v in matmul(rows, Tensor((1, rows.shape[1]))).to_list())  # one per row


def copy_(dst, src):
    """dst[...] = src (same numel; converts dtype); returns dst."""
    check(lib.ce_copy(_t(dst, "dst"), _t(src, "src")))
    return dst


def repetition_penalty_(logits, ids, penalty):
    """In place on logits [V]: each distinct previous id's logit is divided by penalty if positive,
    multiplied if negative (the CTRL / Hugging Face rule). Returns logits."""
    ids = _ids(ids)
    check(lib.ce_repetition_penalty(_t(logits, "logits"), ids._ct, penalty))
    return logits




def sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, r=0.0):
    """One token id from logits [V]; r is the caller's uniform draw in [0, 1), so a seeded
    random.Random gives the same tokens on any thread count. temperature <= 0 is greedy."""
    out = ffi.new("int32_t *")
    check(lib.ce_sample(_t(logits, "logits"), temperature, top_k, top_p, min_p, r, out))
    return out[0]


def copy_rows_(dst, row0, src):
    """dst[row0 : row0 + len(src)] = src (rows = everything after dim 0; converts dtype); returns dst.

    Appending keys/values to a KV cache this way makes no view objects."""
    try:
        rc = lib.ce_copy_rows(dst._ct, row0, src._ct)
    except AttributeError:
        raise _bad(dst=dst, src=src) from None
    if rc:
        raise error_for(rc)
    return dst
