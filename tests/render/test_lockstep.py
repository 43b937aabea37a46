"""The lockstep compositor (`RasterOptions.compositor="lockstep"`) against the sequential one.

Both formulations of the pure-JAX compositor must give the same per-tile state (accumulated
features, transmittance, stop position, contributors, chunks run) and the same gradients; the
image-level tests against the dense float64 reference in `test_rasterize.py` are parametrized
over the compositor as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.render import RasterOptions, jax_backend, rasterize
from flexavatar_jax.render.common import default_tile_size
from flexavatar_jax.render.jax_backend import (
    _composite,
    _composite_forward,
    _composite_forward_lockstep,
    _composite_lockstep,
    _lockstep_group_size,
    _TileSetup,
)

from .test_rasterize import DIFFERENTIABLE, assert_close_to_reference, random_scene, reference_render

# --------------------------------------------------------------------------------------------
# The compositor alone, on hand-made tile lists
# --------------------------------------------------------------------------------------------

TILE, TILES_X, TILES_Y, VIEWS, CHUNK = 8, 4, 3, 2, 16
NUM_TILES = VIEWS * TILES_X * TILES_Y


def tile_lists(seed=0, features=4):
    """Packed rows, flatten_ids, starts and counts of 24 tiles (8² pixels, 2 views of 4×3 tiles)
    whose lists are empty, shorter than a chunk, many chunks long, or saturate their pixels within
    the first chunks. Gaussians are shared between tiles (a pool in depth order), so the backward
    scatter-adds several tiles into the same rows."""
    rng = np.random.default_rng(seed)
    width, height = TILE * TILES_X, TILE * TILES_Y
    num_faint, num_opaque = 300, 60
    n = num_faint + num_opaque
    means = rng.uniform([-4, -4], [width + 4, height + 4], (n, 2))
    std = np.concatenate([rng.uniform(1.5, 6.0, num_faint), rng.uniform(8.0, 14.0, num_opaque)])
    corr = rng.uniform(-0.6, 0.6, n)
    sx, sy = std * rng.uniform(0.7, 1.3, n), std
    det = (sx * sy) ** 2 * (1 - corr**2)
    conics = np.stack([sy**2 / det, -corr * sx * sy / det, sx**2 / det], -1)
    opacity = np.concatenate([rng.uniform(0.05, 0.6, num_faint), rng.uniform(0.95, 1.0, num_opaque)])
    packed = np.concatenate([means, conics, opacity[:, None], rng.normal(size=(n, features))], axis=1)
    packed = np.concatenate([packed, np.zeros((1, packed.shape[1]))])  # the pad row

    lengths = np.array([0, 1, 7, 16, 17, 40, 90, 150, 0, 33, 64, 120] * VIEWS)
    opaque_tile = np.zeros(NUM_TILES, bool)
    opaque_tile[[5, 7, 10, 19]] = True  # long lists that saturate early
    ids, starts = [], []
    for tile in range(NUM_TILES):
        pool = np.arange(num_faint, n) if opaque_tile[tile] else np.arange(num_faint)
        length = min(lengths[tile], len(pool))
        starts.append(sum(len(x) for x in ids))
        ids.append(np.sort(rng.choice(pool, length, replace=False)))
    flatten_ids = np.concatenate([*ids, np.full(CHUNK, -1)]).astype(np.int32)
    counts = np.array([len(x) for x in ids], np.int32)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return f32(packed), jnp.asarray(flatten_ids), jnp.asarray(starts, jnp.int32), jnp.asarray(counts)


def setup(group):
    return _TileSetup(TILE, TILES_X, TILES_X * TILES_Y, CHUNK, group)


forward_sequential = jax.jit(_composite_forward, static_argnums=4)
forward_lockstep = jax.jit(_composite_forward_lockstep, static_argnums=4)


@pytest.mark.parametrize("group", [NUM_TILES, 5])
def test_lockstep_forward_matches_sequential_per_tile(group):
    inputs = tile_lists()
    acc, trans, stop, n_contrib, chunks_run = forward_sequential(*inputs, setup(NUM_TILES))
    got = forward_lockstep(*inputs, setup(group))
    assert [x.shape for x in got] == [x.shape for x in (acc, trans, stop, n_contrib, chunks_run)]
    np.testing.assert_allclose(got[0], acc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], trans, rtol=1e-6, atol=1e-6)
    for got_int, want in zip(got[2:], (stop, n_contrib, chunks_run)):
        np.testing.assert_array_equal(got_int, want)

    # The scene exercises what the masking is for: empty tiles, tiles that run out of Gaussians
    # after different numbers of chunks, and tiles that stop early because every pixel saturated.
    counts, chunks_run = np.asarray(inputs[3]), np.asarray(chunks_run)
    chunks_needed = -(-counts // CHUNK)
    assert np.any(counts == 0) and np.all(chunks_run[counts == 0] == 0)
    assert len(np.unique(chunks_run[chunks_run == chunks_needed])) >= 4
    assert np.any((chunks_run < chunks_needed) & (chunks_needed >= 3))
    assert np.any(np.asarray(stop) < np.iinfo(np.int32).max) and np.any(np.asarray(trans) < 1e-3)


@pytest.mark.parametrize("group", [NUM_TILES, 5, 1])
def test_lockstep_vjp_matches_sequential(group):
    """Packed-row cotangents of both compositors agree, with one group, several (the last padded
    with a dummy tile) and a tile per group."""
    packed, *lists = tile_lists()
    rng = np.random.default_rng(1)
    pixels = TILE * TILE
    cot_acc = jnp.asarray(rng.normal(size=(NUM_TILES, pixels, packed.shape[1] - 6)), jnp.float32)
    cot_trans = jnp.asarray(rng.normal(size=(NUM_TILES, pixels)), jnp.float32)

    @jax.jit
    def cotangents(packed):
        rows = {}
        for name, composite, tile_setup in (("seq", _composite, setup(NUM_TILES)),
                                            ("lock", _composite_lockstep, setup(group))):
            outputs, vjp = jax.vjp(lambda p: composite(p, *lists, tile_setup)[:2], packed)  # noqa: B023
            rows[name] = (outputs, vjp((cot_acc, cot_trans))[0])
        return rows

    rows = cotangents(packed)
    (acc, trans), want = rows["seq"]
    (got_acc, got_trans), got = rows["lock"]
    np.testing.assert_allclose(got_acc, acc, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_trans, trans, rtol=1e-6, atol=1e-6)
    want, got = np.asarray(want)[:-1], np.asarray(got)[:-1]  # the pad row's cotangent is dropped
    assert np.abs(want).max() > 0
    for column in range(want.shape[1]):
        scale = np.abs(want[:, column]).max()
        np.testing.assert_allclose(got[:, column], want[:, column], rtol=1e-5, atol=1e-5 * scale)


def test_group_size_by_platform_and_request():
    # Accelerators: all 256 tiles of a 256² render in one group; at most 2**24 elements per step.
    assert _lockstep_group_size(256, 16 * 16, 64, None, "gpu") == 256
    assert _lockstep_group_size(4096, 16 * 16, 64, None, "tpu") == 2**24 // (16 * 16 * 64) == 1024
    # CPU: small groups of a fixed pixel count (16 tiles of 8², 4 of 16²); a request wins; never
    # more than the tiles, never fewer than one.
    assert _lockstep_group_size(1024, 8 * 8, 64, None, "cpu") == jax_backend._CPU_LOCKSTEP_PIXELS // 64 == 16
    assert _lockstep_group_size(256, 16 * 16, 64, None, "cpu") == 4
    assert _lockstep_group_size(1024, 64 * 64, 64, None, "cpu") == 1
    assert _lockstep_group_size(256, 16 * 16, 64, 5, "gpu") == 5
    assert _lockstep_group_size(3, 16 * 16, 64, None, "cpu") == 3
    assert _lockstep_group_size(3, 16 * 16, 64, 100, "cpu") == 3


# --------------------------------------------------------------------------------------------
# Through `rasterize`
# --------------------------------------------------------------------------------------------


def _loss_and_grads(scene, compositor, width=40, height=32, **options):
    rng = np.random.default_rng(2)
    views, channels = scene["viewmats"].shape[0], scene["colors"].shape[1]
    weights = jnp.asarray(rng.normal(size=(views, height, width, channels + 1)), jnp.float32)
    alpha_weights = jnp.asarray(rng.normal(size=(views, height, width, 1)), jnp.float32)

    def loss(params):
        images, alphas = rasterize(
            params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
            params["viewmats"], params["Ks"], width, height, backgrounds=params["backgrounds"],
            render_mode="RGB+D", compositor=compositor, **options,
        )
        return jnp.sum(images * weights) + jnp.sum(alphas * alpha_weights), (images, alphas)

    return jax.jit(jax.grad(loss, has_aux=True))(scene)


def _gradient_scene(seed=20):
    scene = random_scene(seed, 150, 2, 3)
    scene["backgrounds"] = np.random.default_rng(seed).uniform(0, 1, (2, 3)).astype(np.float32)
    return scene


def assert_gradients_close(got, want):
    for name in DIFFERENTIABLE:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert np.all(np.isfinite(g)) and np.abs(w).max() > 0, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max(), err_msg=name)


def test_lockstep_gradients_match_sequential_and_the_reference():
    """Gradients w.r.t. every differentiable input agree between the compositors; both images
    match the dense float64 reference (finite differences of it are checked per compositor in
    test_rasterize.py's gradient tests)."""
    scene = _gradient_scene()
    seq_grads, (seq_images, seq_alphas) = _loss_and_grads(scene, "sequential")
    lock_grads, (lock_images, lock_alphas) = _loss_and_grads(scene, "lockstep")
    assert_gradients_close(lock_grads, seq_grads)
    np.testing.assert_allclose(lock_images, seq_images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lock_alphas, seq_alphas, rtol=1e-6, atol=1e-6)
    ref_images, ref_alphas, _ = reference_render(**scene, width=40, height=32, render_mode="RGB+D")
    scale = np.array([1.0, 1.0, 1.0, 2.5])  # depth ~2.5 world units
    for images, alphas in ((seq_images, seq_alphas), (lock_images, lock_alphas)):
        assert_close_to_reference(np.asarray(images) / scale, ref_images / scale)
        assert_close_to_reference(alphas, ref_alphas)
    assert np.any(ref_alphas > 1 - 1.1e-3)  # early termination is exercised


def test_platform_default_tile_gives_gsplat_tile_images_and_gradients():
    """The default tile (8 on CPU) only regroups the work: images and gradients are those of
    gsplat's 16-pixel tiles (40×32 is ragged at 16, so partial tiles are exercised too)."""
    scene = _gradient_scene(21)
    assert RasterOptions().resolved(2, 150).tile_size != 16 or jax.default_backend() != "cpu"
    grads, (images, alphas) = _loss_and_grads(scene, "lockstep")
    grads16, (images16, alphas16) = _loss_and_grads(scene, "lockstep", tile_size=16)
    assert_gradients_close(grads, grads16)
    # float32 rounding of regrouped sums; the last channel is depth (~2.5 world units)
    np.testing.assert_allclose(images, images16, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alphas, alphas16, rtol=1e-6, atol=1e-6)


def test_lockstep_with_several_groups_through_rasterize():
    """lockstep_tiles=5 splits the 12 tiles into groups of 5 (the last padded with dummy tiles):
    images and gradients are those of a single group of 12."""
    scene = _gradient_scene()
    one_group = _loss_and_grads(scene, "lockstep", lockstep_tiles=12)
    grads, (images, alphas) = _loss_and_grads(scene, "lockstep", lockstep_tiles=5)
    np.testing.assert_allclose(images, one_group[1][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(alphas, one_group[1][1], rtol=1e-6, atol=1e-6)
    assert_gradients_close(grads, one_group[0])


def test_lockstep_under_vmap_matches_sequential():
    """vmap batches the lockstep loop (it runs until every batch member's tiles are done)."""
    scenes = [random_scene(30 + i, 60, 1, 3) for i in range(2)]
    means = np.stack([s["means"] for s in scenes])
    rest = {k: scenes[0][k] for k in ("quats", "scales", "opacities", "colors", "viewmats", "Ks")}

    def loss(means, compositor):
        images, _ = rasterize(means, rest["quats"], rest["scales"], rest["opacities"], rest["colors"],
                              rest["viewmats"], rest["Ks"], 40, 32, compositor=compositor)
        return jnp.sum(images**2), images

    batched = jax.jit(jax.vmap(jax.grad(lambda m: loss(m, "lockstep"), has_aux=True)))(means)
    single = jax.jit(jax.grad(lambda m: loss(m, "sequential"), has_aux=True))
    for i in range(2):
        grads, images = single(means[i])
        np.testing.assert_allclose(batched[1][i], images, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(batched[0][i], grads, rtol=1e-4, atol=1e-4 * np.abs(grads).max())


# --------------------------------------------------------------------------------------------
# The option
# --------------------------------------------------------------------------------------------


def test_compositor_options_are_checked():
    with pytest.raises(ValueError, match=r"compositor 'bad'.*'lockstep', 'sequential'"):
        RasterOptions(compositor="bad")
    with pytest.raises(ValueError, match="lockstep_tiles"):
        RasterOptions(lockstep_tiles=0)
    assert RasterOptions().compositor == "lockstep" and RasterOptions().lockstep_tiles is None


def test_default_tile_size_by_platform():
    # None resolves to the platform's tile: 8 on CPU, gsplat's 16 on accelerators; an explicit
    # size is kept, and a bad one is refused by name.
    assert RasterOptions().tile_size is None
    assert default_tile_size("cpu") == 8 and default_tile_size("gpu") == default_tile_size("tpu") == 16
    assert RasterOptions().resolved(1, 10).tile_size == default_tile_size()
    assert RasterOptions(tile_size=16).resolved(1, 10).tile_size == 16
    with pytest.raises(ValueError, match="tile_size"):
        RasterOptions(tile_size=0)
