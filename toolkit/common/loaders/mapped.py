"""MappedFile: what the GGUF and safetensors readers share about owning a copy-on-write mmap.

Tensor data is handed out as zero-copy memoryview slices of the mapping. close() unmaps it, unless
views (or cffi pointers made from them) are still alive: then unmapping would leave them dangling,
so the mapping is left to be freed with the last view and a ResourceWarning says so.
"""
from __future__ import annotations

import mmap
import os
import warnings

from toolkit.errors import ClosedError, FormatError, ModelNotFoundError


class MappedFile:
    path: str
    _mm: mmap.mmap | None = None
    _view: memoryview | None = None

    def _open(self, path, min_size: int, kind: str):
        """Opens `path` for parsing: (binary file, size); missing -> ModelNotFoundError, too short
        -> FormatError. The caller maps it, parses, then `_adopt`s the mapping."""
        self.path = os.fspath(path)
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            raise ModelNotFoundError(f"{self.path}: no such file") from None
        size = os.fstat(f.fileno()).st_size
        if size < min_size:
            f.close()
            raise FormatError(f"{self.path}: {size} bytes is too short for a {kind}")
        return f, size

    def _adopt(self, mm: mmap.mmap) -> None:
        """Takes ownership of a parsed file's mapping."""
        self._mm = mm
        # Copy-on-write mapping. Readers get read-only views (they cannot change what they parse);
        # a model's weights get writable ones (tensor_bytes(writable=True)), so that they may be
        # edited in place (ablations) while the file never changes
        self._wview = memoryview(mm)
        self._view = self._wview.toreadonly()

    def _data(self, writable: bool = False) -> memoryview:
        if self._view is None:
            raise ClosedError(f"{self.path}: the file is closed")
        return self._wview if writable else self._view

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        """Unmap the file, or leave the mapping to the views still alive (see the module doc)."""
        if self._mm is None:
            return
        mm, self._mm = self._mm, None
        self._view.release()
        self._wview.release()
        self._view = self._wview = None
        try:
            mm.close()
        except BufferError:
            warnings.warn(
                f"{self.path}: tensor views are still alive at close(); the file stays mapped "
                "until they are released",
                ResourceWarning,
                stacklevel=2,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
