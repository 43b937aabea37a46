"""Tests for the EWA projection stage (`flexavatar_jax.render.projection`).

The float64 reference projection lives in test_rasterize.py (written from the gsplat formulas,
independently of the module under test).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flexavatar_jax.render import camera
from flexavatar_jax.render.projection import (
    ALPHA_THRESHOLD,
    MAX_EXTEND,
    covariance_3d,
    project_gaussians,
    quat_to_rotmat,
)
from tests.render.test_rasterize import reference_project

WIDTH, HEIGHT = 40, 32


def test_quaternions_match_scipy_and_are_normalised():
    quats = np.random.default_rng(0).normal(size=(64, 4)) * 3.0
    rot = np.asarray(quat_to_rotmat(jnp.asarray(quats, jnp.float32)))
    np.testing.assert_allclose(rot, Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix(), atol=2e-6)
    np.testing.assert_allclose(rot @ np.swapaxes(rot, 1, 2), np.broadcast_to(np.eye(3), rot.shape), atol=2e-6)
    # Zero quaternions become the identity with a finite (zero) gradient.
    grad = jax.grad(lambda q: jnp.sum(quat_to_rotmat(q)))(jnp.zeros((2, 4)))
    np.testing.assert_array_equal(quat_to_rotmat(jnp.zeros((1, 4)))[0], np.eye(3))
    assert np.all(np.isfinite(grad))


def test_covariance_is_rotated_squared_scales():
    rng = np.random.default_rng(1)
    quats, scales = rng.normal(size=(16, 4)), rng.uniform(0.01, 2.0, (16, 3))
    rot = Rotation.from_quat(quats[:, [1, 2, 3, 0]]).as_matrix()
    expected = rot @ (scales[:, :, None] ** 2 * np.swapaxes(rot, 1, 2))
    got = covariance_3d(jnp.asarray(quats, jnp.float32), jnp.asarray(scales, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _camera(eye=(0.3, -0.2, 2.5), fov=50.0):
    viewmats = camera.look_at(np.array([eye], np.float32), np.zeros((1, 3), np.float32))
    Ks = camera.intrinsics_from_fov(fov, WIDTH, HEIGHT)[None]
    return np.asarray(viewmats), np.asarray(Ks)


def _project(means, quats, scales, opacities, viewmats, Ks, **kw):
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    arrays = (f32(x) for x in (means, quats, scales, opacities, viewmats, Ks))
    return project_gaussians(*arrays, WIDTH, HEIGHT, **kw)


def test_projection_matches_reference_including_frustum_clamp():
    rng = np.random.default_rng(2)
    n = 64
    means = rng.uniform(-0.8, 0.8, (n, 3))
    # Far outside the view laterally (the Jacobian is clamped there) but with a footprint that
    # still reaches into the image.
    means[:8, 0] = np.linspace(-4.0, 4.0, 8)
    scales = rng.uniform(0.02, 0.3, (n, 3))
    scales[:8] = 2.0
    quats, opacities = rng.normal(size=(n, 4)), rng.uniform(0.1, 1.0, n)
    viewmats, Ks = _camera()
    proj = _project(means, quats, scales, opacities, viewmats, Ks)
    ref_mean2d, ref_depth, ref_conic, _ = reference_project(means, quats, scales, viewmats[0], Ks[0], WIDTH, HEIGHT)
    valid = np.asarray(proj.valid[0])
    assert valid[:8].sum() >= 2, "the clamp cases must survive culling to be tested"
    np.testing.assert_allclose(proj.means2d[0][valid], ref_mean2d[valid], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(proj.depths[0][valid], ref_depth[valid], rtol=1e-6)
    ref_abc = np.stack([ref_conic[:, 0, 0], ref_conic[:, 0, 1], ref_conic[:, 1, 1]], -1)
    np.testing.assert_allclose(proj.conics[0][valid], ref_abc[valid], rtol=2e-3, atol=1e-7)
    # Radii: opacity-aware 3.33σ box of the blurred 2D covariance, per axis.
    cov2d = np.linalg.inv(ref_conic)
    extend = np.minimum(MAX_EXTEND, np.sqrt(2 * np.log(np.maximum(opacities * 255.0, 1.0))))
    ref_radii = np.ceil(extend[:, None] * np.sqrt(np.stack([cov2d[:, 0, 0], cov2d[:, 1, 1]], -1)))
    mismatch = np.abs(np.asarray(proj.radii[0])[valid] - ref_radii[valid])
    assert mismatch.max() <= 1 and np.mean(mismatch == 0) > 0.95  # ceil() may flip on rounding


def test_culling_rules():
    viewmats, Ks = _camera(eye=(0.0, 0.0, 3.0), fov=40.0)
    rows = {
        "visible": ([0.0, 0.0, 0.0], 0.1, 0.8),
        "behind": ([0.0, 0.0, 4.0], 0.1, 0.8),
        "inside near plane": ([0.0, 0.0, 2.995], 0.1, 0.8),
        "beyond far plane": ([0.0, 0.0, -200.0], 0.1, 0.8),
        "too transparent": ([0.0, 0.0, 0.0], 0.1, 0.5 / 255.0),
        "off screen": ([30.0, 0.0, 0.0], 0.1, 0.8),
        "box reaches in": ([1.6, 0.0, 0.0], 0.4, 0.8),
        "nan mean": ([np.nan, 0.0, 0.0], 0.1, 0.8),
        "inf scale": ([0.0, 0.0, 0.0], np.inf, 0.8),
        "overflowing scale": ([0.0, 0.0, 0.0], 1e30, 0.8),
    }
    means = np.array([r[0] for r in rows.values()])
    scales = np.array([[r[1]] * 3 for r in rows.values()])
    opacities = np.array([r[2] for r in rows.values()])
    quats = np.tile([1.0, 0.0, 0.0, 0.0], (len(rows), 1))
    proj = _project(means, quats, scales, opacities, viewmats, Ks, far_plane=100.0)
    got = dict(zip(rows, np.asarray(proj.valid[0])))
    assert got == {name: name in ("visible", "box reaches in") for name in rows}
    radii, tmin, tmax = (np.asarray(x[0]) for x in (proj.radii, proj.tile_min, proj.tile_max))
    culled = ~np.asarray(proj.valid[0])
    assert np.all(radii[culled] == 0) and np.all(tmin[culled] == tmax[culled])
    for x in (proj.means2d, proj.depths, proj.conics):
        assert np.all(np.isfinite(np.asarray(x)))
    # Tiles of the visible splat cover its box: [floor((m-r)/16), ceil((m+r)/16)) clipped.
    (mx, my), (rx, ry) = np.asarray(proj.means2d[0, 0]), radii[0]
    assert tuple(tmin[0]) == (max(int(np.floor((mx - rx) / 16)), 0), max(int(np.floor((my - ry) / 16)), 0))
    assert tuple(tmax[0]) == (min(int(np.ceil((mx + rx) / 16)), 3), min(int(np.ceil((my + ry) / 16)), 2))


def test_projection_gradients_are_finite_for_degenerate_gaussians():
    viewmats, Ks = _camera()
    means = np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.3, 2.49]])
    scales = np.array([[0.1, 0.1, 0.1], [0.1, 0.1, 0.1], [1e30, 1.0, 1.0], [0.0, 0.0, 0.0]])
    quats = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [np.inf, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    opacities = np.array([0.5, 0.5, 0.5, 0.5])

    def loss(means, quats, scales, viewmats, Ks):
        proj = project_gaussians(means, quats, scales, jnp.asarray(opacities, jnp.float32), viewmats, Ks, WIDTH, HEIGHT)
        return jnp.sum(proj.means2d) + jnp.sum(proj.conics) + jnp.sum(proj.depths)

    args = [jnp.asarray(x, jnp.float32) for x in (means, quats, scales, viewmats, Ks)]
    for grad in jax.jit(jax.grad(loss, argnums=tuple(range(5))))(*args):
        assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("opacity", [1.0, 0.05, 2.0 / 255.0])
def test_box_is_exactly_where_alpha_reaches_the_threshold(opacity):
    """Along each axis, α at the box edge (before ceil) is 1/255 for low opacities."""
    viewmats, Ks = _camera(eye=(0.0, 0.0, 3.0))
    identity = np.array([[1.0, 0.0, 0.0, 0.0]])
    proj = _project(np.zeros((1, 3)), identity, np.full((1, 3), 0.2), np.array([opacity]), viewmats, Ks)
    a, b, c = np.asarray(proj.conics[0, 0], np.float64)
    var_x = c / (a * c - b**2)  # Σ2d_xx
    extend = min(MAX_EXTEND, np.sqrt(2 * np.log(opacity / ALPHA_THRESHOLD)))
    edge = extend * np.sqrt(var_x)
    assert int(proj.radii[0, 0, 0]) in (np.ceil(edge - 1e-4), np.ceil(edge + 1e-4))  # float32 vs float64 ceil
    if extend < MAX_EXTEND:
        # A point at distance extend·σ_x along x from the mean has α = 1/255 exactly.
        # min over dy of σ(dx = edge, dy) = edge² (a - b²/c) / 2 = edge² / (2 Σ2d_xx)
        sigma_at_edge = 0.5 * edge**2 * (a - b**2 / c)
        np.testing.assert_allclose(opacity * np.exp(-sigma_at_edge), ALPHA_THRESHOLD, rtol=1e-4)


def _projection_loss(weights):
    def loss(means, quats, scales, viewmats, Ks):
        proj = project_gaussians(means, quats, scales, jnp.full(means.shape[:1], 0.7, means.dtype), viewmats, Ks,
                                 WIDTH, HEIGHT)
        return (jnp.sum(proj.means2d * weights[0]) + jnp.sum(proj.conics * weights[1]) * 100.0
                + jnp.sum(proj.depths * weights[2][..., 0]))
    return loss


def test_projection_gradients_match_float64_finite_differences():
    """Every input, including Gaussians far outside the view (clamped Jacobian) and the camera."""
    rng = np.random.default_rng(5)
    n = 24
    means = rng.uniform(-0.6, 0.6, (n, 3))
    means[:4, 0] = [-4.0, -2.5, 2.5, 4.0]  # clamped: the Jacobian sees the frustum edge
    scales = rng.uniform(0.05, 0.3, (n, 3))
    scales[:4] = 1.5
    quats = rng.normal(size=(n, 4))
    viewmats, Ks = _camera()
    weights = [rng.normal(size=(1, n, 2)), rng.normal(size=(1, n, 3)), rng.normal(size=(1, n, 1))]
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (means, quats, scales, viewmats, Ks)]
        loss = jax.jit(_projection_loss(weights))
        grads = jax.grad(loss, argnums=tuple(range(5)))(*args)
        valid = np.asarray(project_gaussians(*args[:3], jnp.full((n,), 0.7), *args[3:], WIDTH, HEIGHT).valid[0])
        assert valid[:4].sum() >= 2 and valid.sum() >= n // 2
        for i, name in enumerate(("means", "quats", "scales", "viewmats", "Ks")):
            direction = rng.normal(size=args[i].shape)
            if name == "viewmats":
                direction[:, 3] = 0.0
            if name == "Ks":
                direction = direction * np.array([[1, 0, 1], [0, 1, 1], [0, 0, 0]])
            h = 1e-6
            plus = [a + h * direction if j == i else a for j, a in enumerate(args)]
            minus = [a - h * direction if j == i else a for j, a in enumerate(args)]
            fd = float(loss(*plus) - loss(*minus)) / (2 * h)
            ours = float(np.sum(np.asarray(grads[i]) * direction))
            assert abs(ours - fd) <= 1e-6 * max(abs(fd), 1.0), f"{name}: {ours} vs finite difference {fd}"


def test_culled_gaussians_get_zero_gradient_and_leave_the_others_untouched():
    """A NaN, two overflowing and a behind-the-camera Gaussian next to normal ones: the normal
    ones' gradients are those of the scene without the degenerate ones (to rounding), the
    degenerate ones' are exactly zero."""
    rng = np.random.default_rng(6)
    good = {"means": rng.uniform(-0.4, 0.4, (6, 3)), "quats": rng.normal(size=(6, 4)),
            "scales": rng.uniform(0.05, 0.2, (6, 3))}
    bad = {"means": np.array([[np.nan, 0, 0], [0.0, 0, 0], [0.0, 0, 3.5], [0.0, 0, 0]]),
           "quats": np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [1.0, 0, 0, 0], [1e30, 1e30, 0, 0]]),
           "scales": np.array([[0.1] * 3, [1e30] * 3, [0.1] * 3, [3e19, 3e19, 3e19]])}
    viewmats, Ks = _camera(eye=(0.0, 0.0, 2.5))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    weights = [rng.normal(size=(1, 10, 2)), rng.normal(size=(1, 10, 3)), rng.normal(size=(1, 10, 1))]
    both = [f32(np.concatenate([good[k], bad[k]])) for k in ("means", "quats", "scales")]
    loss = _projection_loss(weights)
    g_both = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*both, f32(viewmats), f32(Ks))
    valid = np.asarray(project_gaussians(*both, jnp.full((10,), 0.7), f32(viewmats), f32(Ks), WIDTH, HEIGHT).valid[0])
    assert valid[:6].all() and not valid[6:].any()
    loss_good = _projection_loss([w[:, :6] for w in weights])
    g_good = jax.jit(jax.grad(loss_good, argnums=(0, 1, 2)))(*[x[:6] for x in both], f32(viewmats), f32(Ks))
    for gb, gg in zip(g_both, g_good):
        np.testing.assert_array_equal(np.asarray(gb)[6:], 0.0)
        np.testing.assert_allclose(np.asarray(gb)[:6], np.asarray(gg), rtol=1e-6, atol=1e-9)
