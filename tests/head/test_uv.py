"""UV toolkit against independent references (a synthetic square model and direct geometry)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.head import HeadModel, uv
from flexavatar_jax.head.model import FLAME_PARENTS


def _square_model():
    """Two triangles covering UV [0,1]²; 3D = an affine image of UV."""
    uvc = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    a = np.array([[0.3, 0.1], [0.0, 0.5], [0.2, -0.1]], np.float32)
    verts = uvc @ a.T + np.array([0.1, 0.2, 0.3], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    v, f = len(verts), len(faces)
    return HeadModel(
        v_template=verts, faces=faces, shapedirs=np.zeros((v, 3, 1), np.float32),
        exprdirs=np.zeros((v, 3, 1), np.float32), posedirs=np.zeros((v, 3, 36), np.float32),
        J_regressor=np.full((5, v), 1.0 / v, np.float32), lbs_weights=np.tile([[1, 0, 0, 0, 0]], (v, 1)).astype(np.float32),
        uv_coords=uvc, faces_uv=faces, vertex_regions=np.ones(v, np.int32), face_regions=np.ones(f, np.int32),
        mirror_vertex=np.array([1, 0, 3, 2], np.int32), mirror_face=np.array([1, 0], np.int32),
        name="square", parents=FLAME_PARENTS,
    ).validate(), a


def test_square_position_map_is_the_affine_map():
    m, a = _square_model()
    k = 16
    pos = np.asarray(uv.uv_position_map(m, m.v_template, k))
    t = uv.texel_table(m, k)
    assert t.valid.all() and t.num_overlapping == 0
    expect = uv.texel_uv(k) @ a.T + np.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(pos, expect, atol=1e-6)
    ratio = np.asarray(uv.relative_scale_map(m, m.v_template, k))
    # The unit UV square maps to the parallelogram spanned by the columns of `a`.
    np.testing.assert_allclose(ratio, np.linalg.norm(np.cross(a[:, 0], a[:, 1])), rtol=1e-5)


def test_every_valid_texel_reconstructs_its_surface_point(procedural_head):
    m = procedural_head
    k = 128
    t = uv.texel_table(m, k)
    pos = np.asarray(uv.uv_position_map(m, m.v_template, k))
    rows, cols = np.nonzero(t.valid)
    pick = np.random.default_rng(0).choice(len(rows), 400, replace=False)
    centres = uv.texel_uv(k)
    v = np.asarray(m.v_template, np.float64)
    uvs = np.asarray(m.uv_coords, np.float64)
    for i in pick:
        r, c = rows[i], cols[i]
        f = t.face[r, c]
        tri_uv = uvs[np.asarray(m.faces_uv)[f]]
        # Independent barycentrics of the texel centre in the face's UV triangle.
        mat = np.array([tri_uv[1] - tri_uv[0], tri_uv[2] - tri_uv[0]]).T
        l1, l2 = np.linalg.solve(mat, centres[r, c] - tri_uv[0])
        b = np.array([1 - l1 - l2, l1, l2])
        assert b.min() > -1e-9
        np.testing.assert_allclose(pos[r, c], b @ v[np.asarray(m.faces)[f]], atol=1e-6)


def test_coverage_and_no_overlaps(procedural_head):
    t = uv.texel_table(procedural_head, 256)
    assert 0.7 < t.coverage < 0.95
    assert t.num_overlapping == 0


def test_mirror_map_is_column_flip_involution_and_mirrors_positions(procedural_head):
    m = procedural_head
    k = 256
    t = uv.texel_table(m, k)
    mm = uv.uv_mirror_map(m, k)
    rows, cols = np.nonzero(t.valid)
    mr, mc = mm[rows, cols, 0], mm[rows, cols, 1]
    assert np.array_equal(mr, rows) and np.array_equal(mc, k - 1 - cols)
    assert t.valid[mr, mc].all()
    assert np.array_equal(mm[mr, mc, 0], rows) and np.array_equal(mm[mr, mc, 1], cols)
    pos = np.asarray(uv.uv_position_map(m, m.v_template, k))
    np.testing.assert_allclose(pos[mr, mc] * [-1, 1, 1], pos[rows, cols], atol=1e-6)
    assert (mm[~t.valid] == -1).all()


def test_position_map_is_differentiable_and_jittable(procedural_head):
    m = procedural_head
    k = 64
    w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, 3)), jnp.float32)
    f = jax.jit(lambda verts: jnp.sum(uv.uv_position_map(m, verts, k) * w))
    g = jax.grad(f)(m.v_template)
    d = jnp.asarray(np.random.default_rng(2).standard_normal(m.v_template.shape), jnp.float32)
    # The map is linear in the vertices, so the directional derivative is exact.
    np.testing.assert_allclose(float(jnp.sum(g * d)), float(f(m.v_template + d) - f(m.v_template)), rtol=1e-3)


def test_skinning_weights_and_region_masks(procedural_head):
    m = procedural_head
    k = 128
    t = uv.texel_table(m, k)
    w = np.asarray(uv.uv_skinning_weights(m, k))
    np.testing.assert_allclose(w[t.valid].sum(-1), 1.0, atol=1e-5)
    assert (w[~t.valid] == 0).all()
    scalp = uv.uv_region_mask(m, k, "scalp")
    eyes = uv.uv_region_mask(m, k, "left_eye")
    assert scalp.sum() > 100 and eyes.sum() > 20 and not (scalp & eyes).any()
    assert not (scalp & ~t.valid).any()
    # Left-eye texels have pure left-eye skinning.
    np.testing.assert_allclose(w[eyes][:, 3], 1.0, atol=1e-6)


def test_dense_sampling_grid(procedural_head):
    m = procedural_head
    k = 64
    base = uv.sampling_grid(m, k)
    assert len(base) == uv.texel_table(m, k).valid.sum() and not base.dense.any()
    dense = uv.sampling_grid(m, k, {"scalp": 2})
    extra = dense.dense.sum()
    assert extra == uv.uv_region_mask(m, 2 * k, "scalp").sum()
    assert m.face_mask("scalp")[dense.face[dense.dense]].all()
    # Even factor: the fine samples replace the coarse sample of each texel they cover.
    covered = {tuple(t) for t in dense.texel[dense.dense]}
    coarse = {tuple(t) for t in dense.texel[~dense.dense]}
    assert not covered & coarse
    assert len(dense) == len(base) - len(covered) + extra
    # Odd factor: the coarse centre is kept and f² - 1 sub-texels join it, so a texel whose 3×3
    # sub-texels are all in the region carries exactly 9 samples.
    odd = uv.sampling_grid(m, k, {"scalp": 3})
    fine = uv.uv_region_mask(m, 3 * k, "scalp").reshape(k, 3, k, 3).all(axis=(1, 3))
    counts = np.zeros((k, k), int)
    np.add.at(counts, (odd.texel[:, 0], odd.texel[:, 1]), 1)
    assert fine.any() and (counts[fine] == 9).all()
    pts = np.asarray(dense.interpolate(m.faces, m.v_template))
    assert np.isfinite(pts).all() and pts.shape == (len(dense), 3)


@pytest.mark.parametrize("bad", [0, 4, 5000, 64.5])
def test_bad_resolution_raises(procedural_head, bad):
    with pytest.raises(ValueError, match="resolution"):
        uv.texel_table(procedural_head, bad)


def test_bad_dense_factor_raises(procedural_head):
    with pytest.raises(ValueError, match="factor"):
        uv.sampling_grid(procedural_head, 64, {"scalp": 0})


def test_tangent_frames_are_orthonormal_and_follow_the_surface(procedural_head):
    from flexavatar_jax.head.mesh_ops import face_normals

    m = procedural_head
    s = uv.sampling_grid(m, 64)
    frames = np.asarray(uv.tangent_frames(m, s, m.v_template), np.float64)
    np.testing.assert_allclose(frames.transpose(0, 2, 1) @ frames, np.broadcast_to(np.eye(3), frames.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(frames), 1.0, atol=1e-5)
    fn = face_normals(np.asarray(m.v_template), np.asarray(m.faces))[s.face]
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    np.testing.assert_allclose(frames[:, :, 2], fn, atol=1e-5)
    # On the square model, t is the direction of increasing u exactly.
    sq, a = _square_model()
    fs = np.asarray(uv.tangent_frames(sq, uv.sampling_grid(sq, 8), sq.v_template))
    np.testing.assert_allclose(fs[:, :, 0], np.broadcast_to(a[:, 0] / np.linalg.norm(a[:, 0]), (len(fs), 3)), atol=1e-6)


def test_uv_jacobian_on_the_square_model():
    sq, a = _square_model()
    du, dv, n = uv.uv_jacobian(sq, uv.sampling_grid(sq, 8), sq.v_template)
    np.testing.assert_allclose(np.asarray(du), np.broadcast_to(a[:, 0], du.shape), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dv), np.broadcast_to(a[:, 1], dv.shape), atol=1e-6)
