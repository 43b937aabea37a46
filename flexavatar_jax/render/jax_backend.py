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
3. **Compositing**: a tile's depth-sorted list is consumed in chunks of `_CHUNK` Gaussians; a
   tile stops as soon as every pixel of it has saturated or its list is exhausted. A chunk is
   composited for all tile pixels at once: transmittance inside the chunk is an exclusive
   cumulative sum of log(1 - α) (a small triangular matmul), colours are a
   `[pixels, chunk] @ [chunk, C]` matmul. Two formulations give the same per-tile results
   (`RasterOptions.compositor`): *lockstep* (default) advances the tiles of a group together
   (one `lax.while_loop` over the chunk index k, the chunk math vmapped over tiles; a tile that is
   exhausted or saturated is masked), with groups formed from tiles of similar list length
   (longest first); *sequential* processes the tiles one after another (`lax.map`, a
   `lax.while_loop` over one tile's chunks). Lockstep replaces thousands of tiny serial loop
   bodies by a few large batched ones: on an accelerator without the CUDA kernel (e.g. TPU) all
   tiles form one group (up to `_LOCKSTEP_ELEMENTS` elements per step), and on CPU groups of
   1,024 pixels (16 of its default 8² tiles) already halve the per-iteration overhead that
   dominates there.
4. **Backward** (`jax.custom_vjp`): nothing per (pixel, Gaussian) is stored. The forward keeps,
   per pixel, only the final transmittance and the list position where it stopped (gsplat's
   `last_ids`), and per tile the number of chunks it ran. The backward walks the same chunks back
   to front, recovers the transmittance at the start of each chunk exactly in log space
   (T_start = T_end · exp(-Σ log(1-α))), and applies a hand-written VJP of the chunk
   (`_chunk_backward`; checked against `jax.vjp` of `_chunk_composite` in the tests),
   scatter-adding into per-Gaussian gradients. Sequential: tile by tile. Lockstep: one loop from
   k = max(chunks run) - 1 down to 0 per group, where a tile takes part in step k only if it ran
   chunk k forward, and all tiles' row cotangents are scatter-added at once. Peak memory is the
   working set `[tile_pixels, chunk]` per tile (times the group size in lockstep), independent
   of N.

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
from jax import custom_batching
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

# Gaussians composited per vectorised step: smaller chunks waste less work past each tile's end,
# larger ones take fewer loop iterations. At the CPU's 8² tiles 64 is fastest (20K Gaussians at
# 128², 2 cores: forward 20.9 ms against 24.4 / 27.0 / 22.3 at 32 / 48 / 96; fwd+bwd 47 against 52-58).
_CHUNK = 64
# Lockstep compositing on accelerators: at most this many (tile, pixel, chunk slot) elements per
# step, i.e. per [tiles_in_group, tile_pixels, chunk] intermediate (2**24 float32 = 64 MiB): all
# 1024 tiles of a 512² render with 16² tiles and chunk 64 form one group. On CPU groups of
# _CPU_LOCKSTEP_PIXELS pixels: fewer, larger loop bodies than one tile at a time, little work
# wasted on tiles that finished early (bench_render, 16² tiles: 80K Gaussians at 256², forward
# 222 -> 127 ms, fwd+bwd 611 -> 323 ms against "sequential" with 8 tiles; 4 and 16 were close,
# all 256 slower; with 8² tiles, the default on CPU, ground truth ran alike with 16 and 32 tiles
# and 64 slower, and a tiny train step took 0.36-0.38 s with 16 against 0.44-0.50 s with 32).
_LOCKSTEP_ELEMENTS = 2**24
_CPU_LOCKSTEP_PIXELS = 1024
# Intersection sort: at most this many prefix lengths of the buffer (each halving the previous),
# none shorter than _MIN_SORT_LENGTH.
_SORT_LENGTHS = 5
_MIN_SORT_LENGTH = 1 << 14


# --------------------------------------------------------------------------------------------
# Tile intersection
# --------------------------------------------------------------------------------------------


class _Binning(NamedTuple):
    flatten_ids: Array  # [M] global id v*N + g of each binned intersection, sorted by (tile, depth)
    tile_offsets: Array  # [V*T] start of each tile's run in flatten_ids
    tile_composited: Array  # [V*T] run length to composite, ≤ capacity
    tile_counts: Array  # [V*T] true number of intersecting Gaussians
    tiles_per_gaussian: Array  # [V,N]


def _enumerate_and_sort(length, incl, excl, lo, ext, global_id, *, size, num_gaussians, tiles_per_view,
                        n_tiles_x, sentinel):
    """The first `length` slots of the intersection buffer, sorted by tile (stable: depth order
    inside a tile), padded to `size` with unused slots: (tile keys, global ids, -1 if unused).
    Slot s belongs to the Gaussian (in depth order) whose inclusive count prefix `incl` first
    exceeds s."""
    # owner[s] = #{g : incl[g] <= s} (searchsorted right), as a scatter of ones and a prefix sum:
    # O(N + length) instead of a binary search per slot (0.3 against 1.1 ms at 80K slots on 2
    # CPU cores). (Packing (tile, slot) into one int32 key for a single-operand sort was tried:
    # 30% faster on random keys alone, but slower here, 7.1 against 6.2 ms at 20K Gaussians/128².)
    hits = jnp.zeros((length + 1,), jnp.int32).at[jnp.minimum(incl, length)].add(1)
    owner = jnp.minimum(jnp.cumsum(hits[:length]), incl.shape[0] - 1)
    slot = jnp.arange(length, dtype=jnp.int32)
    used = slot < incl[-1]
    local = slot - excl[owner]
    width_o = jnp.maximum(ext[owner, 0], 1)
    tile_x = lo[owner, 0] + local % width_o
    tile_y = lo[owner, 1] + local // width_o
    view = owner // num_gaussians
    tile_key = jnp.where(used, view * tiles_per_view + tile_y * n_tiles_x + tile_x, sentinel)
    keys, ids = jax.lax.sort(
        (tile_key.astype(jnp.int32), jnp.where(used, global_id[owner], -1).astype(jnp.int32)),
        num_keys=1,
        is_stable=True,
    )
    pad = size - length  # the unused slots past `length` would sort last anyway
    return (jnp.concatenate([keys, jnp.full((pad,), sentinel, jnp.int32)]),
            jnp.concatenate([ids, jnp.full((pad,), -1, jnp.int32)]))


def _prefix_lengths(size: int) -> list[int]:
    """The buffer length and up to _SORT_LENGTHS - 1 halvings of it (none below
    _MIN_SORT_LENGTH), ascending."""
    lengths = [size]
    while len(lengths) < _SORT_LENGTHS and lengths[-1] // 2 >= _MIN_SORT_LENGTH:
        lengths.append(lengths[-1] // 2)
    return lengths[::-1]


def _sort_smallest_prefix(enumerate_and_sort, lengths, incl, excl, lo, ext, global_id):
    """`enumerate_and_sort` of the shortest of `lengths` that holds every used slot.

    Sorting the whole buffer costs the same however few of its slots are used, and the default
    buffer (16 per Gaussian) is mostly empty (a head uses 2-6): `lax.switch` runs only the one
    prefix length needed. Under `vmap` (a batch of renders) a batched switch index would run every
    branch, so a batching rule picks the length the fullest render of the batch needs instead."""
    def index(used):
        return jnp.searchsorted(jnp.asarray(lengths, jnp.int32), jnp.minimum(used, lengths[-1]), side="left")

    @custom_batching.custom_vmap
    def sort_stacked(*stacked):  # every array with a leading batch axis
        branches = [jax.vmap(functools.partial(enumerate_and_sort, n)) for n in lengths]
        return jax.lax.switch(index(jnp.max(stacked[0][:, -1])), branches, *stacked)

    @sort_stacked.def_vmap
    def sort_stacked_batched(axis_size, in_batched, *stacked):
        # Fold the new batch axis into the leading one, so nested vmaps share one index too.
        stacked = [x if batched else jnp.broadcast_to(x, (axis_size, *x.shape)) for x, batched in zip(stacked, in_batched)]
        out = sort_stacked(*(x.reshape(-1, *x.shape[2:]) for x in stacked))
        return tuple(o.reshape(axis_size, -1, *o.shape[1:]) for o in out), (True, True)

    keys, ids = sort_stacked(*(x[None] for x in (incl, excl, lo, ext, global_id)))
    return keys[0], ids[0]


def _stable_argsort(x: Array) -> Array:
    """`jnp.argsort(x, axis=-1, stable=True)` of floats, sorting integer keys: the IEEE bits with
    the magnitude bits of negatives flipped order like the values, and -0.0 is made +0.0 first so
    that the two tie as floats do (x has no NaN). XLA:CPU compares floats in its sort through a
    total-order transform per comparison: integer keys sort twice as fast (20K depths: 0.9
    against 1.9 ms on 2 cores)."""
    width = jnp.dtype(x.dtype).itemsize * 8
    int_type = {32: jnp.int32, 64: jnp.int64}[width]
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.zeros_like(x), x), int_type)
    keys = bits ^ ((bits >> (width - 1)) & jnp.asarray(2 ** (width - 1) - 1, int_type))
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jax.lax.sort((keys, index), dimension=x.ndim - 1, num_keys=1, is_stable=True)[1]


