"""Seeded mutations of the tiny model's files: one case = (seed, index) -> files on disk.

Half of the cases damage bytes blindly (bit flips, interesting integers written over length and
count fields, truncation, deleted or repeated chunks), weighted towards the headers where the
parsing happens; the other half damage structure on purpose (a GGUF metadata value of the wrong
type or out of range, a safetensors header entry with a bad shape, dtype or offsets, deep JSON
nesting, a config.json or tokenizer.json field gone wrong), which blind flips rarely reach.
"""
from __future__ import annotations

import json
import os
import random
import struct

from toolkit.common.loaders.gguf import GGUFValueType
from toolkit.common.loaders.gguf_write import GGUFValue
from toolkit.fuzz import tiny

KINDS = ("gguf_bytes", "gguf_meta", "gguf_trunc", "st_bytes", "st_header", "hf_config", "hf_tokenizer")

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 127, 128, 255, 256, 4095, 4096, 65535, 65536,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63,
                    2**64 - 1]
INTERESTING_FLOATS = [0.0, -0.0, 1e-45, 1e-38, 1.0, -1.0, 0.5, 1e38, 3.4e38, 1e308, float("inf"),
                      float("-inf"), float("nan")]
INTERESTING_STRINGS = ["", "576", "64", "llama", "gpt2", "x" * 1000, "\x00", "é", "1e4", "None"]


class Base:
    """The intact files, built once per process."""

    def __init__(self, gguf_path: str | None = None):
        """gguf_path: mutate that (real) GGUF file instead, with byte mutations and truncations
        of its header (each case writes a full copy, so it is much slower than the tiny model)."""
        self.external = gguf_path is not None
        if self.external:
            from toolkit.common.loaders.gguf import GGUFFile

            with GGUFFile(gguf_path) as g:
                self.header_end = g.data_offset
            with open(gguf_path, "rb") as f:
                self.gguf = self.gguf_untied = f.read()
        else:
            self.gguf = tiny.tiny_gguf_bytes(seed=0)
            self.gguf_untied = tiny.tiny_gguf_bytes(seed=0, tied=False)
            self.header_end = _gguf_header_end(self.gguf)
        self.md = tiny.gguf_metadata()
        self.st = None
        self.hf_files = {}

    def hf(self, scratch):
        if not self.hf_files:
            d = tiny.write_tiny_hf_dir(os.path.join(scratch, f"base-hf-{os.getpid()}"))  # workers share scratch
            for name in os.listdir(d):
                with open(os.path.join(d, name), "rb") as f:
                    self.hf_files[name] = f.read()
        return dict(self.hf_files)


def _gguf_header_end(data: bytes) -> int:
    # The tensor data of the tiny file starts after ~2 KB of header; a mutation lands there with
    # 80% probability (the data bytes only matter to the numbers, not to parsing).
    return min(len(data), 4096)


def _pos(rng, data, header_end):
    if rng.random() < 0.8 and header_end:
        return rng.randrange(header_end)
    return rng.randrange(len(data))


def mutate_bytes(rng: random.Random, data: bytes, header_end: int) -> tuple[bytes, list[str]]:
    b = bytearray(data)
    ops = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not b:
            break
        op = rng.randrange(7)
        p = _pos(rng, b, min(header_end, len(b)))
        if op == 0:
            bit = rng.randrange(8)
            b[p] ^= 1 << bit
            ops.append(f"flip {p}.{bit}")
        elif op == 1:
            v = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            b[p] = v
            ops.append(f"byte {p}={v}")
        elif op in (2, 3):
            size = 4 if op == 2 else 8
            v = rng.choice(INTERESTING_INTS) % (1 << (8 * size))
            if rng.random() < 0.3:  # nudge the existing field instead
                old = int.from_bytes(b[p:p + size].ljust(size, b"\0"), "little")
                v = (old + rng.choice((-2, -1, 1, 2, 8, 32))) % (1 << (8 * size))
            b[p:p + size] = v.to_bytes(size, "little")[: max(0, len(b) - p)]
            ops.append(f"u{8 * size} {p}={v}")
        elif op == 4:
            n = rng.choice((1, 2, 4, 8, 64))
            del b[p:p + n]
            ops.append(f"delete {p}+{n}")
        elif op == 5:
            n = rng.choice((1, 4, 8, 64))
            b[p:p] = bytes(rng.randrange(256) for _ in range(n))
            ops.append(f"insert {p}+{n}")
        else:
            n = rng.choice((8, 16, 64))
            b[p:p] = b[p:p + n]
            ops.append(f"repeat {p}+{n}")
    return bytes(b), ops


