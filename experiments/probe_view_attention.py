"""What do the Structured Head Queries attend to? Attention mass per input view, on held-out inputs.

For each trained workdir (a `queries`-lifter run, e.g. the ablation study's baseline points), the
held-out self-reenactment inputs (4 views; the eval set the run was scored on) go through the
reconstruction network with the lifter's attention weights recorded (`models.probes`). Reported
per cross-attention block:

* the mean mass on each input slot (slot 0 is the frontal view of the eval protocol);
* the mass a query puts on a view, binned by the angle between the azimuth its template point
  faces and the camera's azimuth, against the 1/v share a view-blind lifter would give: a lifter
  that reads each surface point from the views that see it has mass ≫ share at small angles and
  ≪ share near 180°;
* patch localisation (`probes.localisation`): of a query's mass within a view, the fraction on the
  patch where its surface point lies in that image (and on the 3×3 patches around it), over the
  views that see the point, against the share of those patches (position-blind attention). A
  projection lifter (Dual-UV) reads exactly that patch by construction. Control: the same measure
  with each row's point positions taken from the next row's cameras and poses — attention that
  only knows where faces usually are in an image scores as high on it as on the true positions.

    python experiments/probe_view_attention.py --workdirs RUN1,RUN2 --out experiments/results/x

writes `view_attention.json` and `view_attention.png` under `--out`.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from flexavatar_jax import inference
from flexavatar_jax.models import probes
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models.batch import input_views, model_inputs
from flexavatar_jax.models.views import InputViews
from flexavatar_jax.train import inputs

flags.DEFINE_list("workdirs", None, "Trained run directories (each with config.json and checkpoints).")
flags.DEFINE_string("out", "out/view_attention", "Output directory.")
flags.DEFINE_integer("batch", 4, "Rows per forward pass.")
FLAGS = flags.FLAGS

BINS = np.array([0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.001])


def probe(workdir: str) -> dict:
    config, system, params = inference.load_run(workdir)
    es = inputs.heldout_eval_set(config, inputs.make_world(config, system.head), num_views=4)
    n = len(es["identity"])
    # A lifter that reads the input cameras (the view-pose oracle) gets them, as in its evaluation.
    fn = jax.jit(lambda p, rows: probes.patch_attention(system, p, input_views(system, rows)))
    # Where each query's point is in each image: the true cameras and tracked params (the probe's
    # knowledge, not the lifter's).
    where = jax.jit(lambda rows: probes.query_pixels(system, InputViews(
        rows["input_images"], rows["input_mask"], rows["input_viewmats"], rows["input_Ks"],
        HeadParams(**{f: rows[f"input_{f}"] for f in PARAM_FIELDS}))))
    patches, pixels, seen = [], [], []
    for start in range(0, n, FLAGS.batch):
        rows = np.minimum(np.arange(start, start + FLAGS.batch), n - 1)
        batch = {k: v[rows] for k, v in model_inputs(es).items() if k.startswith("input_")}
        keep = min(FLAGS.batch, n - start)
        patches.append(np.asarray(fn(params, batch))[:, :keep])
        px, sn = where(batch)
        pixels.append(np.asarray(px)[:keep])
        seen.append(np.asarray(sn)[:keep])
    patch = np.concatenate(patches, axis=1)  # [blocks, n, q, v, hp, wp]
    pixels, seen = np.concatenate(pixels), np.concatenate(seen)
    mass = patch.sum(axis=(-2, -1))  # [blocks, n, q, v]
    q_az, q_valid = probes.query_azimuths(system)
    view_az, view_mask = es["input_azimuth_deg"].astype(np.float64), es["input_mask"]
    blocks = []
    for b in range(mass.shape[0]):
        by_angle = probes.mass_by_angle(mass[b], q_az, q_valid, view_az, view_mask, BINS)
        per_slot = mass[b][:, q_valid].mean(axis=(0, 1))
        p = config.model.encoder.patch_size
        local = {f"radius_{r}": {**probes.localisation(patch[b], pixels, seen, p, r),
                                 "control_next_row": probes.localisation(patch[b], np.roll(pixels, -1, 0),
                                                                         np.roll(seen, -1, 0), p, r)["mass"]}
                 for r in (0, 1)}
        blocks.append({"block": b, "mass_per_slot": per_slot.tolist(),
                       "by_angle": {k: np.asarray(v).tolist() for k, v in by_angle.items()},
                       "patch_localisation": local})
    return {"workdir": workdir, "identities": n, "input_azimuth_deg": view_az.tolist(), "blocks": blocks}


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = 0.5 * (BINS[:-1] + BINS[1:])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results:
        for blk in r["blocks"]:
            ax.plot(centres, blk["by_angle"]["mass"], "o-",
                    label=f"{os.path.basename(r['workdir'].rstrip('/'))}, block {blk['block']}")
    uniform = results[0]["blocks"][0]["by_angle"]["uniform"]
    ax.plot(centres, uniform, "k--", label="view-blind share (1/v)")
    ax.set_xlabel("angle between the query's surface direction and the camera (degrees)")
    ax.set_ylabel("attention mass on the view")
    ax.set_title("Structured Head Queries: attention mass per view (held-out, 4 views)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv) -> int:
    del argv
    if not FLAGS.workdirs:
        print("probe_view_attention: error: give --workdirs", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.out, exist_ok=True)
    results = []
    for k, w in enumerate(FLAGS.workdirs):
        print(f"[{k + 1}/{len(FLAGS.workdirs)}] probing {w}", flush=True)
        results.append(probe(w))
        last = results[-1]["blocks"][-1]
        print(f"  last block: mass per slot {np.round(last['mass_per_slot'], 3).tolist()}; by angle "
              f"{np.round(last['by_angle']['mass'], 3).tolist()} vs view-blind {np.round(last['by_angle']['uniform'], 3).tolist()}",
              flush=True)
        for blk in results[-1]["blocks"]:
            loc = blk["patch_localisation"]
            r0, r1 = loc["radius_0"], loc["radius_1"]
            print(f"  block {blk['block']}: mass on the point's patch {r0['mass']:.4f} (position-blind "
                  f"{r0['chance']:.4f}, next row's positions {r0['control_next_row']:.4f}), on its 3×3 patches "
                  f"{r1['mass']:.3f} ({r1['chance']:.3f}, {r1['control_next_row']:.3f})", flush=True)
    with open(os.path.join(FLAGS.out, "view_attention.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(FLAGS.out, "view_attention.png"))
    print(f"wrote {FLAGS.out}/view_attention.json and view_attention.png")
    return 0


if __name__ == "__main__":
    app.run(main)
