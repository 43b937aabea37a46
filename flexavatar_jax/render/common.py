"""What both rasterization backends share: constants, `RasterOptions`, `RasterDiagnostics`,
argument checks, input preparation, image finishing and overflow reporting.

Imports inside `render/` run one way: `rasterization.py` (the public `rasterize`) ->
`jax_backend.py` / `cuda_backend.py` -> this module; `jax_backend.py` also -> `projection.py`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

# gsplat clamps the per-Gaussian alpha so that one splat never makes a pixel fully opaque.
MAX_ALPHA = 0.999
# A pixel stops before the Gaussian that would bring its transmittance to ≤ this value.
TRANSMITTANCE_EPS = 1e-4
# Default per-tile capacity: none (None = N). The per-tile cap sizes no buffer (memory is bounded
# by `max_intersections`); it only shortens a tile's run, so any fixed default would be a way to
# drop Gaussians for nothing: a 10K-Gaussian head in a 64² image already puts > 4K Gaussians in
# one 16×16 tile. Set it to bound the worst-case work per tile; overflow is then reported.
DEFAULT_MAX_GAUSSIANS_PER_TILE = None
# Default intersection buffer, per camera: this many tiles per Gaussian on average (a head avatar
# at ≤ 512² uses 2-6), but never fewer than _MIN_INTERSECTIONS. Sized so that it holds every pair
# in practice: only then does each tile keep exactly its nearest `max_gaussians_per_tile`.
DEFAULT_INTERSECTIONS_PER_GAUSSIAN = 16
_MIN_INTERSECTIONS = 1 << 16

# Default tile edge (RasterOptions.tile_size=None), by platform: gsplat's 16 on accelerators (the
# CUDA kernel's and, for the pure-JAX lockstep compositor, one group of every tile), 8 on CPU. A
# CPU composites tile by tile, and smaller tiles stop sooner where the head saturates them and
# carry fewer of the silhouette's long, never-saturating lists (bench_render.py on 2 cores:
# forward 1.1-1.6x, forward+backward 1.4-1.6x faster than with 16; bench_data.py: ground truth
# 1.3-1.5x; the tiny job's steps ~1.2x; 4 ran like 8). 16 is a multiple of every default, so an
# image that tiles at 16 tiles everywhere.
GSPLAT_TILE_SIZE = 16
_PLATFORM_TILE_SIZES = {"cpu": 8}

RENDER_MODES = ("RGB", "D", "RGB+D")
BACKENDS = ("auto", "jax", "cuda")
COMPOSITORS = ("lockstep", "sequential")
# Floor for the expected-depth division, as gsplat's "ED" (alpha.clamp(min=1e-10)).
_DEPTH_ALPHA_FLOOR = 1e-10


class TileOverflowWarning(RuntimeWarning):
    """Some (Gaussian, tile) intersections were not composited because a capacity was exceeded."""


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"rasterize: `{name}` must be a positive int, got {value!r}")
    return int(value)


def _check_number(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as err:  # a traced value lands here too (ConcretizationTypeError)
        raise ValueError(
            f"rasterize: `{name}` must be a concrete number (options are static: a new value recompiles), "
            f"got {value!r}"
        ) from err
    if np.isnan(number):
        raise ValueError(f"rasterize: `{name}` must not be NaN, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class RasterOptions:
    """Static settings of one `rasterize` call (hashable: one static argument of the backends).

    near_plane, far_plane: camera-z culling range (world units); Gaussians with z ≤ near_plane or
      z ≥ far_plane are culled.
    eps2d: pixel² added to the 2D covariance (gsplat's low-pass filter).
    tile_size: tile edge in pixels; None (default): `default_tile_size()`, 8 on CPU and gsplat's 16
      elsewhere (same images either way, up to float32 rounding).
    render_mode: "RGB" (colours), "D" (expected depth, i.e. Σ zᵢαᵢTᵢ / alpha, 0 where alpha = 0 —
      gsplat's "ED"), or "RGB+D" (depth appended last).
    backend: "jax" (pure JAX), "cuda" (kernels/splat via XLA FFI, float32, tile_size 8 or 16;
      raises CudaBackendUnavailableError, a NotImplementedError, with the reason when it cannot
      run) or "auto" (CUDA when the default device is a GPU and the CUDA library is available,
      else JAX). Both backends give the same images and gradients up to float32 rounding.
    max_gaussians_per_tile: optional per-tile cap (default None: no cap); a tile composites its
      nearest this-many Gaussians and the rest are reported as overflow.
    max_intersections: (Gaussian, tile) pair buffer, filled front to back (the farthest Gaussians
      lose their pairs first when it is full); default (None) V · max(16·N, 65536).
    Intersections dropped by either capacity are reported (TileOverflowWarning, diagnostics).
    compositor: how the pure-JAX backend walks the tiles (same images and gradients either way):
      "lockstep" (default: the tiles of a group advance chunk by chunk together, batched, a tile
      masked once it is exhausted or saturated; groups are formed from tiles of similar list
      length) or "sequential" (one tile after another, each stopping as soon as its pixels
      saturate; the reference formulation). The CUDA backend ignores it.
    lockstep_tiles: tiles per lockstep group; None: 1024 pixels' worth on CPU (16 tiles of 8²,
      4 of 16²; fastest measured there: `experiments/bench_render.py`), else as many as keep a
      step's working set (tiles × tile pixels × chunk) within 2**24 elements, i.e. every tile of
      a ≤ 1024² render at once on an accelerator without the CUDA kernel (e.g. TPU).
    Every value is checked on construction (ValueError naming the option). The numbers are
    static, as gsplat's Python floats: a render with another near_plane compiles anew.
    """

    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    tile_size: int | None = None
    render_mode: str = "RGB"
    backend: str = "auto"
    max_gaussians_per_tile: int | None = DEFAULT_MAX_GAUSSIANS_PER_TILE
    max_intersections: int | None = None
    compositor: str = "lockstep"
    lockstep_tiles: int | None = None

    def __post_init__(self):
        if self.render_mode not in RENDER_MODES:
            raise ValueError(f"rasterize: unknown render_mode {self.render_mode!r}; expected one of {RENDER_MODES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"rasterize: unknown backend {self.backend!r}; expected one of {BACKENDS}")
        if self.compositor not in COMPOSITORS:
            raise ValueError(f"rasterize: unknown compositor {self.compositor!r}; expected one of {COMPOSITORS}")
        checked = {name: _check_number(name, getattr(self, name)) for name in ("near_plane", "far_plane", "eps2d")}
        if not checked["near_plane"] < checked["far_plane"]:
            raise ValueError(f"rasterize: need near_plane < far_plane, got {self.near_plane} and {self.far_plane}")
        for name in ("tile_size", "max_gaussians_per_tile", "max_intersections", "lockstep_tiles"):
            if getattr(self, name) is not None:
                checked[name] = _check_positive_int(name, getattr(self, name))
        for name, value in checked.items():  # plain Python numbers: hashable, and equal options hash equal
            object.__setattr__(self, name, value)

    def replace(self, **overrides) -> RasterOptions:
        """A copy with the named fields replaced; an unknown name raises TypeError listing the fields."""
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"rasterize: unknown option(s) {unknown}; RasterOptions fields are {fields}")
        return dataclasses.replace(self, **overrides) if overrides else self

    def resolved(self, num_views: int, num_gaussians: int) -> RasterOptions:
        """A copy with the tile size and both capacities as ints: the platform's default tile
        (`default_tile_size`), no per-tile cap means max(N, 1) (an empty scene renders one culled
        stand-in), and the default buffer is V · max(16·N, 65536)."""
        return self.replace(
            tile_size=default_tile_size() if self.tile_size is None else self.tile_size,
            max_gaussians_per_tile=(
                max(num_gaussians, 1) if self.max_gaussians_per_tile is None else self.max_gaussians_per_tile
            ),
            max_intersections=(
                num_views * max(DEFAULT_INTERSECTIONS_PER_GAUSSIAN * num_gaussians, _MIN_INTERSECTIONS)
                if self.max_intersections is None else self.max_intersections
            ),
        )

    @property
    def render_colors(self) -> bool:
        return self.render_mode in ("RGB", "RGB+D")

    @property
    def render_depth(self) -> bool:
        return self.render_mode in ("D", "RGB+D")


def default_tile_size(platform: str | None = None) -> int:
    """The tile edge `rasterize` uses when `RasterOptions.tile_size` is None, on `platform`
    (default: JAX's default backend): 8 on CPU, 16 elsewhere (see GSPLAT_TILE_SIZE)."""
    return _PLATFORM_TILE_SIZES.get(platform or jax.default_backend(), GSPLAT_TILE_SIZE)


class RasterDiagnostics(NamedTuple):
    """Intermediate results of one `rasterize` call, for debugging and backend comparisons.

    Per Gaussian ([V, N, ...], original Gaussian order):
      means2d [V,N,2] pixels; depths [V,N] camera z; conics [V,N,3] (a, b, c) of the inverse 2D
      covariance; radii [V,N,2] int32 pixel half-extents (0 = culled); valid [V,N] bool;
      tiles_per_gaussian [V,N] int32 number of tiles its bounding box touches.
    Per tile ([V, tiles_y, tiles_x]):
      tile_counts int32 number of Gaussians whose box touches the tile (before any capacity);
      tile_offsets int32 start of the tile's depth-sorted run in `flatten_ids`;
      tile_composited int32 length of that run actually composited (≤ max_gaussians_per_tile).
    flatten_ids [max_intersections] int32: Gaussian index (into N) of every binned intersection,
      sorted by (camera, tile, depth); -1 in unused slots.
    overflow [V] int32: intersections not composited because of `max_gaussians_per_tile` or
      `max_intersections` (0 when nothing was dropped).
    n_contrib [V,H,W] int32: Gaussians that contributed (α ≥ 1/255, before termination) per pixel.
    """

    means2d: Float[Array, "v n 2"]
    depths: Float[Array, "v n"]
    conics: Float[Array, "v n 3"]
    radii: Int[Array, "v n 2"]
    valid: Bool[Array, "v n"]
    tiles_per_gaussian: Int[Array, "v n"]
    tile_counts: Int[Array, "v ty tx"]
    tile_offsets: Int[Array, "v ty tx"]
    tile_composited: Int[Array, "v ty tx"]
    flatten_ids: Int[Array, " m"]
    overflow: Int[Array, " v"]
    n_contrib: Int[Array, "v h w"]


# --------------------------------------------------------------------------------------------
# Input validation (host side, before tracing)
# --------------------------------------------------------------------------------------------


def _shape_of(name: str, x) -> tuple[int, ...]:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating)):
        raise ValueError(f"rasterize: `{name}` must be a floating-point array, got dtype {x.dtype}")
    return tuple(x.shape)


