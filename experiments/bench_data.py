"""Synthetic data throughput: the device engine against the old host pipeline, side by side in one run.

    python experiments/bench_data.py --out experiments/results/bench_data/cpu.json \
        --reference_checkout /path/to/checkout-of-4be4cb3

Measures, at one image size / UV resolution / batch (default 128², K=128, batch 4, the pipeline's
default example of 1–4 inputs + 4 targets):

* `device_examples_per_s` — this engine: the grain loader yields view specs (host), one jitted call
  synthesises the batch's identities and renders all their views (`data.ground_truth`);
  `device_views_per_s` counts every rendered view (padded input slots included);
* `host_ms_per_example` — host CPU time per example of that loader (drawing frames, cameras,
  clips of new identities), measured over fresh identities;
* `identity_ms` — one identity synthesised (jitted, after compilation) at K=64 and K=128, alone
  and as a vmapped batch of 8 (per identity);
* `host_examples_per_s` — the engine before this change (numpy identities, one render call per
  view from the loader), run from `--reference_checkout` (a checkout of commit 4be4cb3, e.g.
  `git worktree add /tmp/ref 4be4cb3`) in a subprocess of this run, with the same settings;
* `device_gsplat_tile` — the same engine with the renderer's tile forced to gsplat's 16 pixels
  (where the platform default differs: 8 on CPU), measured right after `device`, and
  `default_tile_over_gsplat_tile`, the ratio of the two;
* `tiny` — for `configs/flexavatar.py:tiny`: seconds per train step with the batch already on the
  device, seconds to make a batch (loader + device render), and the data share of a step.

On a GPU: `--backend gpu --image_size 512 --uv_resolution 256` etc.; `--config base` adds the
data share of a `base` step (the issue's goal: ≤ 15 %).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 128, "Rendered image size.")
flags.DEFINE_integer("uv_resolution", 128, "Gaussians per UV side of the ground-truth avatar.")
flags.DEFINE_integer("batch_size", 4, "Examples per batch.")
flags.DEFINE_integer("batches", 6, "Timed batches (after one warm-up batch).")
flags.DEFINE_string("reference_checkout", "", "A checkout of the pre-device engine (commit 4be4cb3) for "
                    "host_examples_per_s; empty: not measured.")
flags.DEFINE_string("config", "tiny", "FlexAvatar config variant whose train-step data share is measured "
                    "('' to skip).")
flags.DEFINE_integer("steps", 6, "Timed train steps for the data share.")
flags.DEFINE_string("out", "out/bench_data.json", "JSON output.")


def _timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / repeats


def identity_ms() -> dict:
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld

    out = {}
    for k in (64, 128):
        world = SyntheticWorld(SyntheticConfig(uv_resolution=k, image_size=64))
        one = _timed(lambda: world.identity_arrays([7]), 10)
        eight = _timed(lambda: world.identity_arrays(np.arange(8)), 4) / 8
        out[f"K{k}"] = {"one_ms": 1e3 * one, "batched8_ms_per_identity": 1e3 * eight, "gaussians": world.num_gaussians}
    return out


def _spec_source(world, num_identities: int):
    from flexavatar_jax.data import balance, pipeline

    frames = pipeline.SyntheticFrames(world, num_identities=num_identities)
    return pipeline.ExampleSource(frames, pipeline.ExampleConfig(), seed=0,
                                  anchors=balance.named_anchor_codes(world.expression_names))


def host_ms_per_example(world) -> float:
    """Host time per spec example, over identities not seen before (clips drawn inside)."""
    src = _spec_source(world, 4096)
    per = src.config.examples_per_identity
    idx = [i * per for i in range(1000, 1100)]
    src[idx[0]]
    t0 = time.process_time()
    for i in idx:
        src[i]
    return 1e3 * (time.process_time() - t0) / len(idx)


def device_pipeline(world) -> dict:
    from flexavatar_jax.data import ground_truth, pipeline

    src = _spec_source(world, 64)
    it = pipeline.make_loader(src, FLAGS.batch_size, seed=0)
    render = ground_truth.GroundTruthRenderer(world, input_annotations=False)
    t0 = time.perf_counter()
    jax.block_until_ready(render(next(it)))
    warm = time.perf_counter() - t0
    views = 0
    t0 = time.perf_counter()
    for _ in range(FLAGS.batches):
        b = jax.block_until_ready(render(next(it)))
        views += b["input_images"].shape[0] * (b["input_images"].shape[1] + b["target_images"].shape[1])
    dt = time.perf_counter() - t0
    n = FLAGS.batches * FLAGS.batch_size
    from flexavatar_jax.render.common import default_tile_size

    return {"examples_per_s": n / dt, "views_per_s": views / dt, "warmup_s": warm, "gaussians": world.num_gaussians,
            "tile_size": default_tile_size()}


_REFERENCE = textwrap.dedent("""
    import json, sys, time
    from flexavatar_jax.data import balance, pipeline
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld
    size, k, batch, batches = (int(a) for a in sys.argv[1:5])
    world = SyntheticWorld(SyntheticConfig(uv_resolution=k, image_size=size))
    frames = pipeline.SyntheticFrames(world, num_identities=64)
    src = pipeline.ExampleSource(frames, pipeline.ExampleConfig(), seed=0,
                                 anchors=balance.named_anchor_codes(world.expression_names))
    it = pipeline.make_loader(src, batch, seed=0)
    next(it)
    views = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        views += int(b["num_inputs"].sum()) + b["target_images"].shape[0] * b["target_images"].shape[1]
    dt = time.perf_counter() - t0
    print(json.dumps({"examples_per_s": batches * batch / dt, "views_per_s": views / dt}))
