"""Loss terms: closed forms, invariances, finite-difference gradients, error messages."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flexavatar_jax.train import losses


def test_l1_masked_hand_computed():
    pred = jnp.zeros((1, 2, 2, 3))
    target = jnp.asarray(np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3))
    # Unmasked: mean of 0..11.
    assert float(losses.l1(pred, target)) == pytest.approx(5.5)
    mask = jnp.asarray([[[[1.0], [1.0]], [[0.0], [0.0]]]])  # pixels (0,0) and (0,1)
    assert float(losses.l1(pred, target, mask)) == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)
    # A [H, W, 1] mask broadcasts over the batch too; soft weights weight the mean.
    assert float(losses.l1(pred, target, mask[0])) == pytest.approx(2.5)
    soft = jnp.asarray([[[1.0], [0.0]], [[0.0], [0.5]]])  # (0,0) full, (1,1) half weight
    assert float(losses.l1(pred, target, soft)) == pytest.approx((3 + 0.5 * 30) / 4.5)
    # An empty mask gives 0, not NaN.
    assert float(losses.l1(pred, target, jnp.zeros((2, 2, 1)))) == 0.0
    with pytest.raises(ValueError, match="target shape"):
        losses.l1(pred, target[..., :2])


def test_alpha_loss_and_dssim_closed_forms():
    a = jnp.full((2, 4, 4, 1), 0.25)
    assert float(losses.alpha_loss(a, jnp.ones_like(a))) == pytest.approx(0.75)
    x = jax.random.uniform(jax.random.key(0), (2, 12, 13, 3))
    assert float(losses.dssim(x, x)) == pytest.approx(0.0, abs=1e-6)
    # Anti-correlated structure: SSIM < 0 so DSSIM > 1/2, never above 1.
    value = float(losses.dssim(x, 1.0 - x))
    assert 0.5 < value <= 1.0


def _ramp_positions(h, w, slope_col, slope_row, offset=(0.0, 0.0, 0.0)):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return cols[..., None] * np.asarray(slope_col) + rows[..., None] * np.asarray(slope_row) + np.asarray(offset)


def _render(positions, alpha):
    """What the splatter produces: I_3d = α·P + (1 − α)·1 (background 1)."""
    return alpha * positions + (1.0 - alpha)


def test_normalisation_recovers_surface_position():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(2, 5, 6, 3))
    alpha = rng.uniform(0.05, 1.0, size=(2, 5, 6, 1))
    image = jnp.asarray(_render(positions, alpha), jnp.float32)
    got = losses.normalized_position_image(image, jnp.asarray(alpha, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), positions, atol=2e-5)


def test_tv3d_linear_ramp_closed_form_and_constant_invariance():
    slope_col, slope_row = (0.01, -0.02, 0.005), (0.003, 0.0, -0.04)
    positions = _ramp_positions(7, 9, slope_col, slope_row)
    alpha = np.full((7, 9, 1), 0.8)
    alpha[:, :2] = 0.1  # background strip: excluded, would otherwise add a large jump
    alpha[5:, :] = 0.0
    image = jnp.asarray(_render(positions, alpha), jnp.float32)
    got = float(losses.tv3d_loss(image, jnp.asarray(alpha, jnp.float32)))
    want = np.abs(slope_col).sum() + np.abs(slope_row).sum()
    assert got == pytest.approx(want, rel=1e-4)
    shifted = _render(positions + np.array([0.3, -1.2, 2.0]), alpha)
    got_shifted = float(losses.tv3d_loss(jnp.asarray(shifted, jnp.float32), jnp.asarray(alpha, jnp.float32)))
    assert got_shifted == pytest.approx(got, rel=1e-4)
    # No foreground pair at all: 0 with a finite gradient.
    empty = jnp.zeros((7, 9, 1))
    value, grad = jax.value_and_grad(losses.tv3d_loss)(image, empty)
    assert float(value) == 0.0 and np.all(np.isfinite(np.asarray(grad)))


def _central_difference(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (float(fn(jnp.asarray(x + step))) - float(fn(jnp.asarray(x - step)))) / (2 * eps)
    return grad


def test_tv3d_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        positions = rng.normal(size=(4, 4, 3))
        alpha = rng.uniform(0.6, 0.95, size=(4, 4, 1))
        alpha[0, 0] = 0.2  # one background pixel to exercise the exclusion
        image = _render(positions, alpha)
        fn = jax.jit(lambda img, a: losses.tv3d_loss(img, a))
        g_image, g_alpha = jax.grad(fn, argnums=(0, 1))(jnp.asarray(image), jnp.asarray(alpha))
        np.testing.assert_allclose(np.asarray(g_image), _central_difference(lambda v: fn(v, alpha), image), atol=1e-7)
        np.testing.assert_allclose(np.asarray(g_alpha), _central_difference(lambda v: fn(image, v), alpha), atol=1e-7)
        assert np.asarray(g_image).dtype == np.float64


def test_dssim_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x = rng.uniform(size=(11, 12, 1))
        y = rng.uniform(size=(11, 12, 1))
        fn = jax.jit(lambda a: losses.dssim(a, jnp.asarray(y)))
        grad = np.asarray(jax.grad(fn)(jnp.asarray(x)))
        np.testing.assert_allclose(grad, _central_difference(fn, x), atol=1e-8)


def test_scheduled_weight_before_within_after_ramp():
    term = ml_collections.ConfigDict(dict(weight=2.0, start=100, ramp=50))
    steps = jnp.asarray([0, 99, 100, 125, 150, 1000])
    values = jax.jit(jax.vmap(lambda s: losses.scheduled_weight(term, s)))(steps)
    np.testing.assert_allclose(np.asarray(values), [0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    immediate = dict(weight=0.5, start=10, ramp=0)
    assert float(losses.scheduled_weight(immediate, 9)) == 0.0
    assert float(losses.scheduled_weight(immediate, 10)) == 0.5
    assert float(losses.scheduled_weight(dict(weight=0.3), 0)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="weight"):
        losses.scheduled_weight(dict(start=3), 0)
    with pytest.raises(ValueError, match="ramp"):
        losses.scheduled_weight(dict(weight=1.0, ramp=-1), 0)


def test_downsample_box_average():
    constant = jnp.full((2, 8, 12, 3), 0.37)
    small = losses.downsample(constant, 4)
    assert small.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(np.asarray(small), 0.37, rtol=1e-6)
    ramp = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(np.asarray(losses.downsample(ramp, 2))[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="divisible"):
        losses.downsample(jnp.zeros((10, 12, 3)), 4)
    with pytest.raises(ValueError, match="positive integer"):
        losses.downsample(jnp.zeros((8, 8, 3)), 0)


def test_mouth_mask_box_hand_computed():
    points = jnp.asarray([[3.2, 2.0], [5.9, 4.4], [100.0, 100.0], [4.0, 3.0]])
    valid = jnp.asarray([True, True, False, True])  # the far-away point is not a mouth vertex
    mask = np.asarray(losses.mouth_mask(points, valid, (8, 10), margin=1.0))
    assert mask.shape == (8, 10, 1)
    # x in [2.2, 6.9] -> column centres 2.5..6.5 = cols 2..6; y in [1.0, 5.4] -> rows 1..4.
    want = np.zeros((8, 10, 1))
    want[1:5, 2:7] = 1.0
    np.testing.assert_array_equal(mask, want)
    batched = losses.mouth_mask(jnp.stack([points, points]), jnp.stack([valid, jnp.zeros(4, bool)]), (8, 10), 1.0)
    assert batched.shape == (2, 8, 10, 1)
    np.testing.assert_array_equal(np.asarray(batched[0]), want)
    assert float(batched[1].sum()) == 0.0  # no visible mouth: empty mask
    # Selection only: no gradient reaches the projected points.
    grad = jax.grad(lambda p: losses.mouth_mask(p, valid, (8, 10), 1.0).sum())(points)
    assert float(jnp.abs(grad).sum()) == 0.0
    with pytest.raises(ValueError, match="valid shape"):
        losses.mouth_mask(points, valid[:3], (8, 10))
    with pytest.raises(ValueError, match="V, 2"):
        losses.mouth_mask(points[:, :1], valid, (8, 10))


def test_mouth_loss_masked_l1_plus_perceptual():
    pred = jnp.zeros((1, 4, 4, 3))
    target = jnp.ones((1, 4, 4, 3)).at[:, :2].set(0.5)
    mask = jnp.zeros((1, 4, 4, 1)).at[:, :2, :2].set(1.0)
    assert float(losses.mouth_loss(pred, target, mask)) == pytest.approx(0.5)
    seen = {}

    def fake_perceptual(a, b):
        seen["max_outside"] = float(jnp.abs(b * (1 - mask)).max())  # masked images are 0 outside
        return jnp.full(a.shape[:-3], 3.0)

    value = float(losses.mouth_loss(pred, target, mask, fake_perceptual, perceptual_weight=0.1))
    assert value == pytest.approx(0.5 + 0.3)
    assert seen["max_outside"] == 0.0


def test_mouth_vertex_mask_uses_head_regions(procedural_head):
    mask = losses.mouth_vertex_mask(procedural_head)
    assert mask.shape == (procedural_head.num_vertices,) and mask.dtype == bool
    np.testing.assert_array_equal(mask, procedural_head.vertex_mask("lips", "mouth_interior", "teeth", "tongue"))
    assert 0 < mask.sum() < mask.size
    assert not np.any(mask & procedural_head.vertex_mask("scalp"))


def test_regularizers_closed_form():
    offsets = jnp.asarray([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(losses.offset_regularizer(offsets)) == pytest.approx(12.5)  # (25 + 0) / 2
    values, initial = jnp.asarray([1.0, 2.0, 4.0]), jnp.asarray([1.0, 0.0, 1.0])
    assert float(losses.deviation_regularizer(values, initial)) == pytest.approx(13 / 3)
    grad = jax.grad(losses.deviation_regularizer, argnums=(0, 1))(values, initial)
    np.testing.assert_allclose(np.asarray(grad[0]), 2 * (values - initial) / 3)
    assert float(jnp.abs(grad[1]).sum()) == 0.0  # the anchor does not move
    with pytest.raises(ValueError, match="differ"):
        losses.deviation_regularizer(values, initial[:2])


def test_tv3d_rejects_bad_shapes():
    with pytest.raises(ValueError, match="position_image"):
        losses.tv3d_loss(jnp.zeros((4, 4, 4)), jnp.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="alpha shape"):
        losses.tv3d_loss(jnp.zeros((4, 4, 3)), jnp.zeros((4, 5, 1)))


def test_annotations_are_checked_by_jaxtyping():
    jaxtyping = pytest.importorskip("jaxtyping")
    beartype = pytest.importorskip("beartype")
    checked_tv = jaxtyping.jaxtyped(typechecker=beartype.beartype)(losses.tv3d_loss)
    checked_l1 = jaxtyping.jaxtyped(typechecker=beartype.beartype)(losses.l1)
    checked_down = jaxtyping.jaxtyped(typechecker=beartype.beartype)(losses.downsample)
    assert checked_tv(jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 1))).shape == ()
    assert checked_l1(jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3)), jnp.ones((4, 4, 1))).shape == ()
    assert checked_down(jnp.zeros((2, 4, 4, 3)), 2).shape == (2, 2, 2, 3)
    with pytest.raises(Exception):
        checked_tv(jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 5, 1)))
