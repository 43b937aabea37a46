"""Benchmark `rasterize` (tiled) against a naive dense JAX splatter on head-shaped scenes.

Each (scene, implementation) pair runs in a fresh subprocess so that `ru_maxrss` is that scene's
own peak resident memory (the figure includes the ~0.3-0.5 GB a JAX process holds before any
work; `baseline_rss_mb` reports it). Per pair we report AOT compile time and the wall time of the
forward and of forward+backward (value_and_grad w.r.t. all Gaussian parameters) after compiling,
as min and median over `--repeats` runs (tiled: after one warm-up run; dense: no warm-up, since
a single dense run takes minutes and compile time is already excluded).

Scenes: N Gaussians on a head-sized ellipsoid shell (semi-axes 8 × 11 × 9.5 cm, 1 cm thick) seen
from 0.6 m with a field of view that frames the head, scales matched to the Gaussian spacing,
so per-tile load is what an avatar produces (densest at the silhouette).

The tiled render is timed once per variant (`--compositors`, default
lockstep,lockstep@16,sequential: `RasterOptions.compositor`, with `@T` a tile size, else the
platform's default tile, 8 on CPU), each with its stage split of the forward: projection, tile
binning + sort, and the rest (compositing, packing, image assembly; the full forward minus the
two), plus the projection's forward+backward; the table gives each variant's time over the
first's.

The dense baseline composites every pixel against every Gaussian (same projection, same
compositing rules), chunked over pixels under `jax.checkpoint` so it fits in memory. It is
skipped for a scene when its predicted fwd+bwd time (scaled from the previous dense scene by
pixels × Gaussians) exceeds `--dense_budget_s`; the JSON then says so.

    python experiments/bench_render.py --backend jax --out out/bench_render.json --repeats 3

GPU suite (`--backend cuda`, or `--suite gpu`): the CUDA backend against the pure-JAX backend on
the same GPU (`jax`: lockstep compositor, all tiles at once; `jax_sequential`: tile by tile), and gsplat's CUDA rasterizer when torch + gsplat happen to be importable (imported
only inside that child process; `--gsplat never` skips it). Scenes (Gaussians, image, cameras):
80K at 512², 262K at 512², 1M at 1920×1080, 80K at 512² × 8 cameras. Per (scene, implementation),
in a fresh process: compile time, forward and forward+backward wall time (min/median over
`--repeats` after a warm-up), peak GPU memory (JAX: `peak_bytes_in_use` of the device allocator,
run with XLA_PYTHON_CLIENT_PREALLOCATE=false; torch: `max_memory_allocated`), intersection counts,
and for the CUDA backend the max |image difference| to the JAX backend (`--check_max_gaussians`).

    python experiments/bench_render.py --backend cuda --out out/bench_render_gpu.json --repeats 10

(`--scenes` and `--impls cuda,jax` split the suite into shorter runs, e.g. the pure-JAX backend
at 1M Gaussians / 1080p on its own.)
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

SCENES = {  # name: (num_gaussians, image size)
    "5k_64": (5_000, 64),
    "20k_128": (20_000, 128),
    "80k_256": (80_000, 256),
    "80k_512": (80_000, 512),
}
GPU_SCENES = {  # name: (num_gaussians, width, height, cameras)
    "80k_512": (80_000, 512, 512, 1),
    "262k_512": (262_144, 512, 512, 1),
    "1m_1080p": (1_000_000, 1920, 1080, 1),
    "80k_512_x8": (80_000, 512, 512, 8),
}
HEAD_SEMI_AXES = (0.08, 0.11, 0.095)  # metres: half width, half height, half depth
CAMERA_DISTANCE = 0.6
FRAME_HALF_HEIGHT = 0.12  # metres visible above/below the head centre at the camera distance

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "jax", ["auto", "jax", "cuda"], "rasterize backend")
flags.DEFINE_string("out", "out/bench_render.json", "JSON output file")
flags.DEFINE_integer("repeats", 3, "timed runs per measurement (tiled)")
flags.DEFINE_integer("dense_repeats", 1, "timed runs per measurement (dense)")
flags.DEFINE_string("scenes", ",".join(SCENES), f"comma-separated subset of {list(SCENES)}")
flags.DEFINE_enum("dense", "auto", ["auto", "always", "never"], "run the dense baseline")
flags.DEFINE_float("dense_budget_s", 900.0, "auto: skip the dense run when its predicted fwd+bwd time exceeds this")
flags.DEFINE_enum("suite", None, ["cpu", "gpu"],
                  "cpu: tiled vs dense on SCENES (default for --backend jax/auto); "
                  "gpu: CUDA vs JAX backend on GPU_SCENES (default for --backend cuda)")
flags.DEFINE_enum("gsplat", "auto", ["auto", "always", "never"],
                  "gpu suite: also time gsplat when torch + gsplat are importable")
flags.DEFINE_string("impls", "cuda,jax,jax_sequential",
                    "gpu suite: which of cuda, jax (lockstep compositor) and jax_sequential to run (gsplat is "
                    "controlled by --gsplat)")
flags.DEFINE_integer("check_max_gaussians", 300_000,
                     "gpu suite: compare CUDA and JAX images for scenes up to this many Gaussians")
flags.DEFINE_float("child_timeout_s", 1800.0, "gpu suite: per-process time limit")
flags.DEFINE_string("child", None, "internal: measure this one scene in this process (set by the parent)")
flags.DEFINE_string("impl", "tiled", "internal: the implementation the --child process measures")
flags.DEFINE_string("compositors", "lockstep,lockstep@16,sequential",
                    "cpu suite: the pure-JAX variants to time: RasterOptions.compositor, optionally @tile_size "
                    "(default: the platform's tile)")
flags.DEFINE_string("compositor", "lockstep", "internal: the compositor a tiled --child process measures")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def head_scene(num_gaussians: int, size: int, seed: int = 0, height: int | None = None, num_views: int = 1):
    """(means, quats, scales, opacities, colors, viewmats, Ks) as float32 numpy arrays; the image
    is size × (height or size); several cameras orbit the head at the same distance."""
    import numpy as np

    from flexavatar_jax.render import camera

    rng = np.random.default_rng(seed)
    axes = np.asarray(HEAD_SEMI_AXES)
    direction = rng.normal(size=(num_gaussians, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = direction * axes * rng.uniform(0.9, 1.0, (num_gaussians, 1))
    area = 4.0 * np.pi * np.prod(axes) ** (2.0 / 3.0)  # sphere of equal volume: close enough
    spacing = np.sqrt(area / num_gaussians)
    scales = 0.5 * spacing * rng.uniform(0.5, 1.5, (num_gaussians, 3))
    quats = rng.normal(size=(num_gaussians, 4))
    opacities = rng.uniform(0.3, 1.0, num_gaussians)
    colors = rng.uniform(0.0, 1.0, (num_gaussians, 3))
    if num_views == 1:
        viewmats = camera.look_at(np.array([[0.0, 0.0, CAMERA_DISTANCE]], np.float32), np.zeros((1, 3), np.float32))
    else:
        viewmats = camera.orbit(num_views, CAMERA_DISTANCE, elevation_deg=10.0)
    fov = 2.0 * np.degrees(np.arctan(FRAME_HALF_HEIGHT / CAMERA_DISTANCE))
    Ks = np.broadcast_to(np.asarray(camera.intrinsics_from_fov(fov, size, height or size)), (num_views, 3, 3))
    f32 = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    return tuple(f32(x) for x in (means, quats, scales, opacities, colors, viewmats, Ks))


def dense_rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, pair_budget=1 << 22):
    """Naive reference splatter: every pixel against every Gaussian (gsplat rules, no tiles).

    Pixels are processed in chunks of ~pair_budget/N under `jax.checkpoint`, so the backward
    recomputes each chunk instead of storing [pixels × N] residuals.
    """
    import jax
    import jax.numpy as jnp

    from flexavatar_jax.render.projection import ALPHA_THRESHOLD, project_gaussians
    from flexavatar_jax.render.common import MAX_ALPHA, TRANSMITTANCE_EPS

    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    num_pixels = width * height
    chunk = max(16, min(num_pixels, pair_budget // max(means.shape[0], 1)))
    num_chunks = -(-num_pixels // chunk)
    ys, xs = jnp.divmod(jnp.arange(num_chunks * chunk), width)
    pixels = jnp.stack([xs + 0.5, ys + 0.5], -1).astype(means.dtype).reshape(num_chunks, chunk, 2)

    def one_view(means2d, conics, depths, valid):
        order = jnp.argsort(jnp.where(valid, depths, jnp.inf))
        m, con = means2d[order], conics[order]
        opac, feats = jnp.where(valid, opacities, 0.0)[order], colors[order]

        @jax.checkpoint
        def pixel_chunk(pix):
            dx = m[None, :, 0] - pix[:, 0:1]
            dy = m[None, :, 1] - pix[:, 1:2]
            sigma = 0.5 * (con[None, :, 0] * dx * dx + con[None, :, 2] * dy * dy) + con[None, :, 1] * dx * dy
            alpha = jnp.minimum(MAX_ALPHA, opac[None] * jnp.exp(-jnp.maximum(sigma, 0.0)))
            alpha = jnp.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0.0)
            log1m = jnp.log1p(-alpha)
            t_excl = jnp.exp(jnp.cumsum(log1m, axis=1) - log1m)
            live = t_excl * (1.0 - alpha) > TRANSMITTANCE_EPS
            color = jnp.where(live, alpha * t_excl, 0.0) @ feats
            return color, jnp.exp(jnp.sum(jnp.where(live, log1m, 0.0), axis=1))

        color, trans = jax.lax.map(pixel_chunk, pixels)
        return color.reshape(-1, feats.shape[1])[:num_pixels], trans.reshape(-1)[:num_pixels]

    color, trans = jax.vmap(one_view)(proj.means2d, proj.conics, proj.depths, proj.valid)
    num_views = viewmats.shape[0]
    return color.reshape(num_views, height, width, -1), (1.0 - trans).reshape(num_views, height, width, 1)


def _time(fn, args, repeats):
    import jax

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"min_s": min(times), "median_s": statistics.median(times), "runs": len(times)}


def _compile_and_time(render, arrays, repeats, warmup, result, memory_key, memory_mb):
    """Compiles and times `render` (forward) and a value-and-grad step (forward+backward) on
    `arrays`, recording compile times, timings and `memory_mb()` under `memory_key` ("fwd" /
    "fwd_bwd" substituted) in `result`. Returns the compiled forward."""
    import jax
    import jax.numpy as jnp

    def loss(means, quats, scales, opacities, colors, viewmats, Ks):
        images, alphas = render(means, quats, scales, opacities, colors, viewmats, Ks)
        return jnp.sum(images * images) + jnp.sum(alphas)

    compiled = {}
    for name, fn in (("fwd", render), ("fwd_bwd", jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))):
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*arrays).compile()
        result[f"compile_{name}_s"] = time.perf_counter() - start
        if warmup:
            jax.block_until_ready(compiled[name](*arrays))
        result[name] = _time(compiled[name], arrays, repeats)
        result[memory_key.format(name)] = memory_mb()
    return compiled["fwd"]


def stage_times(arrays, size: int, repeats: int, tile_size: int | None = None) -> dict:
    """Forward time of the pure-JAX stages at this scene, each compiled on its own: projection
    (also forward+backward), tile binning + sort, and the rest of a full render (packing,
    compositing, image assembly) as full minus the two, so the three add up to the full forward."""
    import jax
    import jax.numpy as jnp

    from flexavatar_jax.render import jax_backend
    from flexavatar_jax.render.common import RasterOptions
    from flexavatar_jax.render.projection import project_gaussians

    means, quats, scales, opacities, colors, viewmats, Ks = arrays
    options = RasterOptions(tile_size=tile_size).resolved(viewmats.shape[0], means.shape[0])
    project = jax.jit(lambda *a: project_gaussians(*a, size, size, tile_size=options.tile_size))
    proj_args = (means, quats, scales, opacities, viewmats, Ks)

    def project_loss(*a):
        p = project_gaussians(*a, size, size, tile_size=options.tile_size)
        return jnp.sum(p.means2d ** 2) + jnp.sum(p.conics) + jnp.sum(p.depths)

    project_grad = jax.jit(jax.value_and_grad(project_loss, argnums=(0, 1, 2, 3)))
    proj = project(*proj_args)
    tiles = -(-size // options.tile_size)
    binning = jax.jit(lambda p: jax_backend._bin_intersections(
        p.tile_min, p.tile_max, p.depths, p.valid, tiles, tiles, options.max_gaussians_per_tile,
        options.max_intersections))
    out = {}
    for name, fn, args in (("project", project, proj_args), ("project_fwd_bwd", project_grad, proj_args),
                           ("bin_sort", binning, (proj,))):
        jax.block_until_ready(fn(*args))
        out[name] = _time(fn, args, repeats)
    return out


def run_child(scene_name: str, impl: str, backend: str, repeats: int, warmup: bool, compositor: str) -> dict:
    """Measure one (scene, implementation) pair in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flexavatar_jax.render import rasterize

    num_gaussians, size = SCENES[scene_name]
    arrays = tuple(jnp.asarray(x) for x in head_scene(num_gaussians, size))
    result = {"scene": scene_name, "impl": impl, "num_gaussians": num_gaussians, "size": size}
    compositor, _, tile = compositor.partition("@")
    tile_size = int(tile) if tile else None
    if impl == "tiled":
        from flexavatar_jax.render.common import RasterOptions

        result["compositor"] = compositor
        result["tile_size"] = RasterOptions(tile_size=tile_size).resolved(1, 1).tile_size
        options = dict(backend=backend, compositor=compositor, tile_size=tile_size)
        render = lambda *a: rasterize(*a, size, size, **options)  # noqa: E731
        _, _, diag = rasterize(*arrays, size, size, return_diagnostics=True, **options)
        counts = np.asarray(diag.tile_counts)
        result.update(
            intersections=int(counts.sum()), max_gaussians_in_a_tile=int(counts.max()),
            mean_gaussians_per_tile=float(counts.mean()), overflow=int(np.sum(diag.overflow)),
            visible_gaussians=int(np.sum(diag.valid)),
        )
    else:
        render = lambda *a: dense_rasterize(*a, size, size)  # noqa: E731
    result["baseline_rss_mb"] = _peak_rss_mb()

    forward = _compile_and_time(render, arrays, repeats, warmup, result, "peak_rss_{}_mb", _peak_rss_mb)
    if impl == "tiled":
        stages = stage_times(arrays, size, repeats, tile_size)
        full = result["fwd"]["min_s"]
        result["stages_fwd_s"] = {"project": stages["project"]["min_s"], "bin_sort": stages["bin_sort"]["min_s"],
                                  "composite_and_rest": full - stages["project"]["min_s"] - stages["bin_sort"]["min_s"]}
        result["project_fwd_bwd_s"] = stages["project_fwd_bwd"]["min_s"]
    if impl == "tiled" and size <= 128:  # cross-check against the dense splatter where it is cheap
        dense = jax.jit(lambda *a: dense_rasterize(*a, size, size))(*arrays)
        result["max_abs_diff_vs_dense"] = float(jnp.max(jnp.abs(forward(*arrays)[0] - dense[0])))
    return result


