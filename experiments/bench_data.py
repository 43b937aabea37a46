"""On-the-fly synthetic pipeline throughput (examples/s), JSON to stdout and --out.

    python experiments/bench_data.py --image_size 128 --uv_resolution 128 --batches 6
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import app, flags

from flexavatar_jax.data import balance, pipeline
from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 128, "Rendered image size.")
flags.DEFINE_integer("uv_resolution", 128, "Gaussians per UV side of the ground-truth avatar.")
flags.DEFINE_integer("batch_size", 4, "Examples per batch.")
flags.DEFINE_integer("batches", 6, "Timed batches (after one warm-up batch).")
flags.DEFINE_multi_integer("workers", [0, 2], "Worker process counts to compare.")
flags.DEFINE_string("out", "out/bench_data.json", "JSON output.")


def measure(workers: int) -> dict:
    world = SyntheticWorld(SyntheticConfig(uv_resolution=FLAGS.uv_resolution, image_size=FLAGS.image_size))
    frames = pipeline.SyntheticFrames(world, num_identities=64)
    src = pipeline.ExampleSource(frames, pipeline.ExampleConfig(), seed=0,
                                 anchors=balance.named_anchor_codes(world.expression_names))
    it = pipeline.make_loader(src, FLAGS.batch_size, seed=0, worker_count=workers)
    t0 = time.perf_counter()
    next(it)
    warm = time.perf_counter() - t0
    views = 0
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
        b = next(it)
        views += int(b["num_inputs"].sum()) + b["target_images"].shape[0] * b["target_images"].shape[1]
    dt = time.perf_counter() - t0
    n = FLAGS.batches * FLAGS.batch_size
    return {"workers": workers, "examples_per_s": n / dt, "views_per_s": views / dt, "warmup_s": warm,
            "gaussians": world.num_gaussians}


def main(argv):
    del argv
    rows = [measure(w) for w in FLAGS.workers]
    result = {"image_size": FLAGS.image_size, "uv_resolution": FLAGS.uv_resolution, "batch_size": FLAGS.batch_size,
              "rows": rows}
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
