"""Closed-form image->UV projection: kernel scatter, bilinear lookup, visibility, multi-view blend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models import uv_projection as uvp
from flexavatar_jax.models.views import InputViews
from flexavatar_jax.render.camera import intrinsics_from_fov, look_at, project_points
from flexavatar_jax.render.mesh import rasterize_mesh

IMAGE = 64
FRONT_EYE = np.array([0.0, 0.0, 0.6], np.float32)


def _camera(eye):
    return look_at(jnp.asarray(eye, jnp.float32), jnp.zeros(3)), intrinsics_from_fov(30.0, IMAGE, IMAGE)


def test_tent_taps_hand_computed():
    # G = 2: texel centres at u, v ∈ {0.25, 0.75}; (u, v) = (0.375, 0.75) lies a quarter texel right of
    # texel (row 0, col 0), so bilinear weights 0.75 on (0,0) and 0.25 on (0,1).
    index, weight = uvp.tent_taps(np.array([[0.375, 0.75], [0.5, 0.5]]), grid=2)
    got = [dict(zip(i.tolist(), w.tolist())) for i, w in zip(index, weight)]
    assert {k: v for k, v in got[0].items() if v > 0} == pytest.approx({0: 0.75, 1: 0.25})
    assert {k: v for k, v in got[1].items() if v > 0} == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25})
    # Near the border the off-grid taps get weight 0 (not clamped onto the edge texel): x = 0.04 - 0.5.
    index, weight = uvp.tent_taps(np.array([[0.01, 0.625]]), grid=4)
    assert weight.sum() == pytest.approx(1.0 - 0.46)


def test_kernel_scatter_hand_computed():
    # Samples A at (0.5, 0.5) (all four texels, 1/4 each), B at (0.375, 0.75) (texel 0: 3/4, texel 1: 1/4),
    # C masked out with non-finite features (must not leak).
    index = jnp.array([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    weight = jnp.array([[0.25, 0.25, 0.25, 0.25], [0.75, 0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    features = jnp.array([[1.0, 0.0], [0.0, 2.0], [jnp.nan, jnp.inf]])
    visible = jnp.array([True, True, False])
    uv, weight_sum = uvp.kernel_scatter(features, visible, index, weight, grid=2, eps=1e-6)
    # texel 0: (0.25·A + 0.75·B) / 1.0; texel 1: (0.25·A + 0.25·B) / 0.5; texels 2, 3: A.
    expected = np.array([[[0.25, 1.5], [0.5, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    den = np.array([[1.0, 0.5], [0.25, 0.25]])
    np.testing.assert_allclose(np.asarray(weight_sum), den, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(uv), expected * den[..., None] / (den[..., None] + 1e-6), rtol=1e-6)


def test_blend_views_hand_computed():
    # View 0: U = 1, c = 1; view 1: U = 5, c = 3 -> (1 + 15) / 4 = 4. View 2 is padding with NaN content.
    uv = jnp.array([1.0, 5.0, jnp.nan]).reshape(1, 3, 1, 1, 1) * jnp.ones((1, 3, 2, 2, 1))
    coverage = jnp.array([1.0, 3.0, jnp.nan]).reshape(1, 3, 1, 1) * jnp.ones((1, 3, 2, 2))
    out, total = uvp.blend_views(uv, coverage, jnp.array([[True, True, False]]), eps=0.0)
    np.testing.assert_allclose(np.asarray(out), 4.0)
    np.testing.assert_allclose(np.asarray(total), 4.0)


def test_bilinear_sample_matches_scipy_reference():
    rng = np.random.default_rng(0)
    hp, wp, d, height, width = 3, 4, 5, 30, 40  # patch size 10 px
    fmap = rng.standard_normal((hp, wp, d)).astype(np.float32)
    pixels = np.concatenate([rng.uniform(0, [width, height], (50, 2)), [[15.0, 5.0], [0.0, 0.0], [39.9, 29.9]]])
    got = np.asarray(uvp.bilinear_sample(jnp.asarray(fmap), jnp.asarray(pixels, jnp.float32), (height, width)))
    # Token (r, c) sits at pixel ((c + 0.5)·10, (r + 0.5)·10): map_coordinates on (y/10 - 0.5, x/10 - 0.5),
    # border tokens repeated outside the outermost centres.
    coords = np.stack([pixels[:, 1] / 10 - 0.5, pixels[:, 0] / 10 - 0.5])
    ref = np.stack([scipy.ndimage.map_coordinates(fmap[..., k], coords, order=1, mode="nearest") for k in range(d)], -1)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(got[50], fmap[0, 1], atol=1e-6)  # exactly on the centre of token (0, 1)


def test_zbuffer_hides_the_farther_sample_on_a_ray():
    viewmat, K = _camera(FRONT_EYE)
    towards_camera = np.array([0.0, 0.0, 1.0], np.float32)
    # Two points on the optical axis (same pixel), 5 cm apart, both facing the camera; one off to the side;
    # one facing away; one behind the camera.
    points = jnp.array([[0, 0, 0.10], [0, 0, 0.05], [0.05, 0.05, 0.0], [0.02, -0.03, 0.0], [0, 0, 1.0]])
    normals = jnp.array([towards_camera, towards_camera, towards_camera, -towards_camera, towards_camera])
    _, visible = uvp.sample_visibility(points, normals, viewmat, K, (IMAGE, IMAGE), (16, 16))
    assert np.asarray(visible).tolist() == [True, False, True, False, False]
    # Without the occluder the far point is visible: it was the z-buffer, not another test.
    _, visible = uvp.sample_visibility(points[1:], normals[1:], viewmat, K, (IMAGE, IMAGE), (16, 16))
    assert bool(visible[0])


@pytest.fixture(scope="module")
def template_samples(procedural_head):
    table = uvp.splat_table(procedural_head, 16, oversample=2)
    points, face_normals, _ = uvp.surface_samples(procedural_head, table, procedural_head.v_template)
    return table, points, face_normals


def test_front_camera_sees_the_face_not_the_back_of_the_head(procedural_head, template_samples):
    table, points, normals = template_samples
    viewmat, K = _camera(FRONT_EYE)
    _, visible = uvp.sample_visibility(points, normals, viewmat, K, (IMAGE, IMAGE), (8, 8))
    visible = np.asarray(visible)
    p = np.asarray(points)
    face = procedural_head.face_mask("face_skin")[table.face] & (p[:, 2] > 0.06)
    back = p[:, 2] < -0.03
    assert face.sum() > 20 and back.sum() > 20
    assert visible[face].mean() > 0.9
    assert not visible[back].any()


def test_visibility_agrees_with_the_exact_mesh_zbuffer(procedural_head, template_samples):
    # Independent reference: the exact triangle rasterizer (numpy), front-facing and within 1 cm of the
    # depth of the pixel the sample lands in.
    table, points, normals = template_samples
    v = np.asarray(procedural_head.v_template)
    for eye in ([0.0, 0.0, 0.6], [0.6, 0.0, 0.0], [0.4, 0.2, -0.4]):
        viewmat, K = _camera(eye)
        _, visible = uvp.sample_visibility(points, normals, viewmat, K, (IMAGE, IMAGE), (16, 16))
        raster = rasterize_mesh(v, np.asarray(procedural_head.faces), np.asarray(viewmat), np.asarray(K), IMAGE, IMAGE)
        pix, z = map(np.asarray, project_points(points, viewmat, K))
        ix, iy = np.clip(pix.astype(int), 0, IMAGE - 1).T
        centre = -np.asarray(viewmat)[:3, :3].T @ np.asarray(viewmat)[:3, 3]
        facing = np.sum(np.asarray(normals) * (centre - np.asarray(points)), -1) > 0
        reference = facing & (z <= raster.depth[iy, ix] + 0.01)
        assert (np.asarray(visible) == reference).mean() > 0.85, eye


def _views(head, eyes, b=1):
    v = len(eyes)
    viewmats = look_at(jnp.asarray(eyes, jnp.float32), jnp.zeros((v, 3)))
    K = intrinsics_from_fov(30.0, IMAGE, IMAGE)
    return InputViews(images=jnp.zeros((b, v, IMAGE, IMAGE, 3)), mask=jnp.ones((b, v), bool),
                      viewmats=jnp.broadcast_to(viewmats, (b, v, 4, 4)), Ks=jnp.broadcast_to(K, (b, v, 3, 3)),
                      params=head.zero_params((b, v)))


def test_lift_of_a_constant_feature_map_is_constant_where_seen(procedural_head):
    core_table = uvp.splat_table(procedural_head, 8)
    shell_table = uvp.splat_table(procedural_head, 4)
    views = _views(procedural_head, [[0.0, 0.0, 0.6], [0.0, -0.05, 0.6]])
    const = jnp.array([1.0, -2.0, 3.0])
    tokens = jnp.broadcast_to(const, (1, 2, 8, 8, 3))
    lifted = jax.jit(lambda t, vw: uvp.lift_views(procedural_head, t, vw, core_table, shell_table))(tokens, views)
    assert lifted.core.shape == (1, 8, 8, 3) and lifted.shell.shape == (1, 4, 4, 3)
    seen = np.asarray(lifted.core_coverage[0]) > 0.05
    assert 5 < seen.sum() < 60  # some of the head, not all of it
    np.testing.assert_allclose(np.asarray(lifted.core[0])[seen], np.broadcast_to(const, (seen.sum(), 3)), rtol=1e-3)
    assert np.all(np.asarray(lifted.core[0])[np.asarray(lifted.core_coverage[0]) == 0] == 0)
    assert (np.asarray(lifted.shell_coverage) > 0.05).sum() > 2
    # Scalp texels on the back of the head are unseen by two frontal views (ear texels are not tested:
    # the inside of the ear shell can face a frontal camera at grazing angles).
    back = np.asarray(uvt.uv_position_map(procedural_head, procedural_head.v_template, 8))[..., 2] < -0.03
    back &= uvt.uv_region_mask(procedural_head, 8, "scalp")
    assert back.sum() > 5 and np.all(np.asarray(lifted.core_coverage[0])[back] == 0)


def test_shell_points_sit_off_the_surface(procedural_head):
    table = uvp.splat_table(procedural_head, 8)
    points, _, smooth = uvp.surface_samples(procedural_head, table, procedural_head.v_template)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(smooth), axis=-1), 1.0, atol=1e-5)
    # Outward: on the front half (z > 5 cm) the normals point towards +z on average.
    front = np.asarray(points)[:, 2] > 0.05
    assert np.asarray(smooth)[front, 2].mean() > 0.5