def _wild_value(rng):
    r = rng.randrange(8)
    if r == 0:
        v = rng.choice(INTERESTING_INTS)
        t = GGUFValueType.UINT64 if v >= 2**63 else rng.choice(
            (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64))
        lim = {GGUFValueType.UINT32: 2**32, GGUFValueType.INT32: 2**31, GGUFValueType.INT64: 2**63,
               GGUFValueType.UINT64: 2**64}[t]
        return GGUFValue(t, v % lim)
    if r == 1:
        return GGUFValue(GGUFValueType.INT32, -rng.choice((1, 2, 64, 2**31)))
    if r == 2:
        return GGUFValue(rng.choice((GGUFValueType.FLOAT32, GGUFValueType.FLOAT64)), rng.choice(INTERESTING_FLOATS))
    if r == 3:
        return rng.choice(INTERESTING_STRINGS)
    if r == 4:
        return GGUFValue(GGUFValueType.BOOL, rng.random() < 0.5)
    if r == 5:
        return rng.choice(([], [1, 2, 3], ["a", "b"], [1.5], [0]))
    if r == 6:
        return GGUFValue(GGUFValueType.UINT8, rng.randrange(256))
    return None  # remove the key


def gguf_meta(rng, base: Base) -> tuple[bytes, list[str]]:
    md = dict(base.md)
    ops = []
    for _ in range(rng.choice((1, 1, 2))):
        key = rng.choice(list(md) + ["general.alignment", "llama.attention.key_length",
                                     "tokenizer.ggml.eos_token_id", "llama.rope.scaling.type"])
        if key == "general.alignment" and rng.random() < 0.7:
            v = GGUFValue(GGUFValueType.UINT32, rng.choice((1, 2, 4, 8, 16, 64, 3, 0)))
        elif key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type") \
                and isinstance(md.get(key), list) and md[key] and rng.random() < 0.6:
            lst = list(md[key])
            i = rng.randrange(len(lst))
            if rng.random() < 0.5:
                del lst[i:]
            else:
                lst[i] = lst[(i + 1) % len(lst)]
            v = lst
        else:
            v = _wild_value(rng)
        ops.append(f"{key}={v!r:.60}")
        if v is None:
            md.pop(key, None)
        else:
            md[key] = v
    tensors = tiny.gguf_tensors(0, tied=rng.random() < 0.8)
    align = md.pop("general.alignment", None)
    kw = {}
    if isinstance(align, GGUFValue) and align.type == GGUFValueType.UINT32 and align.value and \
            not align.value & (align.value - 1):
        kw["alignment"] = align.value  # the writer places the data to match
    elif align is not None:
        md["general.alignment"] = align
    from toolkit.common.loaders.gguf_write import gguf_bytes

    try:
        return gguf_bytes(md, tensors, **kw), ops
    except (struct.error, OverflowError, TypeError, ValueError) as e:  # a value the writer can't encode
        ops.append(f"(writer refused: {e}; byte mutation instead)")
        data, more = mutate_bytes(rng, base.gguf, _gguf_header_end(base.gguf))
        return data, ops + more


def _st_split(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8:8 + n], raw[8 + n:]


def st_header(rng, st: bytes) -> tuple[bytes, list[str]]:
    header, data = _st_split(st)
    hdr = json.loads(header)
    names = [k for k in hdr if k != "__metadata__"]
    ops = []
    r = rng.randrange(10)
    if r == 0:
        depth = rng.choice((100, 1000, 5000, 50000))
        raw = (b"[" * depth + b"]" * depth) if rng.random() < 0.5 else (b'{"a":' * depth + b"0" + b"}" * depth)
        ops.append(f"nest {depth}")
        return struct.pack("<Q", len(raw)) + raw + data, ops
    if r == 1:
        delta = rng.choice((-8, -2, -1, 1, 2, 8, 2**20, 2**63))
        n = (len(header) + delta) % 2**64
        ops.append(f"header length {n}")
        return struct.pack("<Q", n) + header + data, ops
    name = rng.choice(names)
    e = hdr[name]
    field = rng.choice(("shape", "dtype", "data_offsets", "delete", "extra", "swap"))
    if field == "shape":
        shape = list(e["shape"])
        choice = rng.randrange(6)
        if choice == 0 and shape:
            shape[rng.randrange(len(shape))] = rng.choice((0, -1, 1, 2**31, 2**63, 1.5, "8", None))
        elif choice == 1:
            shape.append(rng.choice((1, 2, 0)))
        elif choice == 2 and shape:
            shape.pop()
        elif choice == 3 and len(shape) == 2:
            shape = shape[::-1]
        elif choice == 4:
            shape = rng.choice(([], {}, "x", None, [[1]]))
        else:
            shape = [s * 2 if isinstance(s, int) else s for s in shape]
        e["shape"] = shape
    elif field == "dtype":
        e["dtype"] = rng.choice(("F32", "F16", "BF16", "I8", "U8", "F64", "I64", "F4", "BOOL", "Q4_0", "", 5, None))
    elif field == "data_offsets":
        b, en = e["data_offsets"]
        d = rng.choice((-1, 1, 2, 4, 8, 2**40, -2**40))
        e["data_offsets"] = rng.choice(([b + d, en + d], [b, en + d], [en, b], [b], [b, en, 0], [float(b), en],
                                        [str(b), en], None, [b + d, en]))
    elif field == "delete":
        del hdr[name]
    elif field == "extra":
        hdr[rng.choice(("__metadata__", "x", name + ".copy"))] = rng.choice(
            ({"a": 1}, {"a": "b"}, [], "s", dict(e), None))
    else:
        other = rng.choice(names)
        hdr[name], hdr[other] = hdr[other], hdr[name]
    ops.append(f"{name}.{field} -> {str(hdr.get(name, 'deleted'))[:80]}")
    raw = json.dumps(hdr).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data, ops


