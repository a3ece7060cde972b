"""The one place that checks what users pass in: token-id lists, numeric settings, text, request ids.

Every entry point (model forward, plugin tokenize/detokenize, BatchManager, SamplingParams) calls
these, so a NaN id or an absurd ``top_k`` fails the same way everywhere: a typed ``ToolkitError``
that names the argument, raised before anything reaches the tokenizer library or the C engine.
"""
from __future__ import annotations

import math
import numbers
import os
import operator
from collections.abc import Hashable
from typing import Any

from toolkit import errors

# Ids and counts cross into the engine as int32.
INT32_MAX = 2**31 - 1


def _to_list(ids: Any, what: str, error: type | None) -> list:
    if hasattr(ids, "to_list") and hasattr(ids, "shape"):  # an engine Tensor: to_list() is flat
        return ids.to_list()
    if isinstance(ids, (list, tuple, range)):
        return list(ids)
    tolist = getattr(ids, "tolist", None)  # an array of another library (NumPy's), without importing it
    if callable(tolist) and not isinstance(ids, (str, bytes)):
        vals = tolist()
        if isinstance(vals, list):
            if len(vals) == 1 and isinstance(vals[0], list):
                vals = vals[0]  # [1, T]: a batch of one sequence, as TransformerLens's tokens
            if any(isinstance(v, list) for v in vals):
                raise (error or errors.ArgumentTypeError)(
                    f"{what} must be one sequence (1-D, or [1, T]), got {len(vals)} rows")
            return vals
    raise (error or errors.ArgumentTypeError)(
        f"{what} must be a list of ints (or a Tensor), got {type(ids).__name__}")


def as_index(v: Any) -> int | None:
    """v as an int if it is one or is integer-like (NumPy's int64 from an argmax, ...), else None;
    bools are not indices."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def int_like(v: Any) -> Any:
    """v as a plain int if it is integer-like (as_index), else v unchanged for the caller's own
    check to name."""
    i = as_index(v)
    return v if i is None else i


def token_id(v: Any, vocab_size: int | None = None, what: str = "token id",
             error: type | None = None) -> int:
    """One token id as a Python int: an int (or an integer-valued, finite float, the plugin
    guide's convention) in 0 .. vocab_size-1 (0 .. 2**31-1 when the vocabulary is unknown)."""
    if isinstance(v, bool):
        raise (error or errors.ArgumentTypeError)(f"{what} must be an int, got {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v):  # the right type, an impossible value
            raise (error or errors.InvalidArgumentError)(f"{what} {v!r} is not a finite number")
        if v != int(v):
            raise (error or errors.ArgumentTypeError)(f"{what} {v!r} is not a whole number")
        iv = int(v)
    else:
        try:
            iv = operator.index(v)  # int and integer-like (e.g. a NumPy int64) only
        except TypeError:
            raise (error or errors.ArgumentTypeError)(
                f"{what} must be an int, got {type(v).__name__} {v!r:.40}") from None
    hi = INT32_MAX + 1 if vocab_size is None else vocab_size
    if not 0 <= iv < hi:
        raise (error or errors.IndexOutOfRangeError)(f"{what} {iv} is outside 0..{hi - 1}")
    return iv


def token_ids(ids: Any, vocab_size: int | None = None, what: str = "token ids",
              error: type | None = None, allow_empty: bool = True) -> list[int]:
    """A list of token ids (see ``token_id``) from a list, tuple, range or Tensor.

    ``error`` replaces the error types (e.g. TokenizerError for detokenize); None keeps
    ArgumentTypeError for wrong types and IndexOutOfRangeError for ids outside the vocabulary."""
    vals = _to_list(ids, what, error)
    if not vals and not allow_empty:
        raise (error or errors.InvalidArgumentError)(f"{what} is empty: give at least one token")
    out = []
    for i, v in enumerate(vals):
        out.append(token_id(v, vocab_size, f"{what}[{i}]", error))
    return out


def number(name: str, v: Any, lo: float | None = None, hi: float | None = None, *,
           integer: bool = False, lo_open: bool = False, int_max: int = INT32_MAX) -> Any:
    """A numeric argument: type (int, or int/float), finiteness and range [lo, hi] (lo excluded
    with lo_open). Integers are bounded by int_max because they cross into C as int32."""
    if isinstance(v, bool):
        raise errors.ArgumentTypeError(f"{name} must be {'an int' if integer else 'a number'}, got {v!r}")
    if integer:
        try:
            v = operator.index(v)
        except TypeError:
            raise errors.ArgumentTypeError(f"{name} must be an int, got {v!r:.40}") from None
        if abs(v) > int_max:
            raise errors.InvalidArgumentError(f"{name} = {v} is too large (at most {int_max})")
    else:
        if isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
            v = float(v)  # a real of another library (NumPy's float32)
        if not isinstance(v, (int, float)):
            try:
                v = float(operator.index(v))
            except TypeError:
                raise errors.ArgumentTypeError(f"{name} must be a number, got {v!r:.40}") from None
        try:
            f = float(v)
        except OverflowError:
            raise errors.InvalidArgumentError(f"{name} = {v} is too large") from None
        if not math.isfinite(f):
            raise errors.InvalidArgumentError(f"{name} must be finite, got {v!r}")
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    if bad_lo or (hi is not None and v > hi):
        lb = "(" if lo_open else "["
        raise errors.InvalidArgumentError(
            f"{name} must be in {lb}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}], "
            f"got {v!r}")
    return v


def text(s: Any, what: str = "text", error: type = errors.TokenizerError) -> str:
    """A str that is valid Unicode text: lone surrogates (e.g. from bytes decoded with
    ``errors="surrogateescape"``) have no UTF-8 encoding and no token, so they are rejected with
    their position rather than replaced silently."""
    if not isinstance(s, str):
        raise error(f"{what} needs a str, got {type(s).__name__}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(
            f"{what} contains a lone surrogate {s[e.start]!r} at index {e.start}; it is not valid "
            "Unicode text (decode bytes with errors='replace', not 'surrogateescape')") from None
    return s


def request_id(rid: Any) -> Hashable:
    """A request id: a hashable value that stays findable as a dict key (not None, a bool or NaN)."""
    if rid is None or isinstance(rid, bool):
        raise errors.ArgumentTypeError(f"request id must be a hashable value other than None or a bool, got {rid!r}")
    try:
        hash(rid)
    except TypeError:
        raise errors.ArgumentTypeError(
            f"request id must be hashable (a str, int, tuple, ...), got {type(rid).__name__}") from None
    if isinstance(rid, float) and not math.isfinite(rid):
        # NaN != NaN, so such an id could never be looked up again
        raise errors.InvalidArgumentError(f"request id must not be NaN or infinite, got {rid!r}")
    return rid


def available_memory() -> int:
    """Bytes the machine can still give this process: MemAvailable (Linux), else physical memory."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: let the allocation itself decide


def fits_in_memory(nbytes: int, what: str) -> None:
    """OutOfMemoryError up front when `nbytes` exceeds the memory available, instead of an
    allocation that fails late or pushes the machine into swap."""
    avail = available_memory()
    if nbytes > avail:
        raise errors.OutOfMemoryError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but only {avail / 2**30:.2f} GiB of memory is "
            "available; ask for fewer tokens (capacity / max_new_tokens) or use kv_cache_dtype='F16'")
