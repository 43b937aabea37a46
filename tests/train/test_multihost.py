"""Multi-host training run as users launch it: 2 processes × 4 CPU devices on this machine
(`jax.distributed` on localhost through `train --coordinator/--num_processes/--process_id`),
killed after a checkpoint and resumed, against one process with 8 devices.

Slow (three cold trainings of the micro model, ~5 min on 2 cores): `make test-all`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from flexavatar_jax.configs.studies.identity_scaling import MICRO
from flexavatar_jax.studies.spec import override_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6
TIMEOUT_S = 900  # per launch: every process is killed past it, and the test fails


def _argv(workdir: str) -> list[str]:
    overrides = {**MICRO, "train.steps": STEPS, "train.checkpoint_every": 2, "train.eval_every": 0,
                 "data.num_identities": 4, "eval.views": (1,), "eval.num_identities": 2, "eval.num_targets": 1}
    return [sys.executable, "-m", "flexavatar_jax.cli", "train", f"--config={ROOT}/configs/flexavatar.py:tiny",
            *override_flags(sorted(overrides.items())), f"--workdir={workdir}"]


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=ROOT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: str, logs: str, tag: str, processes: int) -> list[subprocess.Popen]:
    """`processes` train processes of one run (1: a plain single-process run with 8 devices)."""
    if processes == 1:
        return [subprocess.Popen(_argv(workdir), env=_env(8), stdout=open(f"{logs}/{tag}.log", "w"),
                                 stderr=subprocess.STDOUT)]
    port = _free_port()
    return [subprocess.Popen(_argv(workdir) + [f"--coordinator=localhost:{port}", f"--num_processes={processes}",
                                               f"--process_id={i}"],
                             env=_env(8 // processes), stdout=open(f"{logs}/{tag}_{i}.log", "w"),
                             stderr=subprocess.STDOUT) for i in range(processes)]


def _wait(procs: list[subprocess.Popen], deadline: float) -> list[int]:
    try:
        return [p.wait(timeout=max(1.0, deadline - time.time())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"a training process was still running after {TIMEOUT_S} s (a hang)")


def _losses(workdir: str) -> dict[int, float]:
    """The last logged loss of every step."""
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {int(r["step"]): float(r["loss/total"]) for r in rows if "loss/total" in r}


def _committed_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_two_processes_train_checkpoint_kill_resume_like_one(tmp_path):
    logs = str(tmp_path)
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    assert _wait(_launch(single, logs, "single", 1), time.time() + TIMEOUT_S) == [0]
    reference = _losses(single)
    assert sorted(reference) == list(range(1, STEPS + 1))

    # Two processes; both are SIGKILLed once a checkpoint is committed and a later step was logged.
    procs, deadline = _launch(multi, logs, "multi", 2), time.time() + TIMEOUT_S
    while time.time() < deadline and all(p.poll() is None for p in procs):
        steps = _losses(multi) if os.path.exists(os.path.join(multi, "metrics.jsonl")) else {}
        committed = _committed_steps(multi)
        if committed and steps and max(steps) > committed[0]:
            break
        time.sleep(0.1)
    assert all(p.poll() is None for p in procs), "the two-process run ended before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    _wait(procs, deadline)
    killed_at = max(_losses(multi))
    assert killed_at < STEPS

    procs = _launch(multi, logs, "resume", 2)
    assert _wait(procs, time.time() + TIMEOUT_S) == [0, 0], open(f"{logs}/resume_0.log").read()[-3000:]
    text = open(f"{logs}/resume_0.log").read()
    resumed = re.search(r"resumed from \S+ at step (\d+)", text)
    assert resumed and 0 < int(resumed.group(1)) <= killed_at, text[-3000:]
    assert "(2 process(es))" in text
    assert os.path.exists(os.path.join(multi, "eval.json"))

    losses = _losses(multi)
    assert sorted(losses) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(reference)],
                               rtol=1e-4)
    # Both processes took part in every checkpoint: each wrote its data-iterator state.
    for step in _committed_steps(multi):
        data = os.path.join(multi, "checkpoints", str(step), "data")
        assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data))