def _bin_intersections(tile_min, tile_max, depths, valid, n_tiles_x, n_tiles_y, capacity, max_intersections):
    """Group (Gaussian, tile) pairs by tile, depth-sorted inside each tile, in static shapes."""
    num_views, num_gaussians = valid.shape
    tiles_per_view = n_tiles_x * n_tiles_y
    size = max_intersections
    extent = tile_max - tile_min  # [V,N,2], zero for culled Gaussians
    tiles_per_gaussian = extent[..., 0] * extent[..., 1]

    # Enumerate Gaussians front to back (stable argsort of the float depth; culled ones last), so
    # a stable sort by tile id below keeps each tile's list in depth order.
    order = _stable_argsort(jnp.where(valid, depths, jnp.inf))  # [V,N]
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

    sentinel = num_views * tiles_per_view
    enumerate_and_sort = functools.partial(_enumerate_and_sort, size=size, num_gaussians=num_gaussians,
                                           tiles_per_view=tiles_per_view, n_tiles_x=n_tiles_x, sentinel=sentinel)
    sorted_key, flatten_ids = _sort_smallest_prefix(enumerate_and_sort, _prefix_lengths(size),
                                                    incl, excl, lo, ext, global_id)
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
    group: int = 1  # tiles advanced together by the lockstep compositor (the sequential one ignores it)


