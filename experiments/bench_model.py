"""Benchmark the avatar API: reconstruction latency and animation (+ rendering) throughput.

For one config variant (`--config tiny` on a CPU, `base` on a GPU), with randomly initialised
parameters (speed does not depend on training):

* reconstruct: `jax.jit(system.reconstruct)` from 1 and from 4 views, seconds per avatar;
* animate + render: one avatar driven by random expressions / jaw / head poses, rendered at
  `model.image_size` into one camera per frame; frames/s at batch 1 (one call per frame) and at
  batch B (`--batch`, default 16: `jax.vmap` of animate+render over B frames in one call);
* animate only (Gaussians, no image) and render only (precomputed Gaussians) at the same
  batches, so the JSON gives the share of the frame time spent rendering.

Every number is the median (and min) wall time of `--repeats` calls after a warm-up call, with
`jax.block_until_ready`; compile time is reported separately. The JSON (stdout, and `--out`)
holds the device, jax version, resolved model config, the numbers, a side-by-side table and the
reference figures this project is measured against (FlexAvatar ~45 FPS drive / ~0.4 s
reconstruction, LAM 563 FPS; goal for `base` on an H100: reconstruct ≤ 50 ms, animate+render
≥ 600 FPS at batch 1).

    python experiments/bench_model.py --config tiny --out out/bench_model_tiny.json
    python experiments/bench_model.py --config base --out out/bench_model_base.json   # on a GPU
    python experiments/bench_model.py --quick                                           # smoke run
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

from flexavatar_jax.config import Config, to_dict
from flexavatar_jax.configs import flexavatar

ANCHORS = {
    "flexavatar_paper": {"drive_fps": 45.0, "reconstruct_s": 0.4},
    "lam": {"drive_fps": 563.0},
    "goal_base_h100": {"reconstruct_s_max": 0.050, "animate_render_fps_batch1_min": 600.0},
}
CAMERA_DISTANCE = 0.6  # metres, in front of the face (+z)
LOOK_AT = (0.0, 0.02, 0.0)
FOV_Y_DEG = 28.0  # frames the head (≈ ±0.15 m) at CAMERA_DISTANCE


FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "tiny", list(flexavatar.VARIANTS), "flexavatar_jax.configs.flexavatar variant")
flags.DEFINE_integer("repeats", 10, "timed calls per measurement (after one warm-up)")
flags.DEFINE_integer("batch", 16, "driving frames per call for the batched numbers")
flags.DEFINE_enum("backend", "auto", ["auto", "jax", "cuda"], "rasterize backend")
flags.DEFINE_boolean("quick", False, "smoke run: 3 repeats, batch 4")
flags.DEFINE_string("out", None, "JSON output file (default out/bench_model_<config>.json)")


def load_config(variant: str) -> Config:
    """The typed run config of a `configs/flexavatar.py` variant."""
    return Config.from_dict(flexavatar.get_config(variant))


def _time(fn, args, repeats: int) -> dict:
    """Compile + warm-up (first call), then `repeats` timed calls."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "first_call_s": first, "runs": repeats}


def driving_frames(head, batch: int, seed: int = 0):
    """`batch` frames of plausible driving: expressions ~N(0,1), jaw opening, small head turns
    (a `HeadParams` with leading [B]; its shape is zero, `animate` uses the avatar's), and one
    camera per frame on a small orbit around the face."""
    import jax.numpy as jnp
    import numpy as np

    from flexavatar_jax.head import POSE_SIZE, HeadParams
    from flexavatar_jax.render.camera import look_at

    rng = np.random.default_rng(seed)
    expression = rng.standard_normal((batch, head.num_expression))
    pose = np.zeros((batch, POSE_SIZE))
    pose[:, 0:3] = rng.uniform(-0.2, 0.2, (batch, 3))  # global
    pose[:, 6] = rng.uniform(0.0, 0.3, batch)  # jaw opening
    translation = np.zeros((batch, 3))
    azimuth = rng.uniform(-0.5, 0.5, batch)
    eyes = np.stack([CAMERA_DISTANCE * np.sin(azimuth), np.full(batch, LOOK_AT[1]),
                     CAMERA_DISTANCE * np.cos(azimuth)], -1)
    viewmats = look_at(jnp.asarray(eyes, jnp.float32), jnp.broadcast_to(jnp.asarray(LOOK_AT, jnp.float32), (batch, 3)))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    frames = HeadParams.from_pose(f32(np.zeros((batch, head.num_shape))), f32(expression), f32(pose), f32(translation))
    return frames, viewmats[:, None]  # viewmats [B,1,4,4]


