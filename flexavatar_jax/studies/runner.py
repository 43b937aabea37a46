"""`sweep plan` and `sweep run`: a study's points as commands, and run one after another here.

`plan` writes, under ROOT, `commands.txt` (one exact `flexavatar-jax train ...` line per point) and
`slurm_array.sh` (a SLURM job array, one task per point: a cluster user submits it as is or
launches the lines any other way; a multi-host point is a config with `train.distributed=True`).
`run` trains the points here, each as its own `train` process (the same command `plan` prints),
skipping finished points and resuming an interrupted one from its newest checkpoint; a point of a
`refine_variants` variant is then refined (`refine`, writing `refine.json`) unless it has been.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from flexavatar_jax.data import locks
from flexavatar_jax.files import write_atomic
from flexavatar_jax.studies.spec import (
    Point,
    Study,
    base_config,
    point_workdir,
    points,
    refine_argv,
    refines,
    train_argv,
    train_command,
)
from flexavatar_jax.train.evaluate import EVALUATOR_VERSION

STATUSES = ("finished", "unfinished", "missing", "unreadable")


def point_status(root: str, point: Point) -> tuple[str, str]:
    """(status, reason) of a point's workdir: `finished` once its final evaluation is written for
    its last step by the current evaluator (`evaluate.EVALUATOR_VERSION`; an older one lacks
    metrics, and re-running the point's command re-evaluates it without training), `unfinished`
    when it has started, `missing` when it has not, `unreadable` when its files cannot be parsed."""
    workdir = point_workdir(root, point)
    if not os.path.isdir(workdir):
        return "missing", "no workdir"
    gain_path = os.path.join(workdir, "eval_gain.json")
    if not os.path.exists(gain_path):
        return "unfinished", "no final evaluation yet"
    try:
        with open(gain_path) as f:
            gain = json.load(f)
        step, evaluator = gain.get("step"), gain.get("evaluator", 1)
        with open(os.path.join(workdir, "eval.json")) as f:
            json.load(f)
    except (OSError, ValueError) as err:
        return "unreadable", f"{type(err).__name__}: {err}"
    if step != point.steps:
        return "unfinished", f"evaluated at step {step}, the point trains {point.steps}"
    if evaluator < EVALUATOR_VERSION:
        return "unfinished", f"evaluated by evaluator version {evaluator}, the current one is {EVALUATOR_VERSION}"
    return "finished", ""


def plan(study: Study, root: str, program: str = "flexavatar-jax") -> list[str]:
    """The point commands (also written to ROOT/commands.txt and ROOT/slurm_array.sh)."""
    os.makedirs(root, exist_ok=True)
    pts = points(study)
    commands = [train_command(study, p, root, program) for p in pts]
    write_atomic(os.path.join(root, "commands.txt"), "\n".join(commands) + "\n")
    lines = ["#!/bin/bash", f"# Study {study.name}: {len(pts)} points, one array task each.",
             f"#SBATCH --job-name={shlex.quote(study.name.replace('/', '_').replace(':', '_'))}",
             f"#SBATCH --array=0-{len(pts) - 1}", f"#SBATCH --time={study.slurm_time}",
             f"#SBATCH --gpus-per-task={study.slurm_gpus_per_task}",
             f"#SBATCH --output={os.path.join(root, 'slurm-%A_%a.out')}"]
    lines += [f"#SBATCH {x}" for x in study.slurm_extra.split(";") if x.strip()]
    lines += ["set -euo pipefail", "COMMANDS=("] + [f"  {shlex.quote(c)}" for c in commands] + [
        ")", 'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"  # re-submitting a task resumes it from its checkpoint']
    path = os.path.join(root, "slurm_array.sh")
    write_atomic(path, "\n".join(lines) + "\n")
    os.chmod(path, 0o755)
    write_atomic(os.path.join(root, "study.json"), json.dumps(study.to_dict(), indent=1))
    return commands


def run(study: Study, root: str, *, max_points: int | None = None, extra_args: tuple[str, ...] = ()) -> dict:
    """Train every unfinished point here, one process after another (re-running resumes). Returns
    `{point name: status}` after the run; `max_points` stops after that many trained points. The
    study root is locked while it runs (a second `sweep run` on it fails naming this one)."""
    with locks.directory_lock(root, "sweep run"):
        return _run(study, root, max_points, extra_args)


def _run(study: Study, root: str, max_points: int | None, extra_args: tuple[str, ...]) -> dict:
    plan(study, root)
    base = base_config(study)
    pts = points(study, base)
    done_steps, done_seconds, trained = 0, 0.0, 0
    remaining = sum(p.steps for p in pts if point_status(root, p)[0] != "finished")
    t_start = time.time()
    for k, point in enumerate(pts):
        status, _ = point_status(root, point)
        if status == "finished":
            print(f"[{k + 1}/{len(pts)}] {point.name}: finished, skipped", flush=True)
            _refine(study, point, root, extra_args, f"[{k + 1}/{len(pts)}]")
            continue
        if max_points is not None and trained >= max_points:
            break
        workdir = point_workdir(root, point)
        os.makedirs(workdir, exist_ok=True)
        rate = done_steps / done_seconds if done_seconds else None
        eta = f", study ETA {remaining / rate / 60:.0f} min" if rate else ""
        verb = "resuming" if status == "unfinished" else "training"
        print(f"[{k + 1}/{len(pts)}] {point.name}: {verb} {point.steps} steps "
              f"({time.time() - t_start:.0f} s into this run{eta})", flush=True)
        t0 = time.time()
        _cli(train_argv(study, point, root), extra_args, os.path.join(workdir, "train.log"), f"point {point.name}")
        trained += 1
        done_seconds += time.time() - t0
        done_steps += point.steps
        remaining -= point.steps
        print(f"[{k + 1}/{len(pts)}] {point.name}: {point_status(root, point)[0]} in {time.time() - t0:.0f} s",
              flush=True)
        _refine(study, point, root, extra_args, f"[{k + 1}/{len(pts)}]")
    return {p.name: point_status(root, p)[0] for p in pts}


def _cli(args: list[str], extra_args: tuple[str, ...], log_path: str, what: str) -> None:
    """One `flexavatar-jax` command as a child process, its output appended to `log_path`."""
    argv = [sys.executable, "-m", "flexavatar_jax.cli", *args, *extra_args]
    with open(log_path, "a") as log:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}); see {log_path}")


def awaits_refinement(study: Study, root: str, point: Point) -> bool:
    """A finished point of a `refine_variants` variant that has no refine.json yet."""
    return (refines(study, point) and point_status(root, point)[0] == "finished"
            and not os.path.exists(os.path.join(point_workdir(root, point), "refine.json")))


def _refine(study: Study, point: Point, root: str, extra_args: tuple[str, ...], tag: str) -> None:
    """Refine a point that `awaits_refinement` (log: refine.log)."""
    if not awaits_refinement(study, root, point):
        return
    workdir = point_workdir(root, point)
    print(f"{tag} {point.name}: refining held-out identities", flush=True)
    t0 = time.time()
    _cli(refine_argv(study, point, root), extra_args, os.path.join(workdir, "refine.log"), f"refining point {point.name}")
    print(f"{tag} {point.name}: refined in {time.time() - t0:.0f} s", flush=True)


__all__ = ["STATUSES", "awaits_refinement", "plan", "point_status", "run"]
