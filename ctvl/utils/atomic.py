"""Atomic file writes: a temp file beside the target, renamed onto it when complete.

A reader (or a resumed job) sees the old file or the new one, never half of one, even when the
writer is killed mid-write: ``os.replace`` is atomic within one file system. A failed write leaves
the old file and no temp file behind.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "latest"
    >>> with atomic_open(path, "w") as fh:
    ...     _ = fh.write("step_0000100")
    >>> path.read_text()
    'step_0000100'
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` (its folder is created) to write to; on a clean exit it
    replaces ``path``, on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open(temp, mode, **kwargs)`` for writing; closed, then renamed onto ``path`` (see :func:`atomic_path`)."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} has no 'w'")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
