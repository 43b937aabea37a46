"""On-disk cache of rendered synthetic data: the held-out eval sets.

An eval set is a deterministic function of (world config, ids, view count, targets, mode, seed), so
every run that shares those settings — the points of a study, resumed runs, re-evaluations — can
share one rendering of it. (Training examples are rendered on the device inside each step,
`ground_truth.py`, and are not worth keeping.) A cache entry is one
`.npz` file, written under a temporary name and renamed, so a killed writer never leaves a
truncated entry under the final name and concurrent writers (cluster jobs of one study) at worst
render an entry twice. A directory's `key.json` records what its entries were made from; the
directory name is a hash of it, so changed settings never read stale entries.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging

from flexavatar_jax.files import write_atomic


def fingerprint(key: Any) -> str:
    """A short stable hash of a JSON-able key."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def keyed_directory(root: str | os.PathLike, kind: str, key: Any) -> str:
    """`root/kind/<hash of key>`, created, with the key written beside the entries."""
    directory = os.path.join(os.fspath(root), kind, fingerprint(key))
    os.makedirs(directory, exist_ok=True)
    key_path = os.path.join(directory, "key.json")
    if not os.path.exists(key_path):
        write_atomic(key_path, json.dumps(key, sort_keys=True, indent=1, default=str).encode())
    return directory


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    """`arrays` as an uncompressed `.npz` at `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue(), durable=False)  # an unreadable entry is rebuilt: no fsync needed


def load_arrays(path: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache entry; None when it is missing or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        logging.warning("cache entry %s is unreadable (%s): rebuilding it", path, err)
        return None


def cached_arrays(directory: str, name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`directory/name.npz` if it is there, else `build()` written there."""
    path = os.path.join(directory, f"{name}.npz")
    hit = load_arrays(path)
    if hit is not None:
        return hit
    arrays = {k: np.asarray(v) for k, v in build().items()}
    save_arrays(path, arrays)
    return arrays


__all__ = ["cached_arrays", "fingerprint", "keyed_directory", "load_arrays", "save_arrays",
           "write_atomic"]
