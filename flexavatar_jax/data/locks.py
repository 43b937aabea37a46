"""One writer per directory: a lock file that names its holder and dies with it.

`directory_lock(path, command)` takes `path/.lock` with `fcntl.flock` (exclusive, non-blocking)
and writes the holder into it (pid, host, command, start time). A second writer — another
`train` on the same workdir, `make-dataset` on the same folder, `sweep run` on the same study
root — gets `DirectoryBusy` naming that holder instead of interleaving files. The kernel drops
an flock when its process dies however it dies (SIGKILL included), so a stale lock file never
blocks anyone: its contents are only the last holder's note. The lock is re-entrant within a
process (a command that trains and then evaluates takes it once).

Network file systems may not honour flock; on one that does not, two hosts are not kept apart.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

LOCK_NAME = ".lock"

_held: dict[str, list] = {}  # realpath -> [open file, depth]


class DirectoryBusy(BlockingIOError):
    """Another process holds the directory's lock."""


def _holder_text(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, since "
                f"{info.get('started')})")
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, command: str = ""):
    """Hold `directory/.lock` for the block (the directory is created); `DirectoryBusy` if held."""
    directory = os.path.realpath(os.fspath(directory))
    if directory in _held:
        _held[directory][1] += 1
        try:
            yield
        finally:
            _held[directory][1] -= 1
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise DirectoryBusy(f"{directory} is in use by {_holder_text(path)}: wait for it to finish or stop it; "
                            f"two writers would interleave their files") from None
    try:
        f.seek(0)
        f.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
                   "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)
        f.flush()
        _held[directory] = [f, 1]
        yield
    finally:
        _held.pop(directory, None)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


__all__ = ["LOCK_NAME", "DirectoryBusy", "directory_lock"]