def run(variant: str, repeats: int, batch: int, backend: str, seed: int = 0) -> dict:
    import flax
    import jax

    from flexavatar_jax.head import load_head
    from flexavatar_jax.inference import make_system
    from flexavatar_jax.models.avatar import parameter_counts
    from flexavatar_jax.render.camera import intrinsics_from_fov

    cfg = load_config(variant)
    head = load_head(cfg.head)
    start = time.perf_counter()
    system = make_system(cfg.model, head)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    params = jax.block_until_ready(flax.linen.meta.unbox(system.init(jax.random.key(seed))))
    init_s = time.perf_counter() - start
    size = system.image_size
    images = jax.random.uniform(jax.random.key(seed + 1), (4, size, size, 3))
    K = intrinsics_from_fov(FOV_Y_DEG, size, size)[None]  # [1,3,3]

    result = {"num_gaussians": system.num_gaussians, "image_size": size, "uv_resolution": cfg.model.uv_resolution,
              "parameters": parameter_counts(params), "build_s": build_s, "init_s": init_s, "batch": batch}

    reconstruct = jax.jit(system.reconstruct)
    result["reconstruct_1view"] = _time(reconstruct, (params, images[:1]), repeats)
    result["reconstruct_4views"] = _time(reconstruct, (params, images), repeats)
    avatar = jax.block_until_ready(reconstruct(params, images[:2]))

    # params are arguments, not closure constants (XLA would embed them in the program).
    # `frame`: one driving HeadParams (no leading axis); the batched versions vmap over frames.
    def animate_render(params, avatar, frame, viewmat):
        gaussians = system.animate(params, avatar, frame)
        rgb, _ = system.render(gaussians, viewmat, K, backend=backend)
        return rgb

    def render_only(gaussians, viewmat):
        return system.render(gaussians, viewmat, K, backend=backend)[0]

    def animate_only(params, avatar, frame):
        return system.animate(params, avatar, frame)

    per_frame = (None, None, 0, 0)
    fns = {
        "animate_render": (jax.jit(animate_render), jax.jit(jax.vmap(animate_render, in_axes=per_frame))),
        "animate": (jax.jit(animate_only), jax.jit(jax.vmap(animate_only, in_axes=per_frame[:3]))),
        "render": (jax.jit(render_only), jax.jit(jax.vmap(render_only))),
    }
    frames, viewmats = driving_frames(head, batch, seed)
    one = lambda tree: jax.tree.map(lambda x: x[0], tree)  # noqa: E731
    gaussians = fns["animate"][1](params, avatar, frames)
    inputs = {
        "animate_render": ((params, avatar, one(frames), one(viewmats)), (params, avatar, frames, viewmats)),
        "animate": ((params, avatar, one(frames)), (params, avatar, frames)),
        "render": ((one(gaussians), one(viewmats)), (gaussians, viewmats)),
    }
    for name, (single, batched) in fns.items():
        args_1, args_b = inputs[name]
        for b, fn, args in ((1, single, args_1), (batch, batched, args_b)):
            timing = _time(fn, args, repeats)
            timing["fps"] = b / timing["median_s"]
            result[f"{name}_batch{b}"] = timing
    for b in (1, batch):
        frame_s = result[f"animate_render_batch{b}"]["median_s"]
        result[f"render_share_batch{b}"] = result[f"render_batch{b}"]["median_s"] / frame_s
    return result


