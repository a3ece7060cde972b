"""Write a file so that readers see either the old content or the complete new one, never half.

The data goes to a temporary file next to the target (same filesystem, so ``os.replace`` is atomic),
is fsynced, then renamed over the target. On any error the temporary file is removed and the error
propagates unchanged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file opened with ``mode`` ("wb" or "w", UTF-8) that becomes ``path`` on success."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the final permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
