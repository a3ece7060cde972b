"""cffi build script for the C engine (out-of-line API mode).

setuptools runs this through `cffi_modules` in setup.py; pip runs it once per PEP 517 hook, so it
must stay cheap and free of side effects. The cdef is the public header itself, preprocessed, so
the binding cannot drift from the C API.

Environment switches:
  TOOLKIT_PORTABLE=1   no -march=native (a wheel to ship to other CPUs; scalar kernels only)
  TOOLKIT_DEBUG=1      -O0 -g, with AddressSanitizer-friendly frame pointers
  TOOLKIT_NO_PROFILE=1 -DCE_NO_PROFILE: the profiler compiled out (to measure what it costs off)
  TOOLKIT_SANITIZE=1   -fsanitize=address,undefined, aborting on the first report (see
                       docs/hardening.md for running Python under it: libasan must be preloaded)
"""
import os
import subprocess
import sys
import tempfile

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    os.chdir(ROOT)  # the in-place build below: source paths are made relative to the root
HEADER = os.path.join("cengine", "include", "cengine.h")


def _rel(*parts):
    # setuptools wants source paths relative to setup.py's directory (the cwd under pip)
    return os.path.relpath(os.path.join(ROOT, *parts))


sys.path.insert(0, os.path.join(ROOT, "cengine"))
from source_hash import engine_files, source_hash as _source_hash  # noqa: E402


def engine_sources():
    return engine_files(ROOT)[1:]


def source_hash():
    return _source_hash(ROOT)


def _cdef():
    with open(os.path.join(ROOT, HEADER)) as f:
        text = f.read()
    begin = text.index("/* CENGINE_CDEF_BEGIN */")
    end = text.index("/* CENGINE_CDEF_END */")
    block = "#define CENGINE_CDEF 1\n" + text[begin:end]
    cc = os.environ.get("CC", "cc")
    out = subprocess.run([cc, "-E", "-P", "-x", "c", "-"], input=block, check=True,
                         capture_output=True, text=True).stdout
    return out


def _cc_accepts(flag):
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write("int main(void){return 0;}\n")
        r = subprocess.run([cc, flag, src, "-o", os.path.join(d, "t")], capture_output=True)
        return r.returncode == 0


def _flags():
    debug = os.environ.get("TOOLKIT_DEBUG") == "1"
    portable = os.environ.get("TOOLKIT_PORTABLE") == "1"
    cflags = ["-O0", "-g", "-fno-omit-frame-pointer"] if debug else ["-O3"]
    cflags += ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wno-unused-function",
               "-Werror=incompatible-pointer-types", "-Werror=implicit-function-declaration",
               "-fno-math-errno",
               # The engine's functions are called from this module only (cffi API mode links the
               # wrappers in): hidden symbols make the calls between its files direct instead of
               # through the PLT, ~20 per matmul for its checks alone.
               "-fvisibility=hidden"]
    if not portable and _cc_accepts("-march=native"):
        cflags.append("-march=native")
    cflags.append("-pthread")
    if os.environ.get("TOOLKIT_NO_PROFILE") == "1":
        cflags.append("-DCE_NO_PROFILE")
    ldflags = ["-pthread"]
    if os.environ.get("TOOLKIT_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        cflags[:1] = ["-O1", "-g", "-fno-omit-frame-pointer"] + san  # replaces -O3 (or -O0 -g)
        ldflags += san
    desc = "cc=%s %s" % (os.environ.get("CC", "cc"), " ".join(
        f for f in cflags if f[:2] in ("-O", "-m") or f == "-DCE_NO_PROFILE" or f.startswith("-fsanitize=")))
    cflags += ['-DCE_SOURCE_HASH="%s"' % source_hash(), '-DCE_BUILD_FLAGS="%s"' % desc]
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
_cflags, _ldflags = _flags()
ffibuilder.set_source(
    "toolkit._cengine",
    '#include "cengine.h"',
    sources=[_rel(s) for s in engine_sources() if s.endswith(".c")],
    include_dirs=[_rel("cengine", "include"), _rel("cengine", "src")],
    depends=[_rel(HEADER)] + [_rel(s) for s in engine_sources() if s.endswith(".h")],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
    libraries=["m"],
)

if __name__ == "__main__":
    # `python cengine/build_cengine.py` (from any directory) builds in place, for quick C
    # iterations. cffi compiles from tmpdir, so it must be the root the source paths start from.
    ffibuilder.compile(verbose=True, tmpdir=".")
    sys.exit(0)