def table(result: dict, batch: int) -> list[dict]:
    """Side-by-side rows: measured number vs the reference figures."""
    r = lambda x: round(x, 4)  # noqa: E731
    goal = ANCHORS["goal_base_h100"]
    return [
        {"metric": "reconstruct 1 view (s)", "measured": r(result["reconstruct_1view"]["median_s"]),
         "flexavatar_paper": ANCHORS["flexavatar_paper"]["reconstruct_s"], "goal_base_h100": goal["reconstruct_s_max"]},
        {"metric": "reconstruct 4 views (s)", "measured": r(result["reconstruct_4views"]["median_s"]),
         "flexavatar_paper": ANCHORS["flexavatar_paper"]["reconstruct_s"], "goal_base_h100": goal["reconstruct_s_max"]},
        {"metric": "animate+render FPS, batch 1", "measured": r(result["animate_render_batch1"]["fps"]),
         "flexavatar_paper": ANCHORS["flexavatar_paper"]["drive_fps"], "lam": ANCHORS["lam"]["drive_fps"],
         "goal_base_h100": goal["animate_render_fps_batch1_min"]},
        {"metric": f"animate+render FPS, batch {batch}", "measured": r(result[f"animate_render_batch{batch}"]["fps"]),
         "flexavatar_paper": ANCHORS["flexavatar_paper"]["drive_fps"], "lam": ANCHORS["lam"]["drive_fps"]},
        {"metric": "animate only FPS, batch 1", "measured": r(result["animate_batch1"]["fps"])},
        {"metric": f"animate only FPS, batch {batch}", "measured": r(result[f"animate_batch{batch}"]["fps"])},
        {"metric": "render only FPS, batch 1", "measured": r(result["render_batch1"]["fps"])},
        {"metric": "render share of frame time, batch 1", "measured": r(result["render_share_batch1"])},
        {"metric": f"render share of frame time, batch {batch}", "measured": r(result[f"render_share_batch{batch}"])},
    ]


def goals(result: dict, variant: str, device_kind: str) -> dict:
    goal = ANCHORS["goal_base_h100"]
    if variant != "base" or "H100" not in device_kind:
        return {"applies": False,
                "why": f"the goal is for the base config on an H100 (this run: {variant} on {device_kind})"}
    return {"applies": True,
            "reconstruct_within_50ms": max(result["reconstruct_1view"]["median_s"],
                                           result["reconstruct_4views"]["median_s"]) <= goal["reconstruct_s_max"],
            "animate_render_600fps_batch1":
                result["animate_render_batch1"]["fps"] >= goal["animate_render_fps_batch1_min"]}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    variant, repeats, batch, backend = FLAGS.config, FLAGS.repeats, FLAGS.batch, FLAGS.backend
    if FLAGS.quick:
        repeats, batch = min(repeats, 3), min(batch, 4)
    out = FLAGS.out or os.path.join("out", f"bench_model_{variant}{'_quick' if FLAGS.quick else ''}.json")

    import jax

    device = jax.devices()[0]
    result = run(variant, repeats, batch, backend)
    device_kind = f"{device.platform}:{device.device_kind}"
    report = {
        "what": "FlexAvatar API speed: jitted reconstruct latency, animate(+render) throughput; seconds after compile",
        "config": variant,
        "device": device_kind,
        "jax_version": jax.__version__,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                 "load_average_at_start": os.getloadavg()},
        "backend": backend,
        "repeats": repeats,
        "model_config": to_dict(load_config(variant).model),
        "anchors": ANCHORS,
        "results": result,
        "goals": goals(result, variant, device_kind),
        "table": table(result, batch),
    }
    width = max(len(row["metric"]) for row in report["table"])
    print(f"[bench_model] {variant} on {device_kind}, {result['num_gaussians']} Gaussians, "
          f"{result['image_size']}² images", file=sys.stderr)
    for row in report["table"]:
        refs = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("metric", "measured"))
        print(f"  {row['metric']:<{width}}  {row['measured']:>10}   {refs}", file=sys.stderr)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    app.run(main)
