"""How much of a target's look is not carried by the head mesh? The ceiling of the UNet's claims.

The synthetic ground truth is Gaussians on the procedural head's surface, posed by the same linear
blend skinning the model's avatar uses, whose colours are darkened by expression-driven wrinkle
maps (`data/appearance.py`, `SyntheticWorld.gaussians`). So everything an expression does to an
image, except the wrinkle shading, reaches the model through the tracked mesh; the deformation
UNet (and its driving signal: position map or expression code) can only add the wrinkles and
corrections of the model's own errors. This probe renders every target of a run's held-out
self-reenactment set twice — as the ground truth, and with the wrinkle maps off — and reports the
PSNR between the two per split (ordinary / marginal expressions): the most that modelling
expression-dependent appearance could change, in the metric the claims are read in. It also
checks that its ground-truth render equals the eval set's target images.

    python experiments/probe_expression_appearance.py --workdir ROOT/baseline_seed0 --out DIR

writes `expression_appearance.json` and `expression_appearance.png` (the most-affected marginal
targets: ground truth | wrinkles off | 8 × |difference|) under `--out`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

from flexavatar_jax import inference
from flexavatar_jax.data import media
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.head import HeadParams
from flexavatar_jax.train import inputs
from flexavatar_jax.train.evaluate import PSNR_CAP_DB

flags.DEFINE_string("workdir", None, "A trained run (its config.json names the world and the eval set).")
flags.DEFINE_integer("identities", 0, "The first N held-out identities of the eval set (0 = all).")
flags.DEFINE_integer("shown", 6, "Targets in the picture.")
flags.DEFINE_string("out", "out/expression_appearance", "Output directory.")
FLAGS = flags.FLAGS


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def main(argv) -> int:
    del argv
    if not FLAGS.workdir:
        print("probe_expression_appearance: error: give --workdir", file=sys.stderr)
        return 2
    config, system, _ = inference.load_run(FLAGS.workdir)
    world = inputs.make_world(config, system.head)
    es = inputs.heldout_eval_set(config, world, num_views=4)
    n = FLAGS.identities or len(es["identity"])
    t_count = es["target_images"].shape[1]
    os.makedirs(FLAGS.out, exist_ok=True)
    rows, strips, check = [], [], 0.0
    t0 = time.time()
    for k in range(n):
        ident = world.identity(int(es["identity"][k]))
        plain = dataclasses.replace(ident, wrinkles=np.zeros_like(ident.wrinkles))
        for t in range(t_count):
            params = HeadParams(**{f: es[f"target_{f}"][k, t] for f in PARAM_FIELDS})
            cam = (es["target_viewmats"][k, t][None], es["target_Ks"][k, t][None], es["target_backgrounds"][k, t][None])
            truth = np.asarray(jax.device_get(world.render(ident, params, *cam)[0][0]))
            off = np.asarray(jax.device_get(world.render(plain, params, *cam)[0][0]))
            check = max(check, float(np.abs(truth - es["target_images"][k, t]).max()))
            rows.append({"identity": int(es["identity"][k]), "target": t, "marginal": bool(es["target_marginal"][k, t]),
                         "azimuth_deg": float(es["target_azimuth_deg"][k, t]), "psnr_wrinkles_off": psnr(truth, off),
                         "max_abs": float(np.abs(truth - off).max())})
            strips.append((rows[-1]["psnr_wrinkles_off"], rows[-1]["marginal"], truth, off))
        if (k + 1) % 16 == 0 or k + 1 == n:
            rate = (k + 1) / (time.time() - t0)
            print(f"{k + 1}/{n} identities, {rate:.1f}/s, ETA {(n - k - 1) / rate:.0f} s", flush=True)
    if check > 1e-4:
        raise AssertionError(f"the probe's ground-truth render differs from the eval set's targets by {check:.2e}")
    summary = {}
    for split, pick in (("all", lambda r: True), ("ordinary", lambda r: not r["marginal"]),
                        ("marginal", lambda r: r["marginal"])):
        chosen = [r for r in rows if pick(r)]
        values = np.array([r["psnr_wrinkles_off"] for r in chosen])
        finite = values[np.isfinite(values)]
        # The split's PSNR as the evaluation forms it: the mean of per-target PSNRs (identical
        # renders, infinite PSNR, are counted at the evaluator's cap).
        capped = np.minimum(values, PSNR_CAP_DB)
        summary[split] = {"count": len(chosen), "mean_psnr_db": float(capped.mean()),
                          "median_psnr_db": float(np.median(capped)),
                          "min_psnr_db": float(finite.min()) if finite.size else None,
                          "identical": int(np.sum(~np.isfinite(values)))}
        print(f"{split:>9}: {len(chosen)} targets; ground truth vs wrinkles off: mean {summary[split]['mean_psnr_db']:.1f} dB, "
              f"median {summary[split]['median_psnr_db']:.1f}, worst {summary[split]['min_psnr_db']} dB, "
              f"{summary[split]['identical']} identical")
    with open(os.path.join(FLAGS.out, "expression_appearance.json"), "w") as f:
        json.dump({"workdir": FLAGS.workdir, "identities": n, "max_abs_vs_eval_set": check, "summary": summary,
                   "targets": rows}, f, indent=1)
    worst = sorted((s for s in strips if s[1]), key=lambda s: s[0])[: FLAGS.shown]
    grid = [[truth, off, np.clip(8.0 * np.abs(truth - off), 0, 1)] for _, _, truth, off in worst]
    if grid:
        media.save_image(os.path.join(FLAGS.out, "expression_appearance.png"), media.image_grid(grid))
    print(f"wrote {FLAGS.out}/expression_appearance.json and expression_appearance.png "
          f"(render check: max |probe − eval set| = {check:.1e})")
    return 0


if __name__ == "__main__":
    app.run(main)
