"""Tile binning (`jax_backend._bin_intersections`): the sorted (tile, depth) lists against a numpy
enumeration, with the sort restricted to the shortest buffer prefix that holds every used slot,
unbatched and under (nested) vmap where the renders of a batch fill the buffer differently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.render import jax_backend

TILES_X, TILES_Y = 6, 5
SIZE = 2048


def _scene(seed, num_gaussians, max_extent, num_views=1, visible=0.9):
    rng = np.random.default_rng(seed)
    lo = np.stack([rng.integers(0, TILES_X, (num_views, num_gaussians)),
                   rng.integers(0, TILES_Y, (num_views, num_gaussians))], -1)
    ext = rng.integers(0, max_extent + 1, (num_views, num_gaussians, 2))
    hi = np.minimum(lo + ext, [TILES_X, TILES_Y])
    valid = rng.random((num_views, num_gaussians)) < visible
    hi = np.where(valid[..., None], hi, lo)
    depths = np.round(rng.uniform(1, 3, (num_views, num_gaussians)), 1)  # ties: the stable order decides
    return lo.astype(np.int32), hi.astype(np.int32), depths.astype(np.float32), valid


def _reference(lo, hi, depths, valid, size):
    """flatten_ids per tile: enumerate (Gaussian in depth order, tiles of its box row by row), keep
    the first `size` pairs, group them by tile keeping that order."""
    num_views, num_gaussians = valid.shape
    pairs = []
    for v in range(num_views):
        for g in sorted(range(num_gaussians), key=lambda g: (depths[v, g] if valid[v, g] else np.inf, g)):
            for ty in range(lo[v, g, 1], hi[v, g, 1]):
                for tx in range(lo[v, g, 0], hi[v, g, 0]):
                    pairs.append((v * TILES_X * TILES_Y + ty * TILES_X + tx, v * num_gaussians + g))
    kept = pairs[:size]
    lists = {}
    for tile, gid in kept:
        lists.setdefault(tile, []).append(gid)
    return lists, len(pairs)


def _lists(binning, num_tiles):
    ids, starts = np.asarray(binning.flatten_ids), np.asarray(binning.tile_offsets)
    runs = np.asarray(binning.tile_composited)
    return {t: list(ids[starts[t]:starts[t] + runs[t]]) for t in range(num_tiles) if runs[t]}


def _bin(lo, hi, depths, valid, size=SIZE):
    return jax_backend._bin_intersections(jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(depths), jnp.asarray(valid),
                                          TILES_X, TILES_Y, 10**6, size)


@pytest.fixture(autouse=True)
def short_prefixes(monkeypatch):
    # Prefix lengths 256, 512, 1024, 2048 for the 2048-slot buffer.
    monkeypatch.setattr(jax_backend, "_MIN_SORT_LENGTH", 256)
    monkeypatch.setattr(jax_backend, "_SORT_LENGTHS", 4)


@pytest.mark.parametrize("num_gaussians,max_extent", [(40, 2), (120, 2), (150, 4), (400, 5)])
def test_lists_match_numpy_enumeration_at_every_fill(num_gaussians, max_extent):
    lo, hi, depths, valid = _scene(num_gaussians, num_gaussians, max_extent, num_views=2)
    expected, total = _reference(lo, hi, depths, valid, SIZE)
    assert _lists(jax.jit(_bin)(lo, hi, depths, valid), 2 * TILES_X * TILES_Y) == expected
    if num_gaussians == 400:
        assert total > SIZE  # the buffer overflowed: its first SIZE pairs are binned


def test_vmapped_renders_with_different_fills_match_unbatched():
    # 400 Gaussians each, filling < 256, 256-1024, 1024-2048 and more than 2048 slots.
    scenes = [_scene(0, 400, e, visible=f) for e, f in [(1, 0.3), (3, 0.8), (6, 1.0), (9, 1.0)]]
    totals = [_reference(*sc, SIZE)[1] for sc in scenes]
    assert totals[0] < 256 < totals[1] < 1024 < totals[2] < SIZE < totals[3], totals
    stacked = [np.stack([sc[i] for sc in scenes]) for i in range(4)]
    batched = jax.jit(jax.vmap(_bin))(*stacked)
    nested = jax.jit(jax.vmap(jax.vmap(_bin)))(*(x.reshape(2, 2, *x.shape[1:]) for x in stacked))
    for b, scene in enumerate(scenes):
        expected, _ = _reference(*scene, SIZE)
        one = jax.tree.map(lambda x: x[b], batched)  # noqa: B023
        two = jax.tree.map(lambda x: x[b // 2, b % 2], nested)  # noqa: B023
        assert _lists(one, TILES_X * TILES_Y) == expected
        assert _lists(two, TILES_X * TILES_Y) == expected
        np.testing.assert_array_equal(np.asarray(one.tile_counts), np.asarray(two.tile_counts))


def test_prefix_lengths_halve_down_to_the_minimum():
    assert jax_backend._prefix_lengths(2048) == [256, 512, 1024, 2048]
    assert jax_backend._prefix_lengths(300) == [300]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_argsort_of_integer_keys_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(0, 2, (3, 500)), 1).astype(dtype)  # many ties
    x[:, :40] = 0.0
    x[:, 40:80] = -0.0  # ties with +0.0, as floats compare
    x[:, 80:100] = np.inf
    x[:, 100:110] = -np.inf
    x = rng.permuted(x, axis=1)
    # Subnormals: XLA:CPU treats them as 0 when comparing floats, so the float sort this replaces
    # (jnp.argsort) ties them with 0 too; they are checked against that, not numpy.
    sub = x.copy()
    sub[:, 110:120] = np.finfo(dtype).tiny / 4 * np.array([1, -1] * 5)
    sub = rng.permuted(sub, axis=1)
    with jax.enable_x64(dtype == np.float64):
        argsort = jax.jit(jax_backend._stable_argsort)
        np.testing.assert_array_equal(np.asarray(argsort(jnp.asarray(x))), np.argsort(x, axis=-1, kind="stable"))
        np.testing.assert_array_equal(np.asarray(argsort(jnp.asarray(sub))),
                                      np.asarray(jnp.argsort(jnp.asarray(sub), axis=-1, stable=True)))
