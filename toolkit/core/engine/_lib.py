"""The only module that imports the compiled engine (`toolkit._cengine`).

It refuses a build that does not match this package (version, ABI, or - in a source checkout - the
C sources themselves), and turns engine status codes into typed exceptions. Nothing outside
toolkit/core/engine may import it; everything else goes through `backend`.
"""
import os

import toolkit
from toolkit import errors

_REBUILD = "rebuild the engine with: pip install -e . (from the project root)"
_ABI = 1

try:
    from toolkit import _cengine
except ImportError as exc:  # the .so is missing or fails to load
    raise errors.BuildError(f"the C engine (toolkit._cengine) could not be imported: {exc}; {_REBUILD}") from exc

ffi = _cengine.ffi
lib = _cengine.lib


_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def check_build(root=_SOURCE_ROOT):
    """Raises BuildError unless the compiled engine matches this package (and, when `root` is a
    source checkout, the C sources under it)."""
    version = ffi.string(lib.ce_version()).decode()
    if version != toolkit.__version__ or lib.ce_abi_version() != _ABI:
        raise errors.BuildError(
            f"the C engine is version {version} (ABI {lib.ce_abi_version()}) but the Python package is "
            f"{toolkit.__version__} (ABI {_ABI}); {_REBUILD}")
    if os.environ.get("TOOLKIT_ALLOW_STALE_BUILD") == "1":
        return
    hasher = os.path.join(root, "cengine", "source_hash.py")
    if not os.path.exists(hasher):  # an installed wheel: no sources to compare against
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("_toolkit_source_hash", hasher)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    built = ffi.string(lib.ce_source_hash()).decode()
    if mod.source_hash(root) != built:
        raise errors.BuildError(
            "the compiled C engine is stale: cengine/ sources changed since it was built; " + _REBUILD
            + " (set TOOLKIT_ALLOW_STALE_BUILD=1 to run the old build anyway)")


check_build()

_STATUS_ERRORS = {
    lib.CE_ERR_ARG: errors.InvalidArgumentError,
    lib.CE_ERR_SHAPE: errors.ShapeError,
    lib.CE_ERR_DTYPE: errors.DTypeError,
    lib.CE_ERR_RANGE: errors.IndexOutOfRangeError,
    lib.CE_ERR_NOMEM: errors.OutOfMemoryError,
    lib.CE_ERR_LAYOUT: errors.ShapeError,
    lib.CE_ERR_INTERNAL: errors.EngineError,
}


def error_for(status):
    """The exception for a non-zero engine status, carrying the engine's message."""
    message = ffi.string(lib.ce_last_error()).decode(errors="replace")
    cls = _STATUS_ERRORS.get(status, errors.EngineError)
    return cls(message or ffi.string(lib.ce_status_name(status)).decode())


def check(status):
    if status:
        raise error_for(status)
