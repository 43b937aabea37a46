"""A checkpoint write that fails for lack of space (here: RLIMIT_FSIZE, so the kernel refuses
file growth with EFBIG exactly as a full disk refuses it with ENOSPC) stops the run with an error
naming the intact checkpoint; the same command resumes from it once space is back, and ends with
the parameters of an uninterrupted run, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = """
import resource, signal, sys
import jax, numpy as np
from flexavatar_jax.config import Config
from flexavatar_jax.train import loop
from tests.train.test_loop import micro_dict
steps, workdir, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = micro_dict(steps=steps, batch=2)
c.mesh.update(data=1, fsdp=1, model=1)
c.train.checkpoint_every = 1
if limit:  # a "disk" that takes no file beyond `limit` bytes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
run = loop.train(Config.from_dict(c), workdir, devices=jax.devices()[:1])
flat = {"/".join(str(k) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(run["state"].params)}
np.savez(workdir + "/final_params.npz", **flat)
"""


def _train(steps: int, workdir, limit: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", SCRIPT, str(steps), str(workdir), str(limit)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # four short training processes
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_resumes_exactly(tmp_path):
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    assert _train(2, cut).returncode == 0
    full = _train(4, cut, limit=64 * 1024)
    assert full.returncode != 0
    assert "CheckpointWriteError" in full.stderr and "the newest complete checkpoint, step 2, is intact" in full.stderr
    assert sorted(p.name for p in (cut / "checkpoints").iterdir() if p.name.isdigit()) == ["1", "2"]
    resumed = _train(4, cut)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout + resumed.stderr
    assert "at step 2" in resumed.stdout + resumed.stderr
    assert _train(4, whole).returncode == 0
    with np.load(cut / "final_params.npz") as a, np.load(whole / "final_params.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
