"""What does a trained run's deformation UNet add to its own renders?

For each trained workdir with the UNet on, its held-out self- and cross-reenactment sets (the ones
`evaluate` scored it on) are rendered from 4 input views twice with the same parameters: as
trained, and with the UNet's output replaced by zeros (the static maps animated by the head
model's skinning alone — what `model.unet.enabled=false` renders). Reported per split (all,
ordinary, marginal expressions): PSNR both ways against the ground truth and the paired difference
over held-out identities (and seeds) with a 95% bootstrap interval, and the PSNR between the two
renders (how much the UNet changes the image at all).

    python experiments/probe_unet_contribution.py --workdirs ROOT/baseline_seed0,ROOT/baseline_seed1 --out DIR

writes `unet_contribution.json` under `--out`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

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

flags.DEFINE_list("workdirs", None, "Trained run directories with the UNet on.")
flags.DEFINE_integer("batch", 8, "Rows per forward pass.")
flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")
flags.DEFINE_string("out", "out/unet_contribution", "Output directory.")
FLAGS = flags.FLAGS

SPLITS = ("all", "ordinary", "marginal")


def probe(workdir: str) -> dict:
    config, system, params = inference.load_run(workdir)
    if not config.model.unet.enabled:
        raise ValueError(f"{workdir}: its model has no UNet (model.unet.enabled=false)")
    off = inference.make_system(dataclasses.replace(config.model, unet=dataclasses.replace(config.model.unet, enabled=False)),
                                system.head)
    with_unet, without = host_predictor(system), host_predictor(off)
    world = inputs.make_world(config, system.head)
    out = {"workdir": workdir}
    for mode in ("self", "cross"):
        es = eval_sets.with_num_views(inputs.heldout_eval_set(config, world, mode, num_views=4), 4)
        n = len(es["identity"])
        renders = {}
        scores = {}
        for name, fn in (("unet", with_unet), ("zeroed", without)):
            kept = []

            def predict(batch, fn=fn, kept=kept):
                rgb, alpha = fn(params, model_inputs(batch))
                kept.append(np.asarray(rgb))
                return rgb, alpha

            res = ev.evaluate(predict, es, batch_size=FLAGS.batch)
            renders[name] = np.concatenate(kept)[:n]
            scores[name] = np.asarray(res["per_target"]["psnr"], np.float64)
        diff = renders["unet"].astype(np.float64) - renders["zeroed"]
        mse = np.mean(diff ** 2, axis=(-3, -2, -1))
        between = np.where(mse > 0, -10.0 * np.log10(np.maximum(mse, 1e-30)), ev.PSNR_CAP_DB)
        per_target = {"psnr_unet": scores["unet"], "psnr_zeroed": scores["zeroed"],
                      "psnr_between": np.minimum(between, ev.PSNR_CAP_DB)}
        masks = ev.split_masks(es["target_marginal"], es["target_azimuth_deg"])
        out[mode] = {split: {"count": int(masks[split].sum()),
                             **{k: per_identity(per_target, k, masks[split]).tolist() for k in per_target}}
                     for split in SPLITS}
    return out


def main(argv) -> int:
    del argv
    if not FLAGS.workdirs:
        print("probe_unet_contribution: error: give --workdirs", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    runs = []
    for k, w in enumerate(FLAGS.workdirs):
        print(f"[{k + 1}/{len(FLAGS.workdirs)}] {w}", flush=True)
        runs.append(probe(w))
    summary = {}
    for mode in ("self", "cross"):
        for split in SPLITS:
            a = np.array([r[mode][split]["psnr_unet"] for r in runs])
            b = np.array([r[mode][split]["psnr_zeroed"] for r in runs])
            between = np.array([r[mode][split]["psnr_between"] for r in runs])
            with np.errstate(invalid="ignore"):
                entry = {"targets": int(sum(r[mode][split]["count"] for r in runs)),
                         "psnr_unet": float(np.nanmean(a)), "psnr_zeroed": float(np.nanmean(b)),
                         "unet_minus_zeroed": paired_difference(a, b, FLAGS.resamples),
                         "psnr_between_renders": float(np.nanmean(between))}
            summary[f"{mode}/{split}"] = entry
            d = entry["unet_minus_zeroed"]
            print(f"{mode}/{split}: {entry['targets']} targets; PSNR with UNet {entry['psnr_unet']:.2f}, zeroed "
                  f"{entry['psnr_zeroed']:.2f} dB, difference {d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]; "
                  f"the two renders differ by {entry['psnr_between_renders']:.1f} dB PSNR")
    with open(os.path.join(FLAGS.out, "unet_contribution.json"), "w") as f:
        json.dump({"summary": summary, "runs": runs}, f, indent=1)
    print(f"wrote {FLAGS.out}/unet_contribution.json")
    return 0


if __name__ == "__main__":
    app.run(main)