def validate_inputs(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, width, height
                    ) -> tuple[int, int, int]:
    """Raise ValueError naming the problem for any malformed array or image size; return (V, N, C)."""
    _check_positive_int("width", width)
    _check_positive_int("height", height)
    m, q, s = _shape_of("means", means), _shape_of("quats", quats), _shape_of("scales", scales)
    o, c = _shape_of("opacities", opacities), _shape_of("colors", colors)
    vm, k = _shape_of("viewmats", viewmats), _shape_of("Ks", Ks)
    if len(m) != 2 or m[1] != 3:
        raise ValueError(f"rasterize: `means` must have shape [N, 3], got {m}")
    n = m[0]
    for name, shape, last in (("quats", q, 4), ("scales", s, 3)):
        if len(shape) != 2 or shape[1] != last:
            raise ValueError(f"rasterize: `{name}` must have shape [N, {last}], got {shape}")
    if len(o) != 1:
        raise ValueError(f"rasterize: `opacities` must have shape [N], got {o}")
    if len(c) != 2 or c[1] < 1:
        raise ValueError(f"rasterize: `colors` must have shape [N, C] with C >= 1, got {c}")
    for name, shape in (("quats", q), ("scales", s), ("opacities", o), ("colors", c)):
        if shape[0] != n:
            raise ValueError(f"rasterize: `{name}` has {shape[0]} Gaussians but `means` has {n}")
    if len(vm) != 3 or vm[1:] != (4, 4):
        raise ValueError(f"rasterize: `viewmats` must have shape [V, 4, 4], got {vm}")
    if len(k) != 3 or k[1:] != (3, 3):
        raise ValueError(f"rasterize: `Ks` must have shape [V, 3, 3], got {k}")
    v = vm[0]
    if v < 1:
        raise ValueError("rasterize: need at least one camera (V >= 1)")
    if k[0] != v:
        raise ValueError(f"rasterize: `Ks` has {k[0]} cameras but `viewmats` has {v}")
    if backgrounds is not None:
        b = _shape_of("backgrounds", backgrounds)
        if len(b) != 2 or b[0] != v or b[1] != c[1]:
            raise ValueError(f"rasterize: `backgrounds` must have shape [V, C] = [{v}, {c[1]}], got {b}")
    return v, n, c[1]


