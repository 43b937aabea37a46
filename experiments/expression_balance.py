"""Share of marginal expressions among sampled training frames, before vs after FlexAvatar's
data-distribution adjustment. Writes JSON and a PNG bar chart.

    python experiments/expression_balance.py --num_identities 200 --out out/expression_balance
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags
from PIL import Image, ImageDraw

from flexavatar_jax.data import balance, motion
from flexavatar_jax.head.procedural import load_procedural_arrays

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_identities", 200, "Identities (one clip set each).")
flags.DEFINE_integer("frames", 192, "Frames per identity.")
flags.DEFINE_integer("samples", 2000, "Training frames sampled per identity and setting.")
flags.DEFINE_string("out", "out/expression_balance", "Output directory.")
flags.DEFINE_integer("seed", 0, "Seed.")


def run(num_identities: int, frames: int, samples: int, seed: int) -> dict:
    names = [str(n) for n in load_procedural_arrays()["expression_names"]]
    anchors = balance.named_anchor_codes(names)
    rng = np.random.default_rng(seed)
    settings = {"uniform": balance.BalanceConfig(enabled=False), "balanced": balance.BalanceConfig()}
    marginal = {k: 0 for k in settings}
    per_anchor = {k: np.zeros(len(motion.ANCHOR_EXPRESSIONS), np.int64) for k in settings}
    total = 0
    for _ in range(num_identities):
        clip = motion.sample_clip(rng, frames, names)
        codes = balance.expression_codes(clip.expression, clip.jaw_pose, clip.eyes_pose)
        for key, cfg in settings.items():
            p = balance.sampling_probabilities(codes, anchors, cfg)
            picks = rng.choice(frames, size=samples, p=p)
            marginal[key] += int(clip.marginal[picks].sum())
            ev = clip.event[picks][clip.marginal[picks]]
            per_anchor[key] += np.bincount(ev, minlength=len(per_anchor[key]))
        total += samples
    return {
        "num_identities": num_identities, "frames_per_identity": frames, "samples_per_identity": samples,
        "marginal_share": {k: marginal[k] / total for k in settings},
        "per_anchor_share": {k: {name: float(c) / total for name, c in zip(motion.ANCHOR_EXPRESSIONS, per_anchor[k])}
                             for k in settings},
    }


def bar_chart(result: dict, path: pathlib.Path) -> None:
    names = list(motion.ANCHOR_EXPRESSIONS)
    w, h, left, top, bottom = 1100, 520, 60, 50, 170
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    share = result["per_anchor_share"]
    vmax = max(max(share["balanced"].values()), max(share["uniform"].values()), 1e-9)
    slot = (w - left - 20) / len(names)
    for i, n in enumerate(names):
        for j, (key, col) in enumerate((("uniform", (120, 120, 200)), ("balanced", (220, 110, 60)))):
            v = share[key][n] / vmax * (h - top - bottom)
            x0 = left + i * slot + j * slot * 0.42 + 2
            d.rectangle([x0, h - bottom - v, x0 + slot * 0.4, h - bottom], fill=col)
        label = Image.new("RGB", (160, 14), "white")
        ImageDraw.Draw(label).text((0, 0), n, fill="black")
        img.paste(label.rotate(90, expand=True), (int(left + i * slot + slot * 0.3), h - bottom + 5))
    ms = result["marginal_share"]
    d.text((left, 10), f"share of sampled frames that are marginal: uniform {ms['uniform']:.3f}  |  "
                       f"balanced {ms['balanced']:.3f}   (blue: uniform, orange: balanced; bars: per anchor)",
           fill="black")
    d.line([left, h - bottom, w - 10, h - bottom], fill="black")
    img.save(path)


def main(argv):
    del argv
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(FLAGS.num_identities, FLAGS.frames, FLAGS.samples, FLAGS.seed)
    (out / "expression_balance.json").write_text(json.dumps(result, indent=2))
    bar_chart(result, out / "expression_balance.png")
    print(json.dumps({"marginal_share": result["marginal_share"]}, indent=2))


if __name__ == "__main__":
    app.run(main)