def _gpu_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run_gpu_child(scene_name: str, impl: str, repeats: int, check_max_gaussians: int) -> dict:
    """Measure one (scene, implementation) pair of the GPU suite in this process."""
    num_gaussians, width, height, num_views = GPU_SCENES[scene_name]
    if impl == "gsplat":
        os.environ["JAX_PLATFORMS"] = "cpu"  # the scene is built with jax ops: keep JAX off the GPU here
    scene = head_scene(num_gaussians, width, height=height, num_views=num_views)
    result = {"scene": scene_name, "impl": impl, "num_gaussians": num_gaussians, "width": width, "height": height,
              "cameras": num_views}
    if impl == "gsplat":
        result.update(_gsplat_measure(scene, width, height, repeats))
        return result

    import jax
    import jax.numpy as jnp
    import numpy as np

    from flexavatar_jax.render import rasterize

    result["device"] = jax.devices()[0].device_kind
    arrays = tuple(jnp.asarray(x) for x in scene)
    backend, compositor = ("jax", "sequential") if impl == "jax_sequential" else (impl, "lockstep")
    render = lambda *a: rasterize(*a, width, height, backend=backend, compositor=compositor)  # noqa: E731
    result["bytes_in_use_inputs"] = (jax.local_devices()[0].memory_stats() or {}).get("bytes_in_use")

    forward = _compile_and_time(render, arrays, repeats, True, result, "peak_gpu_{}_mb",
                                lambda: (_gpu_peak_bytes() or 0) / 2**20)

    _, _, diag = rasterize(*arrays, width, height, backend=backend, compositor=compositor, return_diagnostics=True)
    counts = np.asarray(diag.tile_counts)
    result.update(intersections=int(counts.sum()), max_gaussians_in_a_tile=int(counts.max()),
                  overflow=int(np.sum(diag.overflow)), visible_gaussians=int(np.sum(diag.valid)))
    if impl == "cuda" and num_gaussians <= check_max_gaussians:
        mine = forward(*arrays)
        reference = jax.jit(lambda *a: rasterize(*a, width, height, backend="jax"))(*arrays)
        result["max_abs_diff_vs_jax_images"] = float(jnp.max(jnp.abs(mine[0] - reference[0])))
        result["max_abs_diff_vs_jax_alphas"] = float(jnp.max(jnp.abs(mine[1] - reference[1])))
    return result


