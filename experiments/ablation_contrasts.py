"""Paired differences between any two cells of a finished ablation study — exploratory contrasts.

The study's claims are fixed in its config before it runs and read once (`sweep report`). What
the report then shows may raise other questions (e.g. a variant that is better everywhere than the
baseline); this answers them with the same statistics (per-identity values, paired 95% bootstrap
over held-out identities and seeds), written apart from the claims so nobody mistakes them for
them:

    python experiments/ablation_contrasts.py --study configs/studies/ablations.py:scale --root ROOT \\
        --contrast no_mouth_loss:self/4_views/all/psnr,baseline:self/4_views/all/psnr --out FILE.json

`--contrast A,B` (repeatable) gives a − b of two cells `variant:mode/views/split/metric`.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from flexavatar_jax.studies import spec
from flexavatar_jax.studies.ablation import paired_difference, parse_cell, stacked, variant_samples
from flexavatar_jax.studies.report import read_point

flags.DEFINE_string("study", None, "The study config, e.g. configs/studies/ablations.py:scale.")
flags.DEFINE_string("root", None, "The study's root directory (its finished points).")
flags.DEFINE_multi_string("contrast", [], "A,B: two cells variant:mode/views/split/metric; reports a − b.")
flags.DEFINE_integer("resamples", 1000, "Bootstrap resamples.")
flags.DEFINE_string("out", None, "JSON file to write (optional).")
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv
    if not (FLAGS.study and FLAGS.root and FLAGS.contrast):
        print("ablation_contrasts: error: give --study, --root and at least one --contrast A,B", file=sys.stderr)
        return 2
    study = spec.load_study(FLAGS.study)
    samples = variant_samples([read_point(FLAGS.root, p) for p in spec.points(study)])
    rows = []
    for text in FLAGS.contrast:
        a_text, sep, b_text = text.partition(",")
        if not sep:
            print(f"ablation_contrasts: error: --contrast {text!r} is not 'A,B'", file=sys.stderr)
            return 2
        (va, ca), (vb, cb) = parse_cell(a_text), parse_cell(b_text)
        for v in (va, vb):
            if v not in samples:
                print(f"ablation_contrasts: error: no finished point of variant {v!r} under {FLAGS.root}", file=sys.stderr)
                return 1
        seeds = sorted(set(samples[va]) & set(samples[vb]))
        a, b = stacked(samples[va], seeds, ca), stacked(samples[vb], seeds, cb)
        if a is None or b is None:
            print(f"ablation_contrasts: error: {text!r} has a cell without values", file=sys.stderr)
            return 1
        d = paired_difference(a, b, FLAGS.resamples)
        rows.append({"a": a_text, "b": b_text, "seeds": seeds, "difference": d})
        print(f"{a_text} − {b_text}: {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump({"study": FLAGS.study, "note": "exploratory contrasts, not the study's registered claims",
                       "contrasts": rows}, f, indent=1)
        print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
