"""FHAvatar symmetric UV fusion: mirror map use, flip-and-fill, masked windowed attention, lifter contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models import symmetric as sym
from flexavatar_jax.models.views import MAX_INPUTS
from tests.models.test_dual_uv import (GRID, TOKEN_DIM, all_leaves_get_gradients, lifter_batch, permute_views,
                                       with_garbage_padding)


def test_mirror_indices_follow_the_uv_mirror_map(procedural_head):
    g = 16
    mirror_map = uvt.uv_mirror_map(procedural_head, g)
    flat, has = sym.mirror_indices(procedural_head, g)
    rows, cols = np.nonzero(mirror_map[..., 0] >= 0)
    np.testing.assert_array_equal(flat.reshape(g, g)[rows, cols],
                                  mirror_map[rows, cols, 0] * g + mirror_map[rows, cols, 1])
    np.testing.assert_array_equal(has.reshape(g, g), mirror_map[..., 0] >= 0)


def test_flip_uses_the_mirror_map_not_a_column_flip(procedural_head, monkeypatch):
    # An asymmetric layout (as FLAME's): pretend every texel mirrors to the texel one row below and
    # three columns right (wrapping). Windows and indices must follow it, not col -> G-1-col.
    g = 8
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    fake = np.stack([(rows + 1) % g, (cols + 3) % g], -1)
    fake[0, 0] = -1  # one texel without a mirror
    monkeypatch.setattr(uvt, "uv_mirror_map", lambda head, k: fake)
    flat, has = sym.mirror_indices(procedural_head, g)
    t = 2 * g + 5  # texel (2, 5) -> (3, 0)
    assert flat[t] == 3 * g + 0 and has[t] and not has[0]

    index, valid = sym.symmetric_windows(procedural_head, g, 3)
    assert index.shape == (g * g, 18)
    assert index[t, 4] == t and index[t, 9 + 4] == 3 * g + 0  # window centres: t, then mirror(t)
    assert not valid[0, 9:].any()  # no mirror -> no mirror window
    assert valid[t, 9:].sum() == 6  # mirror window at column 0: one column is off the grid

    # Flip-and-fill: a feature at visible texel m(t) appears at occluded t; visible t keeps its own.
    local = jnp.arange(g * g, dtype=jnp.float32)[None, :, None] + 100.0
    visible = jnp.zeros((1, g * g), bool).at[0, 3 * g + 0].set(True).at[0, 5].set(True)
    filled, mask = sym.flip_and_fill(local, visible, jnp.asarray(flat), jnp.asarray(has))
    assert float(filled[0, t, 0]) == 100.0 + 3 * g + 0
    assert float(filled[0, 5, 0]) == 105.0
    assert bool(mask[0, t]) and bool(mask[0, 3 * g]) and not bool(mask[0, 0])
    # Texels whose mirror is not visible (and that are occluded) stay empty.
    assert float(filled[0, 1, 0]) == 0.0 and not bool(mask[0, 1])


def test_flip_and_fill_on_the_procedural_head_is_the_column_flip(procedural_head):
    # The procedural layout is exactly symmetric, so here the mirror map is col -> G-1-col on valid texels.
    g = 8
    flat, has = sym.mirror_indices(procedural_head, g)
    valid = uvt.texel_table(procedural_head, g).valid.reshape(-1)
    rows, cols = np.divmod(np.arange(g * g), g)
    np.testing.assert_array_equal(flat[valid], (rows * g + (g - 1 - cols))[valid])
    local = jnp.asarray(np.random.default_rng(0).standard_normal((1, g * g, 3)), jnp.float32)
    left = jnp.asarray((cols < g // 2) & valid)[None]
    filled, _ = sym.flip_and_fill(local, left, jnp.asarray(flat), jnp.asarray(has))
    right = (cols >= g // 2) & valid
    np.testing.assert_array_equal(np.asarray(filled[0])[right], np.asarray(local[0])[flat[right]])


def test_window_attention_ignores_masked_keys():
    t, d, s = 6, 8, 4
    rng = np.random.default_rng(0)
    queries = jnp.asarray(rng.standard_normal((1, t, d)), jnp.float32)
    local = jnp.asarray(rng.standard_normal((1, t, d)), jnp.float32)
    index = jnp.asarray(rng.integers(0, t, (t, s)), jnp.int32)
    valid = jnp.ones((t, s), bool).at[0].set(False)  # query 0 has no key at all
    local_mask = jnp.array([[True, True, True, False, True, False]])
    attn = sym.SymmetricWindowAttention(num_heads=2)
    params = attn.init(jax.random.key(0), queries, local, local_mask, index, valid)
    out = attn.apply(params, queries, local, local_mask, index, valid)
    changed = local.at[0, 3].set(1e3).at[0, 5].set(-1e3)
    np.testing.assert_allclose(np.asarray(attn.apply(params, queries, changed, local_mask, index, valid)),
                               np.asarray(out), atol=1e-5)
    # A query whose keys are all masked gets only the output bias (zero at init), not a uniform mix.
    np.testing.assert_allclose(np.asarray(out[0, 0]), 0.0, atol=1e-6)
    assert float(jnp.abs(out[0, 1:]).max()) > 1e-3


@pytest.fixture(scope="module")
def lifter(procedural_head):
    # No `width`: it defaults to the patch-token width (how models/avatar.py builds it).
    module = sym.SymmetricUVLifter(head=procedural_head, grid=GRID, num_heads=2, depth=1, window=3)
    tokens, views = lifter_batch(procedural_head)
    params = jax.jit(module.init)(jax.random.key(0), tokens, views)
    apply = jax.jit(lambda p, t, v: module.apply(p, t, v))
    return module, params, apply, tokens, views


def test_output_shape_for_1_to_4_views(lifter):
    _, params, apply, tokens, views = lifter
    out = apply(params, tokens, views)  # rows have 1, 2, 3, 4 real views
    assert out.shape == (MAX_INPUTS, GRID, GRID, TOKEN_DIM)
    assert np.all(np.isfinite(np.asarray(out)))
    assert float(jnp.abs(out[0] - out[3]).max()) > 1e-3


def test_padding_views_change_nothing(lifter):
    _, params, apply, tokens, views = lifter
    clean = apply(params, tokens, views)
    dirty = apply(params, *with_garbage_padding(tokens, views))
    np.testing.assert_allclose(np.asarray(dirty), np.asarray(clean), atol=1e-5)


def test_invariant_to_view_order(lifter):
    _, params, apply, tokens, views = lifter
    clean = apply(params, tokens, views)
    out = apply(params, *permute_views(tokens, views, np.array([2, 0, 3, 1])))
    np.testing.assert_allclose(np.asarray(out), np.asarray(clean), atol=1e-5)


@pytest.mark.parametrize("missing", [("viewmats", "Ks"), ("params",)])
def test_missing_cameras_or_params_raise(lifter, missing):
    module, params, _, tokens, views = lifter
    with pytest.raises(ValueError, match="symmetric") as err:
        module.apply(params, tokens, views._replace(**{m: None for m in missing}))
    for m in missing:
        assert m in str(err.value)


def test_even_window_is_rejected(procedural_head):
    with pytest.raises(ValueError, match="odd"):
        sym.symmetric_windows(procedural_head, 8, 4)


def test_gradients_reach_every_parameter(lifter):
    module, params, _, tokens, views = lifter
    all_leaves_get_gradients(module, params, tokens, views)
