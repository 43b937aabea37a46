"""Why do the projection lifters beat the Structured Head Queries here? Their inputs, probed.

Dual-UV and symmetric fusion lift image features through the input cameras and the tracked head
mesh; on synthetic data they get both exactly, while the queries lifter reads the images alone
(FlexAvatar's setting: uncalibrated photos). This probe scores trained runs on their held-out
self-reenactment set (the one `evaluate` scored them on: `data.cache_dir`, `eval.seed`), from one
input view, under:

* `exact` — the protocol's frontal input with its true camera (the study's 1-view cell);
* `error_<θ>` — the same input with its camera turned by θ degrees about a random axis through the
  head centre (`eval_sets.with_input_camera_error`): a head-pose tracking error of θ. A lifter that
  never reads cameras scores exactly as at `exact` (checked: the probe fails otherwise);
* `lateral` — the most lateral of the four input views instead (`eval_sets.with_lateral_input_first`),
  true camera: half the face unseen, where symmetric fusion has something to fill in.

PSNR per split (all, frontal, side/back), per run and condition, and the difference of every
variant to `--reference` paired over held-out identities and seeds, with a 95% bootstrap interval.

    python experiments/probe_lifter_inputs.py --workdirs ROOT/baseline_seed0,ROOT/dual_uv_seed0,... \\
        --reference baseline --out experiments/results/x

A run's variant is its directory name without `_seed<k>`. Writes `lifter_inputs.json` and
`lifter_inputs.png` under `--out`. With `--from_json` (an earlier `lifter_inputs.json`) nothing is
scored again: the differences are recomputed against another `--reference` (e.g. `dual_uv`, for
symmetric fusion against Dual-UV) and written as `lifter_inputs_vs_<reference>.json`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

import numpy as np
from absl import app, flags

from flexavatar_jax import inference
from flexavatar_jax.data import eval_sets
from flexavatar_jax.models.batch import model_inputs
from flexavatar_jax.studies.ablation import paired_difference
from flexavatar_jax.studies.report import per_identity
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import inputs
from flexavatar_jax.train.reports import host_predictor

flags.DEFINE_list("workdirs", None, "Trained run directories (each with config.json and checkpoints).")
flags.DEFINE_string("reference", "baseline", "Variant the others are compared with.")
flags.DEFINE_list("angles", ["2", "5", "10", "20"], "Camera errors to score, degrees.")
flags.DEFINE_integer("identities", 0, "Score the first N held-out identities of the eval set (0 = all).")
flags.DEFINE_integer("batch", 8, "Rows per forward pass.")
flags.DEFINE_integer("seed", 0, "Seed of the error axes (the same draw for every run).")
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
flags.DEFINE_string("from_json", None, "An earlier lifter_inputs.json: compare its runs against --reference only.")
flags.DEFINE_string("out", "out/lifter_inputs", "Output directory.")
FLAGS = flags.FLAGS

SPLITS = ("all", "frontal", "side_back")


def variant_of(workdir: str) -> tuple[str, int]:
    name = os.path.basename(workdir.rstrip("/"))
    m = re.fullmatch(r"(.+)_seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)


def by_variant(runs: list[dict]) -> dict[str, dict[int, dict]]:
    """{variant: {seed: run}} of the probed runs."""
    out: dict[str, dict[int, dict]] = {}
    for r in runs:
        v, seed = variant_of(r["workdir"])
        out.setdefault(v, {})[seed] = r
    return out


def conditions(es: dict, angles: list[float], seed: int) -> dict[str, dict]:
    out = {"exact": eval_sets.with_num_views(es, 1)}
    for a in angles:
        out[f"error_{a:g}"] = eval_sets.with_input_camera_error(out["exact"], a, seed)
    out["lateral"] = eval_sets.with_num_views(eval_sets.with_lateral_input_first(es), 1)
    return out


def per_identity_psnr(result: dict) -> dict[str, list[float]]:
    """{split: [identities]} mean PSNR over the split's targets of each identity (NaN: none)."""
    per_target = result["per_target"]
    masks = ev.split_masks(per_target["marginal"], per_target["azimuth_deg"])
    return {split: per_identity(per_target, "psnr", masks[split]).tolist() for split in SPLITS}


def probe(workdir: str, angles: list[float]) -> dict:
    config, system, params = inference.load_run(workdir)
    es = inputs.heldout_eval_set(config, inputs.make_world(config, system.head), num_views=4)
    if FLAGS.identities:
        es = {k: v[: FLAGS.identities] for k, v in es.items()}
    host = host_predictor(system)
    predict = lambda batch: host(params, model_inputs(batch))  # noqa: E731
    conds = conditions(es, angles, FLAGS.seed)
    out = {"workdir": workdir, "lifter": config.model.lifter_type, "identities": int(len(es["identity"])),
           "lateral_input_azimuth_deg": np.abs(eval_sets.wrap_deg(conds["lateral"]["input_azimuth_deg"][:, 0])).tolist(),
           "conditions": {}}
    for name, cond in conds.items():
        t0 = time.time()
        res = ev.evaluate(predict, cond, batch_size=FLAGS.batch)
        out["conditions"][name] = {"mean": {s: res[s]["psnr"] for s in SPLITS}, "per_identity": per_identity_psnr(res)}
        print(f"  {name:>9}: PSNR all {res['all']['psnr']:.2f}, frontal {res['frontal']['psnr']:.2f}, side/back "
              f"{res['side_back']['psnr']:.2f} dB ({time.time() - t0:.0f} s)", flush=True)
    if not system.needs_cameras():
        exact = out["conditions"]["exact"]["per_identity"]["all"]
        for name, c in out["conditions"].items():
            if name.startswith("error_") and not np.allclose(c["per_identity"]["all"], exact, equal_nan=True):
                raise AssertionError(f"{workdir}: the {config.model.lifter_type!r} lifter reads no cameras, yet its "
                                     f"score changed under {name}")
    return out


