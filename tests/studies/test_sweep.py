"""`sweep plan|run|report`: study files, point commands, the runner's skip/resume, the report's
handling of broken points, and the smoke study end to end through the CLI."""

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from flexavatar_jax import cli
from flexavatar_jax.studies import load_study, points, runner, spec

SMOKE = "configs/studies/identity_scaling.py:smoke"
PER_POINT = ("--config.data.num_identities=", "--config.seed=", "--config.train.steps=", "--workdir=")


def _tokens(command: str) -> tuple[list[str], dict[str, str]]:
    """(the tokens every point shares, the per-point values)."""
    shared, own = [], {}
    for token in shlex.split(command):
        prefix = next((p for p in PER_POINT if token.startswith(p)), None)
        if prefix is None:
            shared.append(token)
        else:
            own[prefix] = token[len(prefix):]
    return shared, own


@pytest.mark.parametrize("variant", ["tiny", "base", "smoke"])
def test_plan_commands_differ_only_in_identities_seed_and_steps(variant, tmp_path):
    study = load_study(f"configs/studies/identity_scaling.py:{variant}")
    study = dataclasses.replace(study, compute="fixed_epochs", epochs=2.0)  # steps differ per point too
    commands = runner.plan(study, str(tmp_path))
    pts = points(study)
    assert len(commands) == len(pts) == len({p.name for p in pts})
    shared = {tuple(_tokens(c)[0]) for c in commands}
    assert len(shared) == 1, shared
    base = spec.base_config(study)
    for command, point in zip(commands, pts):
        own = _tokens(command)[1]
        assert int(own["--config.data.num_identities="]) == point.identities
        assert int(own["--config.seed="]) == point.seed
        expected_steps = -(-2 * point.identities * base.data.examples_per_identity // base.train.batch_size)
        assert int(own["--config.train.steps="]) == point.steps == expected_steps
        assert own["--workdir="] == os.path.join(str(tmp_path), point.name)
    assert (tmp_path / "commands.txt").read_text().splitlines() == commands
    script = (tmp_path / "slurm_array.sh").read_text()
    assert f"#SBATCH --array=0-{len(commands) - 1}" in script
    assert all(shlex.quote(c) in script for c in commands)


def test_tiny_study_grid_and_seeds():
    study = load_study("configs/studies/identity_scaling.py:tiny")
    pts = points(study)
    ns = sorted({p.identities for p in pts})
    assert len(ns) >= 7 and max(ns) / min(ns) >= 100  # >= 7 points over >= two decades
    for n in ns:
        seeds = {p.seed for p in pts if p.identities == n}
        assert len(seeds) >= (2 if n <= 32 else 1), (n, seeds)
    assert len({p.steps for p in pts}) == 1  # fixed compute
    config = spec.point_config(study, pts[-1], "/root")
    assert config.eval.shuffle_control and config.eval.num_identities >= 32
    assert config.data.num_identities == pts[-1].identities and config.data.cache_dir == "/root/cache"


def test_bad_studies_are_refused():
    with pytest.raises(ValueError, match="may not set"):
        spec.Study(overrides=(("seed", 3),))
    with pytest.raises(ValueError, match="compute"):
        spec.Study(compute="fixed_flops")
    with pytest.raises(ValueError, match="identities"):
        spec.Study(identities=(0, 2))
    study = spec.Study(overrides=(("model.no_such_field", 1),))
    with pytest.raises(ValueError, match="no_such_field"):
        spec.base_config(study)
    with pytest.raises(FileNotFoundError, match="nowhere.py"):
        load_study("configs/studies/nowhere.py:tiny")


def test_power_compute_policy():
    study = spec.Study(compute="power", coefficient=10.0, exponent=0.5, identities=(1, 4, 100))
    assert [p.steps for p in points(study)] == [10, 20, 100]


def _sweep(action: str, root, *extra: str) -> int:
    return cli.main(["flexavatar-jax", "sweep", action, f"--study={SMOKE}", f"--root={root}", *extra])


def _run_in_background(root, log):
    return subprocess.Popen([sys.executable, "-m", "flexavatar_jax.cli", "sweep", "run", f"--study={SMOKE}",
                             f"--root={root}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_smoke_study_end_to_end_with_a_kill(tmp_path, capsys):
    """plan → run (killed once mid-point, re-run resumes it) → run again (skips) → report; then a
    corrupt point is named by the report while the rest is still reported."""
    root = tmp_path / "study"
    assert _sweep("plan", root) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3

    # Kill the runner (and its train process) once the first point has its step-2 checkpoint.
    first = root / "ids1_seed0"
    with open(tmp_path / "run1.log", "w") as log:
        proc = _run_in_background(root, log)
        deadline = time.time() + 240
        while not (first / "checkpoints" / "2").is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (first / "checkpoints" / "2").is_dir(), (tmp_path / "run1.log").read_text()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    study = load_study(SMOKE)
    assert runner.point_status(str(root), points(study)[0])[0] == "unfinished"

    assert _sweep("run", root) == 0
    out = capsys.readouterr().out
    assert "ids1_seed0: resuming" in out and "points: 3 finished" in out
    assert "resumed from" in (first / "train.log").read_text()
    steps = [json.loads(line)["step"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4

    mtimes = {p: os.path.getmtime(root / p / "eval.json") for p in ("ids1_seed0", "ids2_seed0", "ids4_seed0")}
    assert _sweep("run", root) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 3
    assert mtimes == {p: os.path.getmtime(root / p / "eval.json") for p in mtimes}

    assert _sweep("report", root, "--bootstrap=50") == 0
    results = json.loads((root / "report" / "results.json").read_text())
    assert [p["status"] for p in results["points"]] == ["finished"] * 3
    assert results["metrics"]["self/4_views/all/identity_gain_psnr"].keys() == {"1", "2", "4"}
    for name in ("report.md", "scaling.png", "convergence.png"):
        assert (root / "report" / name).stat().st_size > 0

    (root / "ids2_seed0" / "eval.json").write_text("{not json")
    assert _sweep("report", root, "--bootstrap=50") == 0
    results = json.loads((root / "report" / "results.json").read_text())
    status = {p["name"]: p["status"] for p in results["points"]}
    assert status == {"ids1_seed0": "finished", "ids2_seed0": "unreadable", "ids4_seed0": "finished"}
    assert results["metrics"]["self/4_views/all/psnr"].keys() == {"1", "4"}
    md = (root / "report" / "report.md").read_text()
    assert "ids2_seed0 (unreadable)" in md


def test_sweep_usage_errors(capsys):
    assert cli.main(["flexavatar-jax", "sweep", f"--study={SMOKE}", "--root=/tmp/x"]) == 2
    assert cli.main(["flexavatar-jax", "sweep", "fly", f"--study={SMOKE}", "--root=/tmp/x"]) == 2
    assert "sweep needs one action of plan|run|report" in capsys.readouterr().err
