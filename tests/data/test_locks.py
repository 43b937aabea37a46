"""One writer per directory: a second writer is refused with the holder named, the lock dies with
its process (SIGKILL included), it is re-entrant in one process, and the CLI reports a busy
directory as one error line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from flexavatar_jax.data import locks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOLD = """
import sys, time
from flexavatar_jax.data import locks
with locks.directory_lock(sys.argv[1], "holder"):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds tmp_path/busy's lock until killed."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "busy")], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, holder):
    with pytest.raises(locks.DirectoryBusy, match=f"pid {holder.pid} .*'holder'"):
        with locks.directory_lock(tmp_path / "busy", "second"):
            pass
    info = json.loads((tmp_path / "busy" / locks.LOCK_NAME).read_text())
    assert info["pid"] == holder.pid  # the refused writer did not overwrite the note


def test_the_lock_dies_with_its_process(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The lock file is still there (a kill runs no cleanup), but it no longer blocks anyone.
    assert (tmp_path / "busy" / locks.LOCK_NAME).exists()
    with locks.directory_lock(tmp_path / "busy", "after"):
        info = json.loads((tmp_path / "busy" / locks.LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "after"


def test_reentrant_within_a_process_and_released_after(tmp_path):
    with locks.directory_lock(tmp_path / "d", "outer"):
        with locks.directory_lock(tmp_path / "d", "inner"):
            pass
        # Still held by this process: another process is refused.
        probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path / "d")], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
        assert probe.returncode != 0 and "DirectoryBusy" in probe.stderr
    with locks.directory_lock(tmp_path / "d", "again"):
        pass


def test_cli_make_dataset_on_a_busy_folder_is_one_error_line(tmp_path, holder):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "flexavatar_jax.cli", "make-dataset",
                             f"--config={ROOT}/configs/synthetic_data.py:tiny", f"--out={tmp_path / 'busy'}"],
                            capture_output=True, text=True, env=env, timeout=300)
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0], result.stderr[-1500:]
    assert not (tmp_path / "busy" / "config.json").exists()  # nothing was written


def test_train_refuses_a_workdir_another_run_holds(tmp_path, holder):
    from flexavatar_jax.config import Config
    from flexavatar_jax.train import loop
    from tests.train.test_loop import micro_dict

    with pytest.raises(locks.DirectoryBusy, match=f"pid {holder.pid}"):
        loop.train(Config.from_dict(micro_dict(steps=1, batch=2)), str(tmp_path / "busy"))
    assert not (tmp_path / "busy" / "checkpoints").exists()


def _tree_digest(root) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), without the lock note."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != locks.LOCK_NAME}


def test_make_dataset_killed_half_way_resumes_to_the_same_files(tmp_path):
    """SIGKILL once the first identity is complete: the unfinished one is refused by the reader;
    the re-run keeps the complete one, finishes the rest, and the folder equals an uninterrupted
    run's byte for byte."""
    from flexavatar_jax.data import vhap

    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, "-m", "flexavatar_jax.cli", "make-dataset", f"--config={ROOT}/configs/synthetic_data.py:tiny",
            "--config.num_identities=3"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    proc = subprocess.Popen([*argv, f"--out={cut}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = cut / "id_0000000" / "transforms.json"
    import time

    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert first.exists()
    unfinished = [p for p in cut.glob("id_*") if not (p / "transforms.json").exists()]
    for folder in unfinished:
        with pytest.raises(FileNotFoundError, match="transforms"):
            vhap.read_sequence(folder)
    assert subprocess.run([*argv, f"--out={cut}"], env=env, capture_output=True, timeout=600).returncode == 0
    assert subprocess.run([*argv, f"--out={whole}"], env=env, capture_output=True, timeout=600).returncode == 0
    assert _tree_digest(cut) == _tree_digest(whole)
    other = subprocess.run([*argv[:-1], "--config.num_identities=3", "--config.cameras_per_frame=1", f"--out={cut}"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert other.returncode == 1 and "another config" in other.stderr  # not silently mixed
