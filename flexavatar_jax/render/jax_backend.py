"""Differentiable 3D Gaussian splatting in pure JAX: tiling, depth sorting, compositing.

The pure-JAX backend of `rasterize` (`rasterization.py`, where the conventions are stated);
semantics are gsplat 1.5.3 `rasterization()` in classic mode. The pipeline mirrors gsplat's stages
so that the CUDA backend (`cuda_backend.py`) can be compared stage by stage
(`rasterize(..., return_diagnostics=True)` exposes every intermediate):

1. **Projection** (`projection.project_gaussians`): EWA splatting, culling, opacity-aware
   bounding boxes and the tile rectangle each splat touches.
2. **Tile intersection**: Gaussians are argsorted by full-precision camera depth (no quantised
   depth keys), every (Gaussian, tile) pair is enumerated into a static buffer of
   `max_intersections` slots in that depth order, and a *stable* sort by tile id groups them per
   tile while keeping the depth order inside each tile (gsplat's `isect_offsets`/`flatten_ids`).
3. **Compositing**: tiles are processed one after another (`lax.map`); inside a tile the sorted
   list is consumed in chunks of `_CHUNK` Gaussians with a `lax.while_loop` that stops as soon as
   every pixel of the tile has saturated or the list is exhausted. A chunk is composited for all
   tile pixels at once: transmittance inside the chunk is an exclusive cumulative sum of
   log(1 - α) (a small triangular matmul), colours are a `[pixels, chunk] @ [chunk, C]` matmul.
4. **Backward** (`jax.custom_vjp`): nothing per (pixel, Gaussian) is stored. The forward keeps,
   per pixel, only the final transmittance and the list position where it stopped (gsplat's
   `last_ids`). The backward walks the same chunks back to front, recovers the transmittance at
   the start of each chunk exactly in log space (T_start = T_end · exp(-Σ log(1-α))), and applies
   a hand-written VJP of the chunk (`_chunk_backward`; checked against `jax.vjp` of
   `_chunk_composite` in the tests), scatter-adding into per-Gaussian gradients. Peak memory is
   the per-tile working set `[tile_pixels, chunk]`, independent of N.

Capacities are static (XLA needs static shapes) and never silently truncate: a tile composites at
most `max_gaussians_per_tile` Gaussians (its nearest ones), and at most `max_intersections`
(Gaussian, tile) pairs per call are binned (the farthest Gaussians lose theirs first). Every pair
not composited because of either limit is counted in `RasterDiagnostics.overflow`, and `rasterize`
emits a `TileOverflowWarning` when it is positive: directly when called eagerly, and through
`jax.debug.callback` when traced (inside `jit`/`vmap`/`grad`), so the warning appears whenever
the computation actually runs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from flexavatar_jax.render.common import (
    MAX_ALPHA,
    TRANSMITTANCE_EPS,
    RasterDiagnostics,
    RasterOptions,
    finish_images,
    prepare_inputs,
)
from flexavatar_jax.render.projection import ALPHA_THRESHOLD, project_gaussians

# Gaussians composited per vectorised step. 32-128 run alike per pair on CPU; smaller chunks
# waste less work past each tile's end, larger ones fewer loop iterations.
_CHUNK = 64


# --------------------------------------------------------------------------------------------
# Tile intersection
# --------------------------------------------------------------------------------------------


class _Binning(NamedTuple):
    flatten_ids: Array  # [M] global id v*N + g of each binned intersection, sorted by (tile, depth)
    tile_offsets: Array  # [V*T] start of each tile's run in flatten_ids
    tile_composited: Array  # [V*T] run length to composite, ≤ capacity
    tile_counts: Array  # [V*T] true number of intersecting Gaussians
    tiles_per_gaussian: Array  # [V,N]


def _bin_intersections(tile_min, tile_max, depths, valid, n_tiles_x, n_tiles_y, capacity, max_intersections):
    """Group (Gaussian, tile) pairs by tile, depth-sorted inside each tile, in static shapes."""
    num_views, num_gaussians = valid.shape
    tiles_per_view = n_tiles_x * n_tiles_y
    size = max_intersections
    extent = tile_max - tile_min  # [V,N,2], zero for culled Gaussians
    tiles_per_gaussian = extent[..., 0] * extent[..., 1]

    # Enumerate Gaussians front to back (stable argsort of the float depth; culled ones last), so
    # a stable sort by tile id below keeps each tile's list in depth order.
    order = jnp.argsort(jnp.where(valid, depths, jnp.inf), axis=1, stable=True)  # [V,N]
    lo = jnp.take_along_axis(tile_min, order[..., None], axis=1).reshape(-1, 2)
    ext = jnp.take_along_axis(extent, order[..., None], axis=1).reshape(-1, 2)
    global_id = (order + num_gaussians * jnp.arange(num_views)[:, None]).reshape(-1)
    # Only offsets below `size` matter. Clipping each count to (2³¹-1)/(V·N) keeps the int32
    # prefix sum from overflowing; it only bites when V·N·tiles > 2³¹ (every splat covering a
    # whole 1024² image, say), and whatever it drops is counted in the overflow like any other.
    clip = min(size, max(1, (2**31 - 1) // max(1, num_views * num_gaussians)))
    count = jnp.minimum(ext[:, 0] * ext[:, 1], clip).astype(jnp.int32)
    incl = jnp.cumsum(count)
    excl = incl - count

    slot = jnp.arange(size, dtype=jnp.int32)
    owner = jnp.minimum(jnp.searchsorted(incl, slot, side="right"), incl.shape[0] - 1)
    used = slot < incl[-1]
    local = slot - excl[owner]
    width_o = jnp.maximum(ext[owner, 0], 1)
    tile_x = lo[owner, 0] + local % width_o
    tile_y = lo[owner, 1] + local // width_o
    view = owner // num_gaussians
    tile_key = jnp.where(used, view * tiles_per_view + tile_y * n_tiles_x + tile_x, num_views * tiles_per_view)
    sorted_key, flatten_ids = jax.lax.sort(
        (tile_key.astype(jnp.int32), jnp.where(used, global_id[owner], -1).astype(jnp.int32)),
        num_keys=1,
        is_stable=True,
    )
    tiles = jnp.arange(num_views * tiles_per_view, dtype=jnp.int32)
    starts = jnp.searchsorted(sorted_key, tiles, side="left").astype(jnp.int32)
    ends = jnp.searchsorted(sorted_key, tiles, side="right").astype(jnp.int32)
    composited = jnp.minimum(ends - starts, capacity)

    # Exact per-tile counts (independent of the buffer) from a 2D difference array.
    vid = jnp.broadcast_to(jnp.arange(num_views)[:, None], valid.shape)
    diff = jnp.zeros((num_views, n_tiles_y + 1, n_tiles_x + 1), jnp.int32)
    for (ix, iy), sign in (((0, 0), 1), ((1, 0), -1), ((0, 1), -1), ((1, 1), 1)):
        px = jnp.where(ix, tile_max[..., 0], tile_min[..., 0])
        py = jnp.where(iy, tile_max[..., 1], tile_min[..., 1])
        diff = diff.at[vid, py, px].add(sign)
    counts = jnp.cumsum(jnp.cumsum(diff, axis=1), axis=2)[:, :n_tiles_y, :n_tiles_x]
    return _Binning(flatten_ids, starts, composited, counts.reshape(-1), tiles_per_gaussian)


# --------------------------------------------------------------------------------------------
# Compositing (custom VJP)
# --------------------------------------------------------------------------------------------
# Packed per-Gaussian rows: [mean_x, mean_y, conic_a, conic_b, conic_c, opacity, features...].
_NUM_GEOMETRY = 6


def _tile_pixels(tile, tile_size, n_tiles_x, tiles_per_view, dtype):
    """Pixel centres [P,2] of a tile (P = tile_size²), row-major inside the tile."""
    local = tile % tiles_per_view
    tx, ty = local % n_tiles_x, local // n_tiles_x
    i = jnp.arange(tile_size * tile_size)
    px = (tx * tile_size + i % tile_size).astype(dtype) + 0.5
    py = (ty * tile_size + i // tile_size).astype(dtype) + 0.5
    return jnp.stack([px, py], axis=-1)


def _chunk_alpha(rows, pixels):
    """α [P,B] of B Gaussians at P pixel centres; 0 where gsplat skips (σ < 0 or α < 1/255)."""
    dx = rows[None, :, 0] - pixels[:, 0:1]
    dy = rows[None, :, 1] - pixels[:, 1:2]
    sigma = 0.5 * (rows[None, :, 2] * dx * dx + rows[None, :, 4] * dy * dy) + rows[None, :, 3] * dx * dy
    # Performance, not semantics: XLA:CPU emits a ~3x slower loop when exp() is fused with the
    # broadcasting σ computation above; the barrier splits the two fusions.
    sigma = jax.lax.optimization_barrier(sigma)
    # max(σ, 0) keeps exp finite (and its gradient NaN-free) where the branch is discarded anyway.
    alpha = jnp.minimum(MAX_ALPHA, rows[None, :, 5] * jnp.exp(-jnp.maximum(sigma, 0.0)))
    keep = (sigma >= 0.0) & (alpha >= ALPHA_THRESHOLD)
    return jnp.where(keep, alpha, 0.0)


def _strict_upper(size, dtype):
    # U[j, i] = 1 for j < i, so (x @ U)[:, i] = Σ_{j<i} x[:, j]: an exclusive prefix sum.
    return jnp.triu(jnp.ones((size, size), dtype), k=1)


def _chunk_composite(rows, t_start, live, pixels):
    """Colour added by one chunk and the transmittance after it, given which slots are live.

    `live` [P,B] marks the Gaussians composited before the pixel stopped (a prefix per pixel).
    Returns (Σ_i f_i α_i T_i [P,F], T_end [P]).
    """
    alpha = _chunk_alpha(rows, pixels)
    log_keep = jnp.where(live, jnp.log1p(-alpha), 0.0)
    t_excl = t_start[:, None] * jnp.exp(log_keep @ _strict_upper(rows.shape[0], rows.dtype))
    weights = jnp.where(live, alpha, 0.0) * t_excl
    return weights @ rows[:, _NUM_GEOMETRY:], t_start * jnp.exp(jnp.sum(log_keep, axis=1))


class _TileSetup(NamedTuple):
    tile_size: int
    n_tiles_x: int
    tiles_per_view: int
    chunk: int


def _chunk_rows(packed, flatten_ids, start, count, k, chunk, pad_id):
    """Packed rows [B, D] of chunk k of a tile's list; slots past its end read the zero pad row."""
    pos = k * chunk + jnp.arange(chunk)
    ids = jax.lax.dynamic_slice(flatten_ids, (start + k * chunk,), (chunk,))
    ids = jnp.where((pos < count) & (ids >= 0), ids, pad_id)
    return packed[ids], ids, pos