def compare(runs: list[dict], reference: str, resamples: int) -> dict:
    """{variant: {"seeds", condition: {split: paired difference to the reference under the same condition}}}
    over the seeds both have (the reference, reading no cameras, scores the same under every error)."""
    variants = by_variant(runs)
    if reference not in variants:
        raise ValueError(f"--reference {reference!r} is none of the runs' variants {sorted(variants)}")
    ref = variants[reference]
    out = {}
    for v, seeds in variants.items():
        if v == reference:
            continue
        common = sorted(set(seeds) & set(ref))
        if not common:
            raise ValueError(f"{v}: no seed in common with the reference {reference!r}")
        out[v] = {"seeds": common}
        for cond in seeds[common[0]]["conditions"]:
            out[v][cond] = {}
            for split in SPLITS:
                a = np.array([seeds[s]["conditions"][cond]["per_identity"][split] for s in common])
                b = np.array([ref[s]["conditions"][cond]["per_identity"][split] for s in common])
                out[v][cond][split] = paired_difference(a, b, resamples)
    return out


def plot(runs: list[dict], angles: list[float], path: str) -> None:
    """PSNR against the camera error per variant (mean over its seeds), frontal and side/back
    targets; a lifter that reads no cameras is a dashed line, the lateral input a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3), sharey=True)
    xs = [0.0, *angles]
    variants = {v: list(seeds.values()) for v, seeds in by_variant(runs).items()}
    for ax, split in zip(axes, ("frontal", "side_back")):
        for k, (v, rs) in enumerate(sorted(variants.items())):
            ys = [np.mean([r["conditions"]["exact" if a == 0 else f"error_{a:g}"]["mean"][split] for r in rs]) for a in xs]
            blind = rs[0]["lifter"] == "queries"
            ax.plot(xs, ys, "k--" if blind else f"C{k}o-", label=f"{v} ({rs[0]['lifter']} lifter)")
            lat = np.mean([r["conditions"]["lateral"]["mean"][split] for r in rs])
            ax.plot([xs[-1] * 1.08], [lat], "k*" if blind else f"C{k}*", ms=10)
        ax.set_title(f"{split.replace('_', '/')} targets", fontsize=10)
        ax.set_xlabel("input camera error (degrees, about the head centre)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend(fontsize=8)
    fig.suptitle("held-out self-reenactment from 1 input view: the protocol's frontal input under a camera error; "
                 "★ = the most lateral input, exact camera", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_differences(diffs: dict, conditions: list[str]) -> None:
    for v, d in diffs.items():
        for cond in conditions:
            cells = ", ".join(f"{s} {d[cond][s]['mean']:+.2f} [{d[cond][s]['ci'][0]:+.2f}, {d[cond][s]['ci'][1]:+.2f}]"
                              for s in SPLITS)
            print(f"{v} − {FLAGS.reference}, {cond}: {cells}")


def main(argv) -> int:
    del argv
    if FLAGS.from_json:
        with open(FLAGS.from_json) as f:
            earlier = json.load(f)
        runs = earlier["runs"]
        diffs = compare(runs, FLAGS.reference, FLAGS.resamples)
        print_differences(diffs, list(runs[0]["conditions"]))
        os.makedirs(FLAGS.out, exist_ok=True)
        path = os.path.join(FLAGS.out, f"lifter_inputs_vs_{FLAGS.reference}.json")
        with open(path, "w") as f:
            json.dump({"from": FLAGS.from_json, "reference": FLAGS.reference, "difference_to_reference": diffs}, f, indent=1)
        plot(runs, [float(a) for a in earlier["angles_deg"]], os.path.join(FLAGS.out, "lifter_inputs.png"))
        print(f"wrote {path} and lifter_inputs.png")
        return 0
    if not FLAGS.workdirs:
        print("probe_lifter_inputs: error: give --workdirs (or --from_json)", file=sys.stderr)
        return 2
    angles = [float(a) for a in FLAGS.angles]
    if any(not np.isfinite(a) or a <= 0 for a in angles):
        print(f"probe_lifter_inputs: error: --angles must be positive degrees, got {FLAGS.angles}", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    runs = []
    t0 = time.time()
    for k, w in enumerate(FLAGS.workdirs):
        print(f"[{k + 1}/{len(FLAGS.workdirs)}] {w} ({time.time() - t0:.0f} s so far)", flush=True)
        runs.append(probe(w, angles))
    diffs = compare(runs, FLAGS.reference, FLAGS.resamples)
    print_differences(diffs, list(runs[0]["conditions"]))
    with open(os.path.join(FLAGS.out, "lifter_inputs.json"), "w") as f:
        json.dump({"angles_deg": angles, "seed": FLAGS.seed, "reference": FLAGS.reference, "runs": runs,
                   "difference_to_reference": diffs}, f, indent=1)
    plot(runs, angles, os.path.join(FLAGS.out, "lifter_inputs.png"))
    print(f"wrote {FLAGS.out}/lifter_inputs.json and lifter_inputs.png")
    return 0


if __name__ == "__main__":
    app.run(main)
