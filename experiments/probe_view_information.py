"""How much do extra input views tell about a synthetic head's side and back, before any model?

Issue 17 asks why 4 input views do not beat 1 on held-out side/back targets. This probe measures
the information the data itself offers, with two model-free predictors fitted on N training
identities and scored on held-out ones (the tiny config's world: 64² images, neutral expression,
fixed cameras shared by every identity, so pixel differences are identity differences):

* nearest neighbour: the training identity whose input views are closest (L2 over all input
  pixels) lends its target views;
* ridge regression from the input pixels to the target pixels (dual form; λ chosen per input set
  by 5-fold cross-validation on the training identities).

Inputs: 1 view (frontal, as the evaluation's first input) or 4 views (frontal + left, back,
right). Targets: side/back views at azimuths none of the inputs has, and frontal views. Also the
mean training head (what a model that ignores its inputs can do). The 4 − 1 difference per split,
with a 95% bootstrap interval over held-out identities, is the headroom the extra views give a
predictor of this kind.

    python experiments/probe_view_information.py --out experiments/results/views_information
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from flexavatar_jax.configs import flexavatar
from flexavatar_jax.config import Config
from flexavatar_jax.data import motion, synthetic
from flexavatar_jax.data.pipeline import SyntheticFrames
from flexavatar_jax.head import HeadParams
from flexavatar_jax.render import camera
from flexavatar_jax.train import inputs

INPUT_AZIMUTHS = (0.0, 90.0, 180.0, -90.0)  # the first is the 1-view input
TARGETS = {"side_back": (60.0, 120.0, 150.0, -60.0, -120.0, -150.0), "frontal": (-25.0, 25.0)}
FOV_DEG, FILL = 20.0, 0.7


def cameras(azimuths, size: int):
    dist = 0.3 / (2.0 * np.tan(np.deg2rad(FOV_DEG) / 2.0) * FILL)
    a = np.deg2rad(np.asarray(azimuths, np.float64))
    eyes = motion.HEAD_CENTER + dist * np.stack([np.sin(a), np.zeros_like(a), np.cos(a)], -1)
    viewmats = np.asarray(camera.look_at(eyes.astype(np.float32), np.broadcast_to(motion.HEAD_CENTER, eyes.shape)))
    K = np.asarray(camera.intrinsics_from_fov(FOV_DEG, size, size), np.float32)
    return viewmats.astype(np.float32), np.broadcast_to(K, (len(a), 3, 3))


def render(world, ids, azimuths, chunk: int = 16) -> np.ndarray:
    """[n, views, H, W, 3] neutral renders of `ids` from the fixed cameras."""
    size = world.config.image_size
    viewmats, Ks = cameras(azimuths, size)
    frames = SyntheticFrames(world, num_identities=1)
    zero = {k: np.zeros_like(np.asarray(v)) for k, v in frames.view_spec(0, 0, 0).params.items()}
    out = []
    for s in range(0, len(ids), chunk):
        part = np.asarray(ids[s:s + chunk])
        n, v = len(part), len(azimuths)
        params = HeadParams(shape=None, **{k: np.broadcast_to(x, (n, v, *x.shape)) for k, x in zero.items()})
        rgb = world.render_views(part, params, np.broadcast_to(viewmats, (n, v, 4, 4)), np.broadcast_to(Ks, (n, v, 3, 3)))
        out.append(np.asarray(rgb["rgb"]))
    return np.concatenate(out)


def psnr_rows(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean over target views of each row's PSNR: [n]."""
    mse = np.mean((pred - true) ** 2, axis=(-3, -2, -1))
    return np.mean(-10.0 * np.log10(np.maximum(mse, 1e-10)), axis=-1)


def ridge_fit_predict(x_train, y_train, x_test, lam):
    mx, my = x_train.mean(0), y_train.mean(0)
    xt, yt = x_train - mx, y_train - my
    gram = xt @ xt.T
    alpha = np.linalg.solve(gram + lam * np.trace(gram) / len(gram) * np.eye(len(gram)), yt)
    return my + ((x_test - mx) @ xt.T) @ alpha


def choose_lambda(x, y, grid=(1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0), folds: int = 5, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(x))
    errs = []
    for lam in grid:
        err = 0.0
        for f in range(folds):
            test = order[f::folds]
            train = np.setdiff1d(order, test)
            err += np.mean((ridge_fit_predict(x[train], y[train], x[test], lam) - y[test]) ** 2)
        errs.append(err)
    return float(grid[int(np.argmin(errs))])


