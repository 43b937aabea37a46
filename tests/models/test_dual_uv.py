"""Dual-UV lifter: shapes for 1-4 views, padding and view-order invariance, input checks, gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.models.dual_uv import DualUVLifter
from flexavatar_jax.models.views import MAX_INPUTS, InputViews
from flexavatar_jax.render.camera import intrinsics_from_fov, look_at

GRID, WIDTH, IMAGE, PATCHES, TOKEN_DIM = 8, 16, 32, 4, 8
EYES = np.array([[0.0, 0.0, 0.6], [0.45, 0.05, 0.4], [-0.45, 0.05, 0.4], [0.1, 0.1, -0.6]], np.float32)


def lifter_batch(head, seed=0):
    """4 rows × 4 view slots; row i has i + 1 real views (slots 0..i), the rest is padding."""
    rng = np.random.default_rng(seed)
    b = v = MAX_INPUTS
    mask = np.arange(v)[None, :] <= np.arange(b)[:, None]
    viewmats = np.broadcast_to(np.asarray(look_at(jnp.asarray(EYES), jnp.zeros((v, 3)))), (b, v, 4, 4))
    Ks = np.broadcast_to(np.asarray(intrinsics_from_fov(30.0, IMAGE, IMAGE)), (b, v, 3, 3))
    params = head.zero_params((b, v))
    params = params.replace(expression=jnp.asarray(rng.normal(0, 0.5, params.expression.shape), jnp.float32),
                            jaw_pose=jnp.asarray(rng.normal(0, 0.05, params.jaw_pose.shape), jnp.float32))
    tokens = jnp.asarray(rng.standard_normal((b, v, PATCHES, PATCHES, TOKEN_DIM)), jnp.float32)
    views = InputViews(images=jnp.zeros((b, v, IMAGE, IMAGE, 3)), mask=jnp.asarray(mask),
                       viewmats=jnp.asarray(viewmats), Ks=jnp.asarray(Ks), params=params)
    return tokens, views


def with_garbage_padding(tokens, views, seed=1):
    """Replace everything in the padding slots by garbage (NaN tokens, random cameras and params)."""
    rng = np.random.default_rng(seed)
    pad = ~np.asarray(views.mask)

    def junk(a, scale):
        noise = jnp.asarray(rng.normal(0, scale, a.shape), a.dtype)
        return jnp.where(pad.reshape(*pad.shape, *([1] * (a.ndim - 2))), noise, a)

    tokens = jnp.where(pad[:, :, None, None, None], jnp.nan, tokens)
    return tokens, views._replace(viewmats=junk(views.viewmats, 3.0), Ks=junk(views.Ks, 50.0),
                                  params=jax.tree.map(lambda a: junk(a, 5.0), views.params))


def permute_views(tokens, views, perm):
    take = lambda a: a[:, perm]  # noqa: E731
    return take(tokens), InputViews(images=take(views.images), mask=take(views.mask), viewmats=take(views.viewmats),
                                    Ks=take(views.Ks), params=jax.tree.map(take, views.params))


def all_leaves_get_gradients(module, params, tokens, views):
    def loss(p):
        out = module.apply(p, tokens, views, train=True)
        return jnp.sum(out * jnp.linspace(-1.0, 1.0, out.size).reshape(out.shape))

    grads = jax.jit(jax.grad(loss))(params)
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(grads))[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    assert not dead, f"no gradient reaches {dead}"
    assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


@pytest.fixture(scope="module")
def lifter(procedural_head):
    module = DualUVLifter(head=procedural_head, grid=GRID, width=WIDTH, num_heads=2, depth=1)
    tokens, views = lifter_batch(procedural_head)
    params = jax.jit(module.init)(jax.random.key(0), tokens, views)
    apply = jax.jit(lambda p, t, v: module.apply(p, t, v))
    return module, params, apply, tokens, views


def test_output_shape_for_1_to_4_views(lifter):
    _, params, apply, tokens, views = lifter
    out = apply(params, tokens, views)  # rows have 1, 2, 3, 4 real views
    assert out.shape == (MAX_INPUTS, GRID, GRID, WIDTH)
    assert np.all(np.isfinite(np.asarray(out)))
    # Rows with different views differ; a single unpadded view works too.
    assert float(jnp.abs(out[0] - out[3]).max()) > 1e-3
    one = jax.tree.map(lambda a: a[:1, :1], (tokens, views))
    assert apply(params, *one).shape == (1, GRID, GRID, WIDTH)


def test_padding_views_change_nothing(lifter):
    _, params, apply, tokens, views = lifter
    clean = apply(params, tokens, views)
    dirty = apply(params, *with_garbage_padding(tokens, views))
    np.testing.assert_allclose(np.asarray(dirty), np.asarray(clean), atol=1e-5)


def test_invariant_to_view_order(lifter):
    _, params, apply, tokens, views = lifter
    clean = apply(params, tokens, views)
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        out = apply(params, *permute_views(tokens, views, np.array(perm)))
        np.testing.assert_allclose(np.asarray(out), np.asarray(clean), atol=1e-5)


def test_real_views_matter(lifter):
    _, params, apply, tokens, views = lifter
    clean = apply(params, tokens, views)
    moved = apply(params, tokens.at[:, 0].multiply(-1.0), views)
    assert float(jnp.abs(moved - clean).max()) > 1e-3


@pytest.mark.parametrize("missing", [("viewmats",), ("Ks",), ("params",), ("viewmats", "Ks")])
def test_missing_cameras_or_params_raise(lifter, missing):
    module, params, _, tokens, views = lifter
    with pytest.raises(ValueError, match="dual_uv") as err:
        module.apply(params, tokens, views._replace(**{m: None for m in missing}))
    for m in missing:
        assert m in str(err.value)


def test_gradients_reach_every_parameter(lifter):
    module, params, _, tokens, views = lifter
    all_leaves_get_gradients(module, params, tokens, views)
