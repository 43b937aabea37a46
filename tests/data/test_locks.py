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
