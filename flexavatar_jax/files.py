"""Reading `.npz` archives with one error contract (`read_npz`), and writing files so that a kill,
a full disk or an error never leaves a truncated file under the final name: everything is written
to a temporary sibling (same directory, so the rename stays on one file system) and renamed over
the target only once complete. The previous file, if any, stays intact until that rename; a failed
write (e.g. `OSError(ENOSPC)`) removes its temporary file and re-raises.

Standard library and numpy only: every layer of the package uses it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np

PathLike = str | os.PathLike


def temporary_sibling(path: PathLike) -> str:
    """A fresh temporary name next to `path`, keeping its suffix (writers that pick the format
    from the suffix, e.g. an mp4 encoder, still see it)."""
    path = os.fspath(path)
    head, tail = os.path.split(path)
    stem, suffix = os.path.splitext(tail)
    return os.path.join(head, f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[str]:
    """Yields a temporary path to write; on success it is renamed to `path` (parent folders are
    created), on any error it is removed and `path` is left as it was."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", durable: bool = True) -> Iterator[IO]:
    """`open(path, mode)` for writing ("w" or "wb"), atomically (see the module docstring). With
    `durable` the data are flushed to the disk (fsync) before the rename, so a power cut cannot
    leave an empty file under the name either; files that are rebuilt when unreadable (caches)
    can skip that cost."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', got {mode!r}")
    with replacing(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_atomic(path: PathLike, data: bytes | str | Callable[[IO], None], durable: bool = True) -> None:
    """Write `data` (bytes, text, or a function writing to a binary file object) to `path`
    atomically (`durable`: see `atomic_open`)."""
    if callable(data):
        with atomic_open(path, "wb", durable) as f:
            data(f)
        return
    with atomic_open(path, "w" if isinstance(data, str) else "wb", durable) as f:
        f.write(data)


def read_npz(path: PathLike, name: str, kind: str) -> dict[str, np.ndarray]:
    """Every array of the `.npz` at `path` (no pickles). FileNotFoundError "`name` not found: path"
    when there is no such file; ValueError "path: not a readable `kind` .npz (error)" for any zip,
    header or pickle failure. The caller checks the keys and values it needs."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except Exception as e:  # zip, header and pickle errors all mean: not a file of this kind
        raise ValueError(f"{path}: not a readable {kind} .npz ({type(e).__name__}: {e})") from e


__all__ = ["atomic_open", "read_npz", "replacing", "temporary_sibling", "write_atomic"]