def hf_config(rng, cfg_raw: bytes) -> tuple[bytes, list[str]]:
    cfg = json.loads(cfg_raw)
    ops = []
    for _ in range(rng.choice((1, 1, 2))):
        key = rng.choice(list(cfg) + ["rope_scaling", "head_dim"])
        r = rng.randrange(6)
        if r == 0:
            v = rng.choice(INTERESTING_INTS + [-1, -64])
        elif r == 1:
            v = rng.choice(INTERESTING_FLOATS)
        elif r == 2:
            v = rng.choice(INTERESTING_STRINGS)
        elif r == 3:
            v = rng.choice((None, True, False, [], {}, [1, 2], {"type": "linear", "factor": 2.0}))
        elif r == 4 and isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool):
            v = cfg[key] + rng.choice((-1, 1, 2, -cfg[key]))
        else:
            cfg.pop(key, None)
            ops.append(f"del {key}")
            continue
        cfg[key] = v
        ops.append(f"{key}={v!r:.60}")
    if rng.random() < 0.1:
        return json.dumps(cfg).encode()[: rng.randrange(1, 40)], ops + ["truncated"]
    return json.dumps(cfg).encode(), ops


def hf_tokenizer(rng, tok_raw: bytes) -> tuple[bytes, list[str]]:
    if rng.random() < 0.3:
        data, ops = mutate_bytes(rng, tok_raw, len(tok_raw))
        return data, ops
    tj = json.loads(tok_raw)
    vocab = tj["model"]["vocab"]
    r = rng.randrange(5)
    if r == 0:
        k = rng.choice(list(vocab))
        vocab[k] = rng.choice((71, 72, 1000, 1_000_000, 2**31, -1))
        ops = [f"vocab[{k!r}]={vocab[k]}"]
    elif r == 1:
        tj["added_tokens"].append({"id": rng.choice((71, 500, 2**31 - 1)), "content": "<x>", "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False, "special": True})
        ops = ["added token past the vocabulary"]
    elif r == 2:
        tj["model"]["merges"] = rng.choice(([["a", "b"]], [["q", "zz"]], ["a"], None, [["Ġ", "a"]] * 3))
        ops = [f"merges={tj['model']['merges']!r:.40}"]
    elif r == 3:
        k = rng.choice(list(vocab))
        del vocab[k]
        ops = [f"del vocab[{k!r}]"]
    else:
        tj["model"]["type"] = rng.choice(("Unigram", "WordPiece", "X", None))
        ops = [f"model.type={tj['model']['type']}"]
    return json.dumps(tj).encode(), ops


def make_case(seed: int, index: int, base: Base, workdir: str, kind: str | None = None):
    """Writes case `index` under `workdir`; returns (kind, path to load, list of mutation ops)."""
    rng = random.Random(f"{seed}:{index}")
    kind = kind or rng.choice(("gguf_bytes", "gguf_bytes", "gguf_trunc") if base.external else KINDS)
    if base.external and kind not in ("gguf_bytes", "gguf_trunc"):
        raise ValueError(f"--gguf supports the kinds gguf_bytes and gguf_trunc, not {kind}")
    if kind.startswith("gguf"):
        src = base.gguf if rng.random() < 0.8 else base.gguf_untied
        if kind == "gguf_bytes":
            data, ops = mutate_bytes(rng, src, base.header_end)
        elif kind == "gguf_meta":
            data, ops = gguf_meta(rng, base)
        else:
            cut = rng.choice((rng.randrange(len(src)), rng.randrange(64), len(src) - rng.randrange(1, 64)))
            data, ops = src[:cut], [f"truncate {cut}"]
        path = os.path.join(workdir, f"case-{index}.gguf")
        with open(path, "wb") as f:
            f.write(data)
        return kind, path, ops
    files = base.hf(workdir)
    if kind == "st_bytes":
        st = files["model.safetensors"]
        header_end = 8 + struct.unpack("<Q", st[:8])[0]
        if rng.random() < 0.2:
            cut = rng.randrange(len(st))
            files["model.safetensors"], ops = st[:cut], [f"truncate {cut}"]
        else:
            files["model.safetensors"], ops = mutate_bytes(rng, st, header_end)
    elif kind == "st_header":
        files["model.safetensors"], ops = st_header(rng, files["model.safetensors"])
    elif kind == "hf_config":
        files["config.json"], ops = hf_config(rng, files["config.json"])
    else:
        files["tokenizer.json"], ops = hf_tokenizer(rng, files["tokenizer.json"])
    path = os.path.join(workdir, f"case-{index}")
    os.makedirs(path, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return kind, path, ops