def _composite_forward(packed, flatten_ids, starts, counts, setup: _TileSetup):
    """Front-to-back compositing of every tile. Returns per tile [T_total, P, ...]:
    (accumulated features, final transmittance, stop position, number of contributors, chunks run).
    """
    tile_size, n_tiles_x, tiles_per_view, chunk = setup
    num_pixels = tile_size * tile_size
    num_features = packed.shape[1] - _NUM_GEOMETRY
    pad_id = packed.shape[0] - 1
    never = jnp.iinfo(jnp.int32).max
    upper = _strict_upper(chunk, packed.dtype)

    def one_tile(tile):
        pixels = _tile_pixels(tile, tile_size, n_tiles_x, tiles_per_view, packed.dtype)
        start, count = starts[tile], counts[tile]

        def cond(state):
            k, _, _, stop, _ = state
            return (k * chunk < count) & jnp.any(stop == never)

        def body(state):
            k, acc, trans, stop, n_contrib = state
            rows, _, _ = _chunk_rows(packed, flatten_ids, start, count, k, chunk, pad_id)
            alpha = _chunk_alpha(rows, pixels)
            log1m = jnp.log1p(-alpha)
            t_excl = trans[:, None] * jnp.exp(log1m @ upper)
            active = stop == never
            # gsplat: stop *before* the Gaussian whose next_T = T·(1-α) would be ≤ 1e-4.
            live = (t_excl * (1.0 - alpha) > TRANSMITTANCE_EPS) & active[:, None]
            n_live = jnp.sum(live, axis=1, dtype=jnp.int32)
            stop = jnp.where(active & (n_live < chunk), k * chunk + n_live, stop)
            acc = acc + (jnp.where(live, alpha, 0.0) * t_excl) @ rows[:, _NUM_GEOMETRY:]
            trans = trans * jnp.exp(jnp.sum(jnp.where(live, log1m, 0.0), axis=1))
            n_contrib = n_contrib + jnp.sum(live & (alpha > 0.0), axis=1, dtype=jnp.int32)
            return k + 1, acc, trans, stop, n_contrib

        state = (
            jnp.int32(0),
            jnp.zeros((num_pixels, num_features), packed.dtype),
            jnp.ones((num_pixels,), packed.dtype),
            jnp.full((num_pixels,), never, jnp.int32),
            jnp.zeros((num_pixels,), jnp.int32),
        )
        k, acc, trans, stop, n_contrib = jax.lax.while_loop(cond, body, state)
        return acc, trans, stop, n_contrib, k

    return jax.lax.map(one_tile, jnp.arange(starts.shape[0]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _composite(packed, flatten_ids, starts, counts, setup: _TileSetup):
    """Composited features [T_total,P,F], transmittance [T_total,P], contributors [T_total,P]."""
    acc, trans, _, n_contrib, _ = _composite_forward(packed, flatten_ids, starts, counts, setup)
    return acc, trans, n_contrib


def _composite_fwd(packed, flatten_ids, starts, counts, setup):
    acc, trans, stop, n_contrib, chunks_run = _composite_forward(packed, flatten_ids, starts, counts, setup)
    residuals = (packed, flatten_ids, starts, counts, trans, stop, chunks_run)
    return (acc, trans, n_contrib), residuals


def _pixel_moment_basis(pixels, centre):
    """[6,P] rows 1, u, v, u², uv, v² of tile-local pixel coordinates (u, v) = pixel − centre."""
    u, v = pixels[:, 0] - centre[0], pixels[:, 1] - centre[1]
    return jnp.stack([jnp.ones_like(u), u, v, u * u, u * v, v * v])


def _chunk_backward(rows, pixels, centre, basis, live, t_end, cot_acc, cot_t_end):
    """Hand-written VJP of one chunk (see `_chunk_composite`), walking back to front.

    Given the transmittance after the chunk and the cotangents of (accumulated features,
    T_end), returns (cotangent of the packed rows [B,D], transmittance and its cotangent at the
    chunk start). With Tᵢ the transmittance before Gaussian i, cᵢ = αᵢTᵢ(fᵢ·ḡ) its contribution
    to the loss and Aᵢ = Σ_{j>i} cⱼ:
        ∂L/∂fᵢ = Σ_p αᵢTᵢ ḡ,    ∂L/∂αᵢ = Tᵢ(fᵢ·ḡ) − (Aᵢ + T_end·ḡ_T) / (1 − αᵢ),
        ∂L/∂T_start = Σᵢ αᵢ(Tᵢ/T_start)(fᵢ·ḡ) + ḡ_T·T_end/T_start,
    then through α = min(0.999, o·exp(−σ)) and σ = ½(a dx² + c dy²) + b dx dy.
    The per-Gaussian sums over pixels of ḡ_σ·{dx, dy, dx², dx·dy, dy²} are expanded into six
    pixel moments of ḡ_σ (one small matmul with `basis`) instead of six reductions, which XLA:CPU
    runs ~5x slower. Tile-local coordinates bound the cancellation in that expansion by roughly
    (tile_size/2)²/σ² (σ ≥ sqrt(eps2d) pixels), so float32 gradients of means2d/conics carry
    ~1e-6..1e-5 relative error instead of ~5e-7 for direct sums.
    """
    chunk = rows.shape[0]
    upper = _strict_upper(chunk, rows.dtype)
    local_mean = rows[:, :2] - centre
    dx = local_mean[None, :, 0] - (pixels[:, 0:1] - centre[0])
    dy = local_mean[None, :, 1] - (pixels[:, 1:2] - centre[1])
    conic_a, conic_b, conic_c = rows[:, 2], rows[:, 3], rows[:, 4]
    sigma = 0.5 * (conic_a[None] * dx * dx + conic_c[None] * dy * dy) + conic_b[None] * dx * dy
    sigma = jax.lax.optimization_barrier(sigma)  # see _chunk_alpha
    vis = jnp.exp(-jnp.maximum(sigma, 0.0))
    raw = rows[None, :, 5] * vis
    alpha = jnp.minimum(MAX_ALPHA, raw)
    keep = (sigma >= 0.0) & (alpha >= ALPHA_THRESHOLD) & live
    alpha = jnp.where(keep, alpha, 0.0)
    log_keep = jnp.log1p(-alpha)
    total = jnp.sum(log_keep, axis=1)
    t_start = t_end * jnp.exp(-total)
    rel = jnp.exp(log_keep @ upper)  # Tᵢ / T_start
    t_before = t_start[:, None] * rel
    weights = alpha * t_before
    feat_dot = cot_acc @ rows[:, _NUM_GEOMETRY:].T  # [P,B] fᵢ·ḡ
    after = (weights * feat_dot) @ upper.T  # Aᵢ = Σ_{j>i} cⱼ
    cot_alpha = t_before * feat_dot - (after + (t_end * cot_t_end)[:, None]) / (1.0 - alpha)
    cot_alpha = jnp.where(keep & (raw < MAX_ALPHA), cot_alpha, 0.0)
    cot_t_start = jnp.sum(alpha * rel * feat_dot, axis=1) + cot_t_end * jnp.exp(total)
    s0, su, sv, suu, suv, svv = basis @ (-raw * cot_alpha)  # moments of ∂L/∂σ, each [B]
    mx, my = local_mean[:, 0], local_mean[:, 1]
    sum_dx, sum_dy = mx * s0 - su, my * s0 - sv
    sum_dxx = mx * mx * s0 - 2.0 * mx * su + suu
    sum_dyy = my * my * s0 - 2.0 * my * sv + svv
    sum_dxy = mx * my * s0 - mx * sv - my * su + suv
    cot_geometry = jnp.stack(
        [
            conic_a * sum_dx + conic_b * sum_dy,
            conic_b * sum_dx + conic_c * sum_dy,
            0.5 * sum_dxx,
            sum_dxy,
            0.5 * sum_dyy,
            jnp.sum(cot_alpha * vis, axis=0),
        ],
        axis=1,
    )
    cot_feats = (cot_acc.T @ weights).T  # not weights.T @ cot_acc: XLA:CPU is slow on that layout
    return jnp.concatenate([cot_geometry, cot_feats], axis=1), t_start, cot_t_start


def _composite_bwd(setup, residuals, cotangents):
    packed, flatten_ids, starts, counts, trans_final, stop, chunks_run = residuals
    cot_acc, cot_trans, _ = cotangents
    tile_size, n_tiles_x, tiles_per_view, chunk = setup
    pad_id = packed.shape[0] - 1

    def one_tile(tile, grad):
        pixels = _tile_pixels(tile, tile_size, n_tiles_x, tiles_per_view, packed.dtype)
        centre = pixels[0] + 0.5 * (tile_size - 1)
        basis = _pixel_moment_basis(pixels, centre)
        start, count, stop_t = starts[tile], counts[tile], stop[tile]
        cot_acc_t = cot_acc[tile]

        def body(state):
            k, t_end, cot_t_end, grad = state
            k = k - 1
            rows, ids, pos = _chunk_rows(packed, flatten_ids, start, count, k, chunk, pad_id)
            live = pos[None, :] < stop_t[:, None]
            # The transmittance at the chunk start is recovered exactly in log space (no division
            # by 1 - α, which is what makes gsplat's back-to-front recovery fragile near α = 1).
            cot_rows, t_start, cot_t_start = _chunk_backward(
                rows, pixels, centre, basis, live, t_end, cot_acc_t, cot_t_end
            )
            return k, t_start, cot_t_start, grad.at[ids].add(cot_rows)

        state = (chunks_run[tile], trans_final[tile], cot_trans[tile], grad)
        return jax.lax.while_loop(lambda s: s[0] > 0, body, state)[3]

    grad = jax.lax.fori_loop(0, starts.shape[0], one_tile, jnp.zeros_like(packed))
    return grad, None, None, None


_composite.defvjp(_composite_fwd, _composite_bwd)


# --------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("width", "height", "options"))
def rasterize_jax(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width: int, height: int,
                  options: RasterOptions) -> tuple[Array, Array, RasterDiagnostics]:
    """The pure-JAX backend of `rasterize`: (images, alphas, RasterDiagnostics).

    Arguments are validated by `rasterize`; `options` has both capacities resolved to ints.
    """
    tile_size, render_mode = options.tile_size, options.render_mode
    dtype = jnp.result_type(means, quats, scales, opacities, colors, viewmats, Ks, jnp.float32)
    requested_gaussians = means.shape[0]
    means, quats, scales, opacities, colors, viewmats, Ks = prepare_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, dtype)
    num_views, num_gaussians = viewmats.shape[0], means.shape[0]
    colors_finite = jnp.all(jnp.isfinite(colors), axis=-1)
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height, near_plane=options.near_plane,
        far_plane=options.far_plane, eps2d=options.eps2d, tile_size=tile_size,
        extra_valid=colors_finite if options.render_colors else None,
    )
    n_tiles_x, n_tiles_y = -(-width // tile_size), -(-height // tile_size)
    tiles_per_view = n_tiles_x * n_tiles_y
    binning = _bin_intersections(
        proj.tile_min, proj.tile_max, proj.depths, proj.valid, n_tiles_x, n_tiles_y,
        options.max_gaussians_per_tile, options.max_intersections,
    )

    valid = proj.valid[..., None]
    features = []
    if options.render_colors:
        features.append(jnp.broadcast_to(jnp.where(colors_finite[:, None], colors, 0.0), (num_views, *colors.shape)))
    if options.render_depth:
        features.append(proj.depths[..., None])
    packed = jnp.concatenate(
        [proj.means2d, proj.conics, opacities[None, :, None] * jnp.ones_like(proj.depths)[..., None], *features],
        axis=-1,
    )
    packed = jnp.where(valid, packed, 0.0).reshape(num_views * num_gaussians, -1)
    packed = jnp.concatenate([packed, jnp.zeros((1, packed.shape[1]), dtype)])  # pad row: α = 0
    chunk = _CHUNK
    flatten_ids = jnp.concatenate([binning.flatten_ids, jnp.full((chunk,), -1, jnp.int32)])
    setup = _TileSetup(tile_size, n_tiles_x, tiles_per_view, chunk)
    acc, trans, n_contrib = _composite(packed, flatten_ids, binning.tile_offsets, binning.tile_composited, setup)

    def to_image(x):  # [V*T, P, ...] -> [V, H, W, ...]
        x = x.reshape(num_views, n_tiles_y, n_tiles_x, tile_size, tile_size, *x.shape[2:])
        x = jnp.moveaxis(x, 3, 2).reshape(num_views, n_tiles_y * tile_size, n_tiles_x * tile_size, *x.shape[5:])
        return x[:, :height, :width]

    acc, trans, n_contrib = to_image(acc), to_image(trans)[..., None], to_image(n_contrib)
    images, alphas = finish_images(acc, trans, colors.shape[1], render_mode, backgrounds)

    composited = binning.tile_composited.reshape(num_views, tiles_per_view)
    counts = binning.tile_counts.reshape(num_views, tiles_per_view)
    overflow = jnp.sum(counts - composited, axis=1, dtype=jnp.int32)
    flat_ids = jnp.where(binning.flatten_ids >= 0, binning.flatten_ids % max(num_gaussians, 1), -1)
    grid = (num_views, n_tiles_y, n_tiles_x)
    keep = slice(0, requested_gaussians)
    diagnostics = RasterDiagnostics(
        means2d=proj.means2d[:, keep],
        depths=proj.depths[:, keep],
        conics=proj.conics[:, keep],
        radii=proj.radii[:, keep],
        valid=proj.valid[:, keep],
        tiles_per_gaussian=binning.tiles_per_gaussian[:, keep],
        tile_counts=counts.reshape(grid),
        tile_offsets=binning.tile_offsets.reshape(grid),
        tile_composited=composited.reshape(grid),
        flatten_ids=flat_ids,
        overflow=overflow,
        n_contrib=n_contrib,
    )
    return images, alphas, diagnostics
