"""The digest that ties a compiled engine to the sources it was built from.

Used by cengine/build_cengine.py at build time and by toolkit/core/engine/_lib.py at import time
(in a source checkout), so a stale editable build is refused instead of silently running old C.
"""
import hashlib
import os


def engine_files(root):
    src = os.path.join(root, "cengine", "src")
    files = sorted(os.path.join("cengine", "src", f) for f in os.listdir(src) if f.endswith((".c", ".h")))
    return [os.path.join("cengine", "include", "cengine.h")] + files


def source_hash(root):
    h = hashlib.sha256()
    for rel in engine_files(root):
        h.update(rel.replace(os.sep, "/").encode())
        with open(os.path.join(root, rel), "rb") as f:
            h.update(f.read())
    return h.hexdigest()