""")


def reference_pipeline() -> dict | None:
    if not FLAGS.reference_checkout:
        return None
    env = dict(os.environ, PYTHONPATH=os.path.abspath(FLAGS.reference_checkout))
    args = [str(a) for a in (FLAGS.image_size, FLAGS.uv_resolution, FLAGS.batch_size, FLAGS.batches)]
    done = subprocess.run([sys.executable, "-c", _REFERENCE, *args], env=env, capture_output=True, text=True,
                          cwd=FLAGS.reference_checkout, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_data_share(variant: str) -> dict:
    """Seconds per train step (batch on the device) and per batch made (loader + render)."""
    from flexavatar_jax.config import Config
    from flexavatar_jax.configs import flexavatar
    from flexavatar_jax.data import ground_truth
    from flexavatar_jax.train import inputs, sharding
    from flexavatar_jax.train.loop import Trainer

    config = Config.from_dict(flexavatar.get_config(variant))
    trainer = Trainer(config, "/tmp/bench_data_unused")
    world = inputs.make_world(config, trainer.head)
    source = inputs.train_source(config, world, trainer.system.needs_cameras())
    loader = inputs.train_loader(config, source, 1, 0)
    render = ground_truth.GroundTruthRenderer(world, trainer.system.needs_cameras(), trainer.batch_sharding)
    make = lambda: render(sharding.global_batch(next(loader), trainer.mesh))  # noqa: E731
    state = trainer.init_state()
    batch = jax.block_until_ready(make())
    state, m = trainer.step_global(state, batch, 0)
    jax.block_until_ready(m)
    t_data = t_step = 0.0
    for s in range(FLAGS.steps):
        t0 = time.perf_counter()
        batch = jax.block_until_ready(make())
        t1 = time.perf_counter()
        state, m = trainer.step_global(state, batch, s + 1)
        jax.block_until_ready(m)
        t_data += t1 - t0
        t_step += time.perf_counter() - t1
    data, step = t_data / FLAGS.steps, t_step / FLAGS.steps
    return {"config": variant, "data_s_per_step": data, "train_s_per_step": step, "data_share": data / (data + step),
            "image_size": config.model.image_size, "uv_resolution": config.data.synthetic.uv_resolution,
            "batch_size": config.train.batch_size}


def main(argv):
    del argv
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld

    world = SyntheticWorld(SyntheticConfig(uv_resolution=FLAGS.uv_resolution, image_size=FLAGS.image_size))
    result = {"backend": jax.default_backend(), "image_size": FLAGS.image_size, "uv_resolution": FLAGS.uv_resolution,
              "batch_size": FLAGS.batch_size, "load_avg_1min": os.getloadavg()[0]}
    result["identity_ms"] = identity_ms()
    result["host_ms_per_example"] = host_ms_per_example(world)
    device = device_pipeline(world)
    result["device_examples_per_s"] = device["examples_per_s"]
    result["device"] = device
    from flexavatar_jax.render import common

    if common.default_tile_size() != common.GSPLAT_TILE_SIZE:
        platform_tiles = dict(common._PLATFORM_TILE_SIZES)
        common._PLATFORM_TILE_SIZES.clear()  # every platform on gsplat's tile, for this measurement only
        try:
            gsplat_tile = device_pipeline(world)
        finally:
            common._PLATFORM_TILE_SIZES.update(platform_tiles)
        result["device_gsplat_tile"] = gsplat_tile
        result["default_tile_over_gsplat_tile"] = device["examples_per_s"] / gsplat_tile["examples_per_s"]
    reference = reference_pipeline()
    if reference is not None:
        result["host_examples_per_s"] = reference["examples_per_s"]
        result["host"] = reference
        result["device_over_host"] = device["examples_per_s"] / reference["examples_per_s"]
    if FLAGS.config:
        result["train"] = train_data_share(FLAGS.config)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
