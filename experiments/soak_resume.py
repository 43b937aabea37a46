"""Kill-anywhere resume soak: SIGKILL a training run at random moments, re-run the same command,
and check that it ends where an uninterrupted run ends, bit for bit.

    python experiments/soak_resume.py --kills 20 --steps 30 --out out/soak

The run is the micro model of the study smoke tests (`configs/studies/identity_scaling.py` MICRO:
the tiny config shrunk to 32² inputs) with a checkpoint every step, saved asynchronously, so many
kills land while a checkpoint is being written. One reference run trains `--steps` uninterrupted.
The soak run is the same `flexavatar-jax train` command in another workdir: each attempt is
killed (SIGKILL) a random 0–`--max_delay` seconds after it has logged a new step, until `--kills`
kills have been made; then it runs to the end. Reported (JSON under `--out`, progress with ETA):

* kills attempted and survived (the next attempt resumed from a complete checkpoint and went on),
  the resume step after each kill and the steps replayed (trained again after a resume);
* skipped steps (a step of the reference never logged by the soak run) — must be none;
* per-step losses of the soak run (the last time each step was logged) against the reference —
  equal losses mean the same data in the same order: the data-iterator state resumed exactly;
* the final parameters against the reference's, leaf by leaf — must be bitwise equal.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("kills", 20, "SIGKILLs to make.")
flags.DEFINE_integer("steps", 30, "Training steps of the run.")
flags.DEFINE_float("max_delay", 1.5, "Kill at most this many seconds after an attempt logged a new step.")
flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")
flags.DEFINE_string("out", "out/soak", "Output directory (workdirs and soak.json).")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_argv(workdir: str, steps: int) -> list[str]:
    from flexavatar_jax.configs.studies.identity_scaling import MICRO
    from flexavatar_jax.studies.spec import override_flags

    overrides = {**MICRO, "train.checkpoint_every": 1, "train.eval_every": 0, "train.log_every": 1,
                 "data.num_identities": 4, "eval.views": (1,), "eval.num_identities": 2, "eval.num_targets": 1,
                 "train.steps": steps}
    return [sys.executable, "-m", "flexavatar_jax.cli", "train", f"--config={ROOT}/configs/flexavatar.py:tiny",
            *override_flags(sorted(overrides.items())), f"--workdir={workdir}"]


def logged_losses(workdir: str) -> list[tuple[int, float]]:
    """(step, loss) of every training log line, in file order (a torn last line is skipped)."""
    out = []
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if "loss/total" in row:
                out.append((int(row["step"]), float(row["loss/total"])))
    return out


def checkpoint_writes(workdir: str) -> list[str]:
    """Checkpoint steps being written now: orbax writes a step into a temporary folder (a name
    that is not a bare step number) and renames it when complete."""
    d = os.path.join(workdir, "checkpoints")
    try:
        return sorted(n for n in os.listdir(d) if not n.isdigit() and not n.startswith("."))
    except FileNotFoundError:
        return []


def final_params(workdir: str) -> dict[str, np.ndarray]:
    import jax

    from flexavatar_jax import inference
    from flexavatar_jax.config import Config

    with open(os.path.join(workdir, "config.json")) as f:
        config = Config.from_dict(json.load(f))
    system = inference.make_system(config.model, config.head)
    step, params = inference.load_params(system, workdir)
    return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


def main(argv) -> int:
    del argv
    rng = random.Random(FLAGS.seed)
    os.makedirs(FLAGS.out, exist_ok=True)
    ref, soak = os.path.join(FLAGS.out, "reference"), os.path.join(FLAGS.out, "soak")
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.time()
    if not os.path.exists(os.path.join(ref, "eval_gain.json")):
        print(f"reference run: {FLAGS.steps} steps", flush=True)
        subprocess.run(train_argv(ref, FLAGS.steps), env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    kills, attempts = [], 0
    while True:
        attempts += 1
        log = open(os.path.join(FLAGS.out, f"attempt_{attempts:03d}.log"), "w")
        before = logged_losses(soak)
        last_before = before[-1][0] if before else 0
        proc = subprocess.Popen(train_argv(soak, FLAGS.steps), env=env, stdout=log, stderr=subprocess.STDOUT)
        if len(kills) < FLAGS.kills:
            # Wait for this attempt to log 1-3 steps of its own, then kill a random moment later.
            new_steps = rng.randint(1, 3)
            while proc.poll() is None and len(logged_losses(soak)) < len(before) + new_steps:
                time.sleep(0.05)
            if proc.poll() is None:
                time.sleep(rng.uniform(0.0, FLAGS.max_delay))
                if proc.poll() is None:
                    writing = checkpoint_writes(soak)  # just before the kill (a write may end in between)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    rows = logged_losses(soak)
                    kills.append({"attempt": attempts, "last_logged_step": rows[-1][0] if rows else 0,
                                  "last_step_before_attempt": last_before, "checkpoint_being_written": writing})
                    done = len(kills)
                    rate = done / (time.time() - t0)
                    print(f"kill {done}/{FLAGS.kills} at step {kills[-1]['last_logged_step']} "
                          f"({rate * 60:.1f} kills/min, ETA {(FLAGS.kills - done) / rate / 60:.1f} min)", flush=True)
                    log.close()
                    continue
        rc = proc.wait()
        log.close()
        if rc != 0:
            raise SystemExit(f"attempt {attempts} failed with exit {rc}; see {FLAGS.out}/attempt_{attempts:03d}.log")
        if os.path.exists(os.path.join(soak, "eval_gain.json")):
            break
    # Resume points: the step each attempt after a kill resumed from (from its log).
    for k in kills:
        text = open(os.path.join(FLAGS.out, f"attempt_{k['attempt'] + 1:03d}.log")).read()
        m = re.search(r"resumed from \S+ at step (\d+)", text)
        k["resumed_at"] = int(m.group(1)) if m else 0
        k["replayed_steps"] = max(0, k["last_logged_step"] - k["resumed_at"])
    # Survived: the next attempt resumed from a complete checkpoint (or from scratch when none was
    # complete yet) no later than the last logged step; the run's end is compared below.
    survived = sum(1 for k in kills if k["resumed_at"] <= k["last_logged_step"])
    ref_losses = dict(logged_losses(ref))
    soak_losses = dict(logged_losses(soak))  # the last time each step was logged
    skipped = sorted(set(ref_losses) - set(soak_losses))
    differing = sorted(s for s in ref_losses if s in soak_losses and soak_losses[s] != ref_losses[s])
    (ref_step, ref_params), (soak_step, soak_params) = final_params(ref), final_params(soak)
    unequal = sorted(k for k in ref_params if not np.array_equal(ref_params[k], soak_params.get(k)))
    during_write = sum(1 for k in kills if k["checkpoint_being_written"])
    result = {"kills_attempted": FLAGS.kills, "kills_made": len(kills), "kills_survived": survived,
              "kills_while_a_checkpoint_was_written": during_write,
              "attempts": attempts, "steps": FLAGS.steps, "replayed_steps": sum(k["replayed_steps"] for k in kills),
              "skipped_steps": skipped, "steps_with_different_loss": differing,
              "final_step": {"reference": ref_step, "soak": soak_step}, "params_leaves": len(ref_params),
              "params_leaves_not_bitwise_equal": unequal, "kills": kills, "seconds": time.time() - t0}
    with open(os.path.join(FLAGS.out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1)
    ok = survived == len(kills) == FLAGS.kills and not skipped and not differing and not unequal
    print(f"kills survived {survived}/{len(kills)} (of {FLAGS.kills} planned; {during_write} while a checkpoint "
          f"was being written); steps replayed "
          f"{result['replayed_steps']}, skipped {len(skipped)}, with a different loss {len(differing)}; final params "
          f"{'bitwise equal' if not unequal else f'DIFFER in {len(unequal)} leaves'} "
          f"({len(ref_params)} leaves); wrote {FLAGS.out}/soak.json", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    app.run(main)
