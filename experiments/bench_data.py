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
  `git worktree add /tmp/ref 4be4cb3`) in a subprocess of this run, with the same settings
  (stopped with SIGSTOP outside its own rounds, since its loader renders ahead on threads);
* `device_gsplat_tile` — the same engine with the renderer's tile forced to gsplat's 16 pixels
  (where the platform default differs: 8 on CPU), and `default_tile_over_gsplat_tile`;

the engines are timed interleaved: `--rounds` rounds, in each of which every engine makes
`--batches` batches in turn, so that a drift of the machine's speed (up to 30 % between runs on
this 2-core CPU) falls on all of them alike; each ratio (`device_over_host`, ...) is given
overall and per round (`per_round`, `min_round`, `max_round`);
* `tiny` — for `configs/flexavatar.py:tiny`: seconds per train step with the batch already on the
  device, seconds to make a batch (loader + device render), and the data share of a step.

On a GPU host the same command runs on the GPU (JAX's default backend; `backend` in the JSON says
which): e.g. `--image_size 512 --uv_resolution 256`; `--config base` measures the data share of a
`base` step instead of a `tiny` one (the issue's goal: ≤ 15 %).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
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
flags.DEFINE_integer("batches", 4, "Timed batches per engine per round (after one warm-up batch).")
flags.DEFINE_integer("rounds", 4, "Rounds; in each, every engine times its batches in turn.")
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


class _DeviceEngine:
    """This engine at the platform's default tile (or, `gsplat_tile`, at gsplat's 16² tile: the
    platform table is cleared around every call, for this measurement only)."""

    def __init__(self, world, gsplat_tile: bool = False):
        from flexavatar_jax.data import ground_truth, pipeline
        from flexavatar_jax.render import common

        self.gsplat_tile = gsplat_tile
        self._it = pipeline.make_loader(_spec_source(world, 64), FLAGS.batch_size, seed=0)
        self._render = ground_truth.GroundTruthRenderer(world, input_annotations=False)
        with self._tiles():
            self.tile_size = common.default_tile_size()
            t0 = time.perf_counter()
            jax.block_until_ready(self._render(next(self._it)))
        self.warmup_s = time.perf_counter() - t0

    @contextlib.contextmanager
    def _tiles(self):
        from flexavatar_jax.render import common

        saved = dict(common._PLATFORM_TILE_SIZES)
        if self.gsplat_tile:
            common._PLATFORM_TILE_SIZES.clear()
        try:
            yield
        finally:
            common._PLATFORM_TILE_SIZES.update(saved)

    def round(self, batches: int) -> dict:
        views = 0
        with self._tiles():
            t0 = time.perf_counter()
            for _ in range(batches):
                b = jax.block_until_ready(self._render(next(self._it)))
                views += b["input_images"].shape[0] * (b["input_images"].shape[1] + b["target_images"].shape[1])
            dt = time.perf_counter() - t0
        return {"examples": batches * FLAGS.batch_size, "views": views, "seconds": dt}


# The old engine, in its own process from the reference checkout: it warms up, says "ready", then
# times one round of N batches per line N read from stdin.
_REFERENCE = textwrap.dedent("""
    import json, sys, time
    from flexavatar_jax.data import balance, pipeline
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld
    size, k, batch = (int(a) for a in sys.argv[1:4])
    world = SyntheticWorld(SyntheticConfig(uv_resolution=k, image_size=size))
    frames = pipeline.SyntheticFrames(world, num_identities=64)
    src = pipeline.ExampleSource(frames, pipeline.ExampleConfig(), seed=0,
                                 anchors=balance.named_anchor_codes(world.expression_names))
    it = pipeline.make_loader(src, batch, seed=0)
    next(it)
    print("ready", flush=True)
    for line in sys.stdin:
        views = 0
        t0 = time.perf_counter()
        for _ in range(int(line)):
            b = next(it)
            views += int(b["num_inputs"].sum()) + b["target_images"].shape[0] * b["target_images"].shape[1]
        print(json.dumps({"examples": int(line) * batch, "views": views, "seconds": time.perf_counter() - t0}),
              flush=True)
""")


class _ReferenceEngine:
    def __init__(self, checkout: str):
        env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
        args = [str(a) for a in (FLAGS.image_size, FLAGS.uv_resolution, FLAGS.batch_size)]
        self._proc = subprocess.Popen([sys.executable, "-c", _REFERENCE, *args], env=env, cwd=checkout, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self._proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the reference engine in {checkout} did not start (exit {self._proc.wait()})")
        # Its loader reads ahead on threads: stopped between its rounds, it cannot fill its buffer
        # while the other engines are timed.
        self._proc.send_signal(signal.SIGSTOP)

    def round(self, batches: int) -> dict:
        self._proc.send_signal(signal.SIGCONT)
        self._proc.stdin.write(f"{batches}\n")
        self._proc.stdin.flush()
        out = json.loads(self._proc.stdout.readline())
        self._proc.send_signal(signal.SIGSTOP)
        return out

    def close(self):
        self._proc.send_signal(signal.SIGCONT)
        self._proc.stdin.close()
        self._proc.wait()


def interleaved(engines: dict) -> dict:
    """`--rounds` rounds of `--batches` batches, the engines taking turns inside each round, so a
    drift in the machine's speed (up to 30 % between runs here) falls on all of them alike.
    Per engine: examples/s and views/s over all rounds, and the examples/s of each round."""
    rounds = {name: [] for name in engines}
    for r in range(FLAGS.rounds):
        for name, engine in engines.items():
            rounds[name].append(engine.round(FLAGS.batches))
            print(f"round {r + 1}/{FLAGS.rounds} {name}: {rounds[name][-1]['examples'] / rounds[name][-1]['seconds']:.2f} "
                  "examples/s", file=sys.stderr, flush=True)
    out = {}
    for name, rs in rounds.items():
        seconds = sum(r["seconds"] for r in rs)
        out[name] = {"examples_per_s": sum(r["examples"] for r in rs) / seconds,
                     "views_per_s": sum(r["views"] for r in rs) / seconds,
                     "round_examples_per_s": [r["examples"] / r["seconds"] for r in rs]}
    return out


def _ratios(a: dict, b: dict) -> dict:
    per_round = [x / y for x, y in zip(a["round_examples_per_s"], b["round_examples_per_s"])]
    return {"overall": a["examples_per_s"] / b["examples_per_s"], "per_round": per_round,
            "min_round": min(per_round), "max_round": max(per_round)}


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
    from flexavatar_jax.render.common import GSPLAT_TILE_SIZE

    engines = {"device": _DeviceEngine(world)}
    if engines["device"].tile_size != GSPLAT_TILE_SIZE:
        engines["device_gsplat_tile"] = _DeviceEngine(world, gsplat_tile=True)
    if FLAGS.reference_checkout:
        engines["host"] = _ReferenceEngine(FLAGS.reference_checkout)
    try:
        measured = interleaved(engines)
    finally:
        if "host" in engines:
            engines["host"].close()
    for name in ("device", "device_gsplat_tile"):
        if name in engines:
            measured[name].update(warmup_s=engines[name].warmup_s, gaussians=world.num_gaussians,
                                  tile_size=engines[name].tile_size)
    result["device_examples_per_s"] = measured["device"]["examples_per_s"]
    result.update(measured)
    if "device_gsplat_tile" in measured:
        result["default_tile_over_gsplat_tile"] = _ratios(measured["device"], measured["device_gsplat_tile"])
    if "host" in measured:
        result["host_examples_per_s"] = measured["host"]["examples_per_s"]
        result["device_over_host"] = _ratios(measured["device"], measured["host"])
    if FLAGS.config:
        result["train"] = train_data_share(FLAGS.config)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