def interval(diff: np.ndarray, rng, n: int = 2000) -> list[float]:
    means = [np.mean(diff[rng.integers(0, len(diff), len(diff))]) for _ in range(n)]
    return [float(np.mean(diff)), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--num_train", type=int, default=512)
    ap.add_argument("--num_heldout", type=int, default=64)
    args = ap.parse_args()
    cfg = Config.from_dict(flexavatar.get_config("tiny"))
    world = inputs.make_world(cfg, None)
    t0 = time.perf_counter()
    train_ids, held_ids = synthetic.train_ids(args.num_train), synthetic.heldout_ids(args.num_heldout)
    views = {}
    for name, ids in (("train", train_ids), ("heldout", held_ids)):
        views[name] = {"inputs": render(world, ids, INPUT_AZIMUTHS),
                       **{split: render(world, ids, az) for split, az in TARGETS.items()}}
        print(f"rendered {len(ids)} {name} identities ({time.perf_counter() - t0:.0f} s)", flush=True)
    rng = np.random.default_rng(0)
    results = {"num_train": args.num_train, "num_heldout": args.num_heldout, "input_azimuths": INPUT_AZIMUTHS,
               "target_azimuths": TARGETS, "image_size": world.config.image_size, "psnr": {}, "four_minus_one": {}}
    tr, te = views["train"], views["heldout"]
    for split in TARGETS:
        y_train, y_test = tr[split], te[split]
        flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
        scores = {"mean head": psnr_rows(np.broadcast_to(y_train.mean(0), y_test.shape), y_test)}
        for k in (1, 4):
            x_train, x_test = flat(tr["inputs"][:, :k]), flat(te["inputs"][:, :k])
            d = ((x_test[:, None] - x_train[None]) ** 2).sum(-1)
            scores[f"nearest neighbour, {k} view(s)"] = psnr_rows(y_train[np.argmin(d, 1)], y_test)
            lam = choose_lambda(x_train, flat(y_train))
            pred = ridge_fit_predict(x_train, flat(y_train), x_test, lam).reshape(y_test.shape)
            scores[f"ridge, {k} view(s) (λ={lam:g})"] = psnr_rows(np.clip(pred, 0, 1), y_test)
        results["psnr"][split] = {name: float(v.mean()) for name, v in scores.items()}
        names = list(scores)
        for method in ("nearest neighbour", "ridge"):
            one = next(n for n in names if n.startswith(f"{method}, 1"))
            four = next(n for n in names if n.startswith(f"{method}, 4"))
            results["four_minus_one"][f"{method}/{split}"] = interval(scores[four] - scores[one], rng)
        print(split, json.dumps(results["psnr"][split], indent=1), flush=True)
    print(json.dumps(results["four_minus_one"], indent=1))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "information.json"), "w") as f:
        json.dump(results, f, indent=1)
    # A picture: a held-out identity's inputs and its side/back targets next to the two nearest
    # neighbours' (by 1 and by 4 views).
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = []
        for i in range(4):
            d1 = ((te["inputs"][i, :1] - tr["inputs"][:, :1]) ** 2).sum((1, 2, 3, 4))
            d4 = ((te["inputs"][i] - tr["inputs"]) ** 2).sum((1, 2, 3, 4))
            rows.append(np.concatenate([np.concatenate(list(te["inputs"][i]), 1), np.concatenate(list(te["side_back"][i][:3]), 1),
                                        np.concatenate(list(tr["side_back"][np.argmin(d1)][:3]), 1),
                                        np.concatenate(list(tr["side_back"][np.argmin(d4)][:3]), 1)], 1))
        fig = plt.figure(figsize=(13, 4.2))
        plt.imshow(np.concatenate(rows, 0))
        plt.axis("off")
        plt.title("held-out inputs (front, left, back, right) | its side/back targets | those of the nearest "
                  "neighbour by 1 view | by 4 views", fontsize=8)
        fig.savefig(os.path.join(args.out, "information.png"), dpi=110, bbox_inches="tight")
    except ImportError:
        print("matplotlib not installed: no picture")
    print(f"wrote {args.out}/information.json ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