def _lockstep_group_size(num_tiles: int, tile_pixels: int, chunk: int, requested: int | None, platform: str) -> int:
    """Tiles per lockstep group: `requested` (RasterOptions.lockstep_tiles), else on CPU as many
    as cover _CPU_LOCKSTEP_PIXELS pixels and elsewhere as many as keep G · tile_pixels · chunk ≤
    _LOCKSTEP_ELEMENTS; at least 1, never more than there are tiles."""
    if requested is None:
        budget = max(1, _LOCKSTEP_ELEMENTS // max(1, tile_pixels * chunk))
        cpu = max(1, _CPU_LOCKSTEP_PIXELS // max(1, tile_pixels))
        requested = min(cpu, budget) if platform == "cpu" else budget
    return max(1, min(num_tiles, requested))


def _chunk_rows(packed, flatten_ids, start, count, k, chunk, pad_id):
    """Packed rows [B, D] of chunk k of a tile's list; slots past its end read the zero pad row."""
    pos = k * chunk + jnp.arange(chunk)
    ids = jax.lax.dynamic_slice(flatten_ids, (start + k * chunk,), (chunk,))
    ids = jnp.where((pos < count) & (ids >= 0), ids, pad_id)
    return packed[ids], ids, pos


_NEVER = jnp.iinfo(jnp.int32).max  # stop position of a pixel that has not stopped


def _forward_step(rows, pixels, k, acc, trans, stop, n_contrib):
    """Composite chunk k (packed rows [B,D]) of one tile into its per-pixel state [P,...]."""
    chunk = rows.shape[0]
    alpha = _chunk_alpha(rows, pixels)
    log1m = jnp.log1p(-alpha)
    t_excl = trans[:, None] * jnp.exp(log1m @ _strict_upper(chunk, rows.dtype))
    active = stop == _NEVER
    # gsplat: stop *before* the Gaussian whose next_T = T·(1-α) would be ≤ 1e-4.
    live = (t_excl * (1.0 - alpha) > TRANSMITTANCE_EPS) & active[:, None]
    n_live = jnp.sum(live, axis=1, dtype=jnp.int32)
    stop = jnp.where(active & (n_live < chunk), k * chunk + n_live, stop)
    acc = acc + (jnp.where(live, alpha, 0.0) * t_excl) @ rows[:, _NUM_GEOMETRY:]
    trans = trans * jnp.exp(jnp.sum(jnp.where(live, log1m, 0.0), axis=1))
    n_contrib = n_contrib + jnp.sum(live & (alpha > 0.0), axis=1, dtype=jnp.int32)
    return acc, trans, stop, n_contrib


def _initial_state(num_pixels, num_features, dtype):
    """(acc, trans, stop, n_contrib) of a tile before its first chunk."""
    return (
        jnp.zeros((num_pixels, num_features), dtype),
        jnp.ones((num_pixels,), dtype),
        jnp.full((num_pixels,), _NEVER, jnp.int32),
        jnp.zeros((num_pixels,), jnp.int32),
    )


def _composite_forward(packed, flatten_ids, starts, counts, setup: _TileSetup):
    """Front-to-back compositing of every tile, one tile after another. Returns per tile
    [T_total, P, ...]: (accumulated features, final transmittance, stop position, number of
    contributors, chunks run).
    """
    tile_size, n_tiles_x, tiles_per_view, chunk = setup[:4]
    num_features = packed.shape[1] - _NUM_GEOMETRY
    pad_id = packed.shape[0] - 1

    def one_tile(tile):
        pixels = _tile_pixels(tile, tile_size, n_tiles_x, tiles_per_view, packed.dtype)
        start, count = starts[tile], counts[tile]

        def cond(state):
            k, _, _, stop, _ = state
            return (k * chunk < count) & jnp.any(stop == _NEVER)

        def body(state):
            k, *tile_state = state
            rows, _, _ = _chunk_rows(packed, flatten_ids, start, count, k, chunk, pad_id)
            return k + 1, *_forward_step(rows, pixels, k, *tile_state)

        state = (jnp.int32(0), *_initial_state(tile_size * tile_size, num_features, packed.dtype))
        k, acc, trans, stop, n_contrib = jax.lax.while_loop(cond, body, state)
        return acc, trans, stop, n_contrib, k

    return jax.lax.map(one_tile, jnp.arange(starts.shape[0]))


def _lockstep_tiles(starts, counts, group):
    """Tile ids [num_groups, group], longest lists first (so that a group's tiles run for similar
    numbers of chunks), padded with a dummy tile (id T_total, whose list is empty); and
    starts/counts [T_total + 1] extended by that dummy tile."""
    num_tiles = starts.shape[0]
    num_groups = -(-num_tiles // group)
    order = jnp.argsort(-counts, stable=True).astype(jnp.int32)
    tiles = jnp.concatenate([order, jnp.full((num_groups * group - num_tiles,), num_tiles, jnp.int32)])
    starts = jnp.concatenate([starts, jnp.zeros((1,), starts.dtype)])
    counts = jnp.concatenate([counts, jnp.zeros((1,), counts.dtype)])
    return tiles.reshape(num_groups, group), starts, counts


def _by_tile(x, tiles, num_tiles):
    """Per-group outputs [num_groups, G, ...] -> per tile [T_total, ...] (dummy tiles dropped)."""
    return x.reshape(-1, *x.shape[2:])[jnp.argsort(tiles.reshape(-1), stable=True)[:num_tiles]]


def _grouped(x, tiles):
    """Per tile [T_total, ...] -> per group [num_groups, G, ...] (zeros for the dummy tiles)."""
    return jnp.concatenate([x, jnp.zeros((1, *x.shape[1:]), x.dtype)])[tiles]


def _map_groups(fn, tiles):
    """`lax.map(fn, tiles)` over groups, without the loop when there is only one group."""
    if tiles.shape[0] == 1:
        return jax.tree.map(lambda x: x[None], fn(tiles[0]))
    return jax.lax.map(fn, tiles)


def _composite_forward_lockstep(packed, flatten_ids, starts, counts, setup: _TileSetup):
    """`_composite_forward` with all tiles of a group advancing chunk by chunk together; returns
    the same per-tile outputs."""
    tile_size, n_tiles_x, tiles_per_view, chunk, group = setup
    num_tiles = starts.shape[0]
    num_features = packed.shape[1] - _NUM_GEOMETRY
    pad_id = packed.shape[0] - 1
    tiles, starts, counts = _lockstep_tiles(starts, counts, group)
    tile_pixels = jax.vmap(lambda t: _tile_pixels(t, tile_size, n_tiles_x, tiles_per_view, packed.dtype))
    chunk_rows = jax.vmap(lambda s, c, k: _chunk_rows(packed, flatten_ids, s, c, k, chunk, pad_id)[0],
                          in_axes=(0, 0, None))
    step = jax.vmap(_forward_step, in_axes=(0, 0, None, 0, 0, 0, 0))

    def one_group(group_tiles):
        pixels = tile_pixels(group_tiles)  # [G,P,2]
        start, count = starts[group_tiles], counts[group_tiles]

        def running(k, stop):  # [G]: tiles that composite chunk k
            return (k * chunk < count) & jnp.any(stop == _NEVER, axis=1)

        def cond(state):
            k, _, _, stop, _, _ = state
            return jnp.any(running(k, stop))

        def body(state):
            k, acc, trans, stop, n_contrib, chunks_run = state
            run = running(k, stop)
            new = step(chunk_rows(start, count, k), pixels, k, acc, trans, stop, n_contrib)
            acc, trans, stop, n_contrib = (
                jnp.where(run.reshape(-1, *[1] * (old.ndim - 1)), x, old)
                for x, old in zip(new, (acc, trans, stop, n_contrib))
            )
            return k + 1, acc, trans, stop, n_contrib, chunks_run + run.astype(jnp.int32)

        state = jax.vmap(lambda _: _initial_state(tile_size * tile_size, num_features, packed.dtype))(group_tiles)
        state = (jnp.int32(0), *state, jnp.zeros((group,), jnp.int32))
        return jax.lax.while_loop(cond, body, state)[1:]

    outputs = _map_groups(one_group, tiles)
    return tuple(_by_tile(x, tiles, num_tiles) for x in outputs)


def _custom_composite(forward, backward):
    """`composite(packed, flatten_ids, starts, counts, setup)` -> composited features [T_total,P,F],
    transmittance [T_total,P], contributors [T_total,P], with the hand-written `backward`; the
    residuals are the inputs and the forward's per-pixel final transmittance and stop position
    and per-tile chunk count."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def composite(packed, flatten_ids, starts, counts, setup: _TileSetup):
        acc, trans, _, n_contrib, _ = forward(packed, flatten_ids, starts, counts, setup)
        return acc, trans, n_contrib

    def composite_fwd(packed, flatten_ids, starts, counts, setup):
        acc, trans, stop, n_contrib, chunks_run = forward(packed, flatten_ids, starts, counts, setup)
        return (acc, trans, n_contrib), (packed, flatten_ids, starts, counts, trans, stop, chunks_run)

    composite.defvjp(composite_fwd, backward)
    return composite


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


def _tile_geometry(tile, setup: _TileSetup, dtype):
    """What the backward needs of a tile: pixel centres [P,2], the tile centre, and the pixel
    moment basis around it (`_pixel_moment_basis`)."""
    tile_size = setup.tile_size
    pixels = _tile_pixels(tile, tile_size, setup.n_tiles_x, setup.tiles_per_view, dtype)
    centre = pixels[0] + 0.5 * (tile_size - 1)
    return pixels, centre, _pixel_moment_basis(pixels, centre)


def _composite_bwd(setup, residuals, cotangents):
    packed, flatten_ids, starts, counts, trans_final, stop, chunks_run = residuals
    cot_acc, cot_trans, _ = cotangents
    chunk = setup.chunk
    pad_id = packed.shape[0] - 1

    def one_tile(tile, grad):
        pixels, centre, basis = _tile_geometry(tile, setup, packed.dtype)
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


_composite = _custom_composite(_composite_forward, _composite_bwd)


def _composite_lockstep_bwd(setup, residuals, cotangents):
    """`_composite_bwd` in lockstep: per group, one loop from k = max(chunks run) - 1 down to 0;
    tile t takes part in step k only if k < chunks_run[t] (otherwise it adds zero cotangents to
    the pad row and keeps its T_end and ḡ_T), and the row cotangents of every tile of the group
    are scatter-added in one `.at[ids].add`. The gradient is carried from group to group."""
    packed, flatten_ids, starts, counts, trans_final, stop, chunks_run = residuals
    cot_acc, cot_trans, _ = cotangents
    chunk = setup.chunk
    pad_id = packed.shape[0] - 1
    tiles, starts, counts = _lockstep_tiles(starts, counts, setup.group)
    # Per-tile residuals and cotangents grouped [num_groups, G, ...] (the dummy tiles ran no chunk).
    per_group = tuple(_grouped(x, tiles) for x in (trans_final, stop, chunks_run, cot_acc, cot_trans))

    chunk_rows = jax.vmap(lambda s, c, k: _chunk_rows(packed, flatten_ids, s, c, k, chunk, pad_id),
                          in_axes=(0, 0, None))
    backward = jax.vmap(_chunk_backward)

    def one_group(grad, xs):
        group_tiles, t_final, stop_g, runs, cot_acc_g, cot_t_final = xs
        pixels, centre, basis = jax.vmap(lambda t: _tile_geometry(t, setup, packed.dtype))(group_tiles)
        start, count = starts[group_tiles], counts[group_tiles]

        def body(state):
            k, t_end, cot_t_end, grad = state
            k = k - 1
            run = k < runs  # [G]: tiles that composited chunk k in the forward
            rows, ids, pos = chunk_rows(start, count, k)
            live = (pos[:, None, :] < stop_g[:, :, None]) & run[:, None, None]
            # The transmittance at the chunk start is recovered exactly in log space (no division
            # by 1 - α, which is what makes gsplat's back-to-front recovery fragile near α = 1).
            cot_rows, t_start, cot_t_start = backward(rows, pixels, centre, basis, live, t_end, cot_acc_g, cot_t_end)
            cot_rows = jnp.where(run[:, None, None], cot_rows, 0.0)
            ids = jnp.where(run[:, None], ids, pad_id)
            t_end = jnp.where(run[:, None], t_start, t_end)
            cot_t_end = jnp.where(run[:, None], cot_t_start, cot_t_end)
            return k, t_end, cot_t_end, grad.at[ids.reshape(-1)].add(cot_rows.reshape(-1, cot_rows.shape[-1]))

        state = (jnp.max(runs), t_final, cot_t_final, grad)
        return jax.lax.while_loop(lambda s: s[0] > 0, body, state)[3], None

    xs = (tiles, *per_group)
    grad = jnp.zeros_like(packed)
    if tiles.shape[0] == 1:
        grad, _ = one_group(grad, jax.tree.map(lambda x: x[0], xs))
    else:
        grad, _ = jax.lax.scan(one_group, grad, xs)
    return grad, None, None, None


_composite_lockstep = _custom_composite(_composite_forward_lockstep, _composite_lockstep_bwd)


# --------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("width", "height", "options"))
def rasterize_jax(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width: int, height: int,
                  options: RasterOptions) -> tuple[Array, Array, RasterDiagnostics]:
    """The pure-JAX backend of `rasterize`: (images, alphas, RasterDiagnostics).

    Arguments are validated by `rasterize`; `options` has both capacities resolved to ints (its
    `compositor` picks `_composite_lockstep` or `_composite`).
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
    num_tiles = num_views * tiles_per_view
    group = _lockstep_group_size(num_tiles, tile_size * tile_size, chunk, options.lockstep_tiles, jax.default_backend())
    setup = _TileSetup(tile_size, n_tiles_x, tiles_per_view, chunk, group)
    composite = _composite_lockstep if options.compositor == "lockstep" else _composite
    acc, trans, n_contrib = composite(packed, flatten_ids, binning.tile_offsets, binning.tile_composited, setup)

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