# --------------------------------------------------------------------------------------------
# Before and after the backend-specific stages
# --------------------------------------------------------------------------------------------


def prepare_inputs(means, quats, scales, opacities, colors, viewmats, Ks, dtype):
    """Casts the scene to `dtype`; an empty scene gets one culled stand-in Gaussian (zero opacity),
    so it renders the background with static non-empty shapes."""
    means, quats, scales, opacities, colors, viewmats, Ks = (
        jnp.asarray(x, dtype) for x in (means, quats, scales, opacities, colors, viewmats, Ks)
    )
    if means.shape[0] == 0:
        means, quats, scales, colors = (jnp.zeros((1, x.shape[1]), dtype) for x in (means, quats, scales, colors))
        opacities = jnp.zeros((1,), dtype)
    return means, quats, scales, opacities, colors, viewmats, Ks


def finish_images(acc, trans, num_colors, render_mode, backgrounds):
    """Accumulated features [V,H,W,C(+1)] and final transmittance [V,H,W,1] -> (images, alphas):
    background blend on the colour channels, expected depth for "D"/"RGB+D"."""
    alphas = 1.0 - trans
    outputs = []
    if render_mode in ("RGB", "RGB+D"):
        rgb = acc[..., :num_colors]
        if backgrounds is not None:
            backgrounds = jnp.asarray(backgrounds, acc.dtype)
            backgrounds = jnp.where(jnp.isfinite(backgrounds), backgrounds, 0.0)  # as for Gaussians
            rgb = rgb + trans * backgrounds[:, None, None, :]
        outputs.append(rgb)
    if render_mode in ("D", "RGB+D"):
        # Expected depth (gsplat "ED"): accumulated depth / alpha; 0 where nothing was hit.
        outputs.append(acc[..., -1:] / jnp.maximum(alphas, _DEPTH_ALPHA_FLOOR))
    return jnp.concatenate(outputs, axis=-1), alphas


def _overflow_message(overflow, options: RasterOptions) -> str:
    return (
        f"rasterize: {int(np.sum(overflow))} Gaussian-tile intersections were not composited "
        f"(per camera: {np.asarray(overflow).reshape(-1).tolist()}); raise max_gaussians_per_tile "
        f"(now {options.max_gaussians_per_tile}) or max_intersections (now {options.max_intersections}). "
        "See RasterDiagnostics.tile_counts for the per-tile load."
    )


def warn_on_overflow(overflow, options: RasterOptions) -> None:
    """TileOverflowWarning when `overflow` [V] is positive: now when concrete, else through
    `jax.debug.callback` whenever the traced computation runs (inside jit/vmap/grad)."""

    def report(count):
        if np.any(np.asarray(count) > 0):
            warnings.warn(_overflow_message(count, options), TileOverflowWarning, stacklevel=2)

    if isinstance(overflow, jax.core.Tracer):
        jax.debug.callback(report, overflow)
    else:
        report(jax.device_get(overflow))