def _gsplat_measure(scene, width: int, height: int, repeats: int) -> dict:
    """gsplat's `rasterization` (classic mode) on the same scene; torch is imported only here."""
    import torch  # noqa: PLC0415 - optional, benchmark-only dependency
    from gsplat import rasterization  # noqa: PLC0415

    device = torch.device("cuda")
    means, quats, scales, opacities, colors, viewmats, Ks = (torch.as_tensor(x, device=device) for x in scene)
    params = [means, quats, scales, opacities, colors]

    def render():
        return rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                             rasterize_mode="classic")

    def timed(fn):
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return {"min_s": min(times), "median_s": statistics.median(times), "runs": len(times)}

    def forward():
        with torch.no_grad():
            render()

    def forward_backward():
        for p in params:
            p.grad = None
        images, alphas, _ = render()
        ((images * images).sum() + alphas.sum()).backward()

    import gsplat  # noqa: PLC0415

    result = {"gsplat_version": getattr(gsplat, "__version__", "?"), "device": torch.cuda.get_device_name()}
    forward()
    torch.cuda.reset_peak_memory_stats()
    result["fwd"] = timed(forward)
    result["peak_gpu_fwd_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for p in params:
        p.requires_grad_(True)
    forward_backward()
    torch.cuda.reset_peak_memory_stats()
    result["fwd_bwd"] = timed(forward_backward)
    result["peak_gpu_fwd_bwd_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _gsplat_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("gsplat") is not None


def main_gpu(args) -> int:
    """The GPU suite: CUDA backend vs JAX backend (vs gsplat) per scene, one process each."""
    import platform

    impls = [impl for impl in args.impls.split(",") if impl in ("cuda", "jax", "jax_sequential")]
    gsplat_note = None
    if args.gsplat == "always" or (args.gsplat == "auto" and _gsplat_importable()):
        impls.append("gsplat")
    elif args.gsplat == "auto":
        gsplat_note = "torch/gsplat not importable: gsplat column skipped"
    report = {
        "what": "rasterize on one GPU: CUDA backend vs pure-JAX backend (vs gsplat); seconds after compilation",
        "backend": args.backend,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "gsplat": "measured" if "gsplat" in impls else (gsplat_note or "skipped (--gsplat never)"),
        "scenes": [],
    }
    names = args.scenes.split(",") if args.scenes else list(GPU_SCENES)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    for name in names:
        num_gaussians, width, height, num_views = GPU_SCENES[name]
        entry = {"scene": name, "num_gaussians": num_gaussians, "width": width, "height": height, "cameras": num_views}
        for impl in impls:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--impl", impl, "--suite", "gpu",
                   "--repeats", str(args.repeats), "--check_max_gaussians", str(args.check_max_gaussians)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.child_timeout_s)
                if proc.returncode == 0:
                    entry[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
                else:
                    lines = proc.stderr.strip().splitlines() or ["(no output)"]
                    entry[impl] = {"error": ([line for line in lines if "Error" in line] or lines)[-1]}
            except subprocess.TimeoutExpired:
                entry[impl] = {"error": f"timed out after {args.child_timeout_s} s"}
            print(f"[bench_render] {name} {impl}: fwd {entry[impl].get('fwd', {}).get('min_s')}, "
                  f"fwd+bwd {entry[impl].get('fwd_bwd', {}).get('min_s')}", file=sys.stderr, flush=True)
        for other in (impl for impl in impls if impl != "cuda"):
            if "fwd" in entry.get("cuda", {}) and "fwd" in entry[other]:
                entry[f"cuda_speedup_fwd_vs_{other}"] = entry[other]["fwd"]["min_s"] / entry["cuda"]["fwd"]["min_s"]
                entry[f"cuda_speedup_fwd_bwd_vs_{other}"] = (
                    entry[other]["fwd_bwd"]["min_s"] / entry["cuda"]["fwd_bwd"]["min_s"])
        report["scenes"].append(entry)
    r = lambda x: None if x is None else round(x, 5)  # noqa: E731
    report["table"] = [
        {"scene": e["scene"], **{f"{impl}_{k}": r(e[impl].get(k, {}).get("min_s") if k in ("fwd", "fwd_bwd")
                                                else e[impl].get(k))
                                 for impl in impls for k in ("fwd", "fwd_bwd", "peak_gpu_fwd_bwd_mb")}}
        for e in report["scenes"]
    ]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


def _table_row(entry: dict, compositors: list[str]) -> dict:
    """One flat row per scene, seconds rounded for reading."""
    dense = entry["dense"]
    r = lambda x: None if x is None else round(x, 4)  # noqa: E731
    row = {"scene": entry["scene"]}
    for c in compositors:
        tiled = entry[f"tiled_{c}"]
        stages = tiled.get("stages_fwd_s", {})
        row.update({
            f"{c}_fwd_s": r(tiled.get("fwd", {}).get("min_s")),
            f"{c}_fwd_bwd_s": r(tiled.get("fwd_bwd", {}).get("min_s")),
            f"{c}_compile_fwd_s": r(tiled.get("compile_fwd_s")),
            f"{c}_compile_fwd_bwd_s": r(tiled.get("compile_fwd_bwd_s")),
            f"{c}_peak_rss_mb": r(tiled.get("peak_rss_fwd_bwd_mb")),
            f"{c}_stage_project_s": r(stages.get("project")),
            f"{c}_stage_bin_sort_s": r(stages.get("bin_sort")),
            f"{c}_stage_composite_and_rest_s": r(stages.get("composite_and_rest")),
            f"{c}_project_fwd_bwd_s": r(tiled.get("project_fwd_bwd_s")),
        })
    a = compositors[0]
    for b in compositors[1:]:
        for k in ("fwd", "fwd_bwd"):
            ta, tb = row[f"{a}_{k}_s"], row[f"{b}_{k}_s"]
            row[f"{b}_over_{a}_{k}"] = r(tb / ta) if ta and tb else None
    row.update({
        "dense_fwd_s": r(dense.get("fwd", {}).get("min_s")),
        "dense_fwd_bwd_s": r(dense.get("fwd_bwd", {}).get("min_s")),
        "dense_peak_rss_mb": r(dense.get("peak_rss_fwd_bwd_mb")),
        "speedup_fwd": r(entry.get("speedup_fwd")),
        "speedup_fwd_bwd": r(entry.get("speedup_fwd_bwd")),
        "dense_skipped": bool(dense.get("skipped", False)),
    })
    return row


def _spawn(scene_name: str, impl: str, args, compositor: str = "lockstep") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", scene_name, "--impl", impl, "--compositor", compositor,
           "--backend", args.backend, "--repeats", str(args.repeats if impl == "tiled" else args.dense_repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"scene": scene_name, "impl": impl, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    args = FLAGS
    suite = args.suite or ("gpu" if args.backend == "cuda" else "cpu")
    if args.out == FLAGS["out"].default and suite == "gpu":
        args.out = "out/bench_render_gpu.json"

    if args.child and suite == "gpu":
        print(json.dumps(run_gpu_child(args.child, args.impl, args.repeats, args.check_max_gaussians)))
        return 0
    if suite == "gpu":
        if args.scenes == FLAGS["scenes"].default:
            args.scenes = ",".join(GPU_SCENES)
        return main_gpu(args)
    if args.child:
        print(json.dumps(run_child(args.child, args.impl, args.backend, args.repeats, warmup=args.impl == "tiled",
                                   compositor=args.compositor)))
        return 0

    import platform

    report = {
        "what": "rasterize (tiled, pure JAX; each compositor[@tile]) vs naive dense JAX splatter; "
                "seconds after compilation",
        "backend": args.backend,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),
        "scenes": [],
    }
    dense_rate = None  # seconds of dense fwd+bwd per (pixel × Gaussian), from the last dense run
    compositors = args.compositors.split(",")
    report["compositors"] = compositors
    for name in args.scenes.split(","):
        num_gaussians, size = SCENES[name]
        entry = {"scene": name, "num_gaussians": num_gaussians, "size": size}
        for compositor in compositors:
            entry[f"tiled_{compositor}"] = _spawn(name, "tiled", args, compositor)
            tiled = entry[f"tiled_{compositor}"]
            print(f"[bench_render] {name} {compositor}: fwd {tiled.get('fwd', {}).get('min_s')} "
                  f"(stages {tiled.get('stages_fwd_s')}), fwd+bwd {tiled.get('fwd_bwd', {}).get('min_s')}",
                  file=sys.stderr, flush=True)
        predicted = None if dense_rate is None else dense_rate * num_gaussians * size * size
        over_budget = predicted is not None and predicted > args.dense_budget_s
        if args.dense == "never" or (args.dense == "auto" and over_budget):
            entry["dense"] = {"skipped": True, "predicted_fwd_bwd_s": predicted,
                              "reason": f"predicted fwd+bwd exceeds --dense_budget_s={args.dense_budget_s}"
                              if args.dense == "auto" else "--dense never"}
        else:
            entry["dense"] = _spawn(name, "dense", args)
            if "fwd_bwd" in entry["dense"]:
                dense_rate = entry["dense"]["fwd_bwd"]["min_s"] / (num_gaussians * size * size)
        tiled, dense = entry[f"tiled_{compositors[0]}"], entry["dense"]  # speedups: the first compositor's
        if "fwd" in tiled and "fwd" in dense:
            entry["speedup_fwd"] = dense["fwd"]["min_s"] / tiled["fwd"]["min_s"]
            entry["speedup_fwd_bwd"] = dense["fwd_bwd"]["min_s"] / tiled["fwd_bwd"]["min_s"]
        elif "fwd_bwd" in tiled and dense.get("predicted_fwd_bwd_s"):
            entry["predicted_speedup_fwd_bwd"] = dense["predicted_fwd_bwd_s"] / tiled["fwd_bwd"]["min_s"]
        report["scenes"].append(entry)
        print(f"[bench_render] {name}: dense fwd+bwd {dense.get('fwd_bwd', {}).get('min_s')}", file=sys.stderr,
              flush=True)

    by_name = {e["scene"]: e for e in report["scenes"]}
    goals = {}
    first = f"tiled_{compositors[0]}"
    if "fwd_bwd" in by_name.get("20k_128", {}).get(first, {}):
        goals["20k_128_fwd_bwd_under_1s"] = by_name["20k_128"][first]["fwd_bwd"]["min_s"] < 1.0
    if "fwd" in by_name.get("80k_256", {}).get(first, {}):
        goals["80k_256_fwd_under_300ms"] = by_name["80k_256"][first]["fwd"]["min_s"] <= 0.3
        goals["80k_256_project_under_20ms"] = by_name["80k_256"][first]["stages_fwd_s"]["project"] <= 0.02
    if "speedup_fwd_bwd" in by_name.get("80k_256", {}):
        entry = by_name["80k_256"]
        goals["80k_256_at_least_10x_dense"] = min(entry["speedup_fwd"], entry["speedup_fwd_bwd"]) >= 10.0
    report["goals"] = goals
    report["table"] = [_table_row(e, compositors) for e in report["scenes"]]
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    app.run(main)
