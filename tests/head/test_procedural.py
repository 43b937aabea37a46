"""The embedded procedural head: symmetry, completeness, anatomy that a renderer can see."""

import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.head import REGION_NAMES, lbs
from flexavatar_jax.head.mesh_ops import vertex_normals
from flexavatar_jax.render import camera
from flexavatar_jax.render.mesh import rasterize_mesh

FLIP = np.array([-1.0, 1.0, 1.0])


def test_counts_and_validity(procedural_head):
    m = procedural_head.validate()
    assert m.num_shape >= 100 and m.num_expression >= 50
    assert m.posedirs.shape[-1] == 36
    assert m.num_vertices > 5000 and m.num_faces > 10000


def test_geometry_is_exactly_mirror_symmetric(procedural_head):
    m = procedural_head
    v = np.asarray(m.v_template)
    mv = np.asarray(m.mirror_vertex)
    assert np.array_equal(mv[mv], np.arange(len(mv)))
    assert np.array_equal(v[mv] * FLIP, v)  # exact, not approximate
    mf = np.asarray(m.mirror_face)
    faces = np.asarray(m.faces)
    assert np.array_equal(mf[mf], np.arange(len(mf)))
    # The mirrored face has the mirrored corners with reversed winding (up to rotation).
    mirrored = mv[faces][:, ::-1]
    target = faces[mf]
    same = [np.any([np.array_equal(np.roll(mirrored[i], k), target[i]) for k in range(3)]) for i in range(0, len(faces), 97)]
    assert all(same)
    # Skinning weights mirror with the left/right eye joints swapped.
    w = np.asarray(m.lbs_weights)
    np.testing.assert_allclose(w[mv][:, [0, 1, 2, 4, 3]], w, atol=1e-6)
    # Regions mirror onto themselves, except left/right eyes which swap.
    r = np.asarray(m.vertex_regions)
    swap = r.copy()
    le, re = 1 << REGION_NAMES.index("left_eye"), 1 << REGION_NAMES.index("right_eye")
    swap = (swap & ~(le | re)) | np.where(swap & le, re, 0) | np.where(swap & re, le, 0)
    assert np.array_equal(swap[mv], r)


def test_left_is_plus_x(procedural_head):
    v = np.asarray(procedural_head.v_template)
    assert v[procedural_head.vertex_mask("left_eye"), 0].min() > 0
    assert v[procedural_head.vertex_mask("right_eye"), 0].max() < 0


def test_every_region_present_and_weights_normalised(procedural_head):
    m = procedural_head
    for name in REGION_NAMES:
        assert m.vertex_mask(name).sum() > 10, name
        assert m.face_mask(name).sum() > 5, name
    np.testing.assert_allclose(np.asarray(m.lbs_weights).sum(1), 1.0, atol=1e-6)
    assert np.asarray(m.lbs_weights).min() >= 0
    np.testing.assert_allclose(np.asarray(m.J_regressor).sum(1), 1.0, atol=1e-5)  # affine: moves with the mesh


def test_bases_are_orthogonal_like_pca(procedural_head):
    for basis in (procedural_head.shapedirs, procedural_head.exprdirs):
        b = np.asarray(basis, np.float64).reshape(-1, basis.shape[-1])
        gram = b.T @ b
        d = np.sqrt(np.diag(gram))
        corr = gram / np.outer(d, d)
        assert np.abs(corr - np.eye(len(d))).max() < 1e-4
        assert np.all(np.diff(d) <= 1e-6 * d[0])  # sorted by norm, largest first


def test_component_names_keep_their_meaning(procedural_arrays):
    # Each named semantic component keeps most of its source field after orthogonalisation.
    for kind in ("shape", "expression"):
        names, kept = procedural_arrays[f"{kind}_names"], procedural_arrays[f"{kind}_retained"]
        semantic = np.array(["residual" not in str(n) for n in names])
        assert semantic.sum() >= (30 if kind == "shape" else 40)
        assert kept[semantic].min() > 0.4 and np.median(kept[semantic]) > 0.75


def test_normals_point_outwards(procedural_head):
    m = procedural_head
    v = np.asarray(m.v_template, np.float64)
    n = vertex_normals(v, np.asarray(m.faces))
    for region, joint in (("left_eye", 3), ("right_eye", 4)):
        c = np.asarray(m.J_regressor)[joint] @ v
        mask = m.vertex_mask(region)
        assert np.all(np.sum(n[mask] * (v[mask] - c), 1) > 0), region
    nose_tip = np.argmax(np.where(m.vertex_mask("nose"), v[:, 2], -np.inf))
    assert n[nose_tip, 2] > 0.8
    crown = np.argmax(v[:, 1])
    assert n[crown, 1] > 0.9


def _front_view_regions(m, params, size=160):
    verts = np.asarray(lbs(m, params).vertices, np.float64)
    view = np.asarray(camera.look_at(np.array([0.0, -0.03, 0.45]), np.array([0.0, -0.03, 0.0])))
    K = np.asarray(camera.intrinsics_from_fov(20.0, size, size))
    r = rasterize_mesh(verts, np.asarray(m.faces), view, K, size, size)
    fid = r.face_id[r.mask]
    return {name: int(m.face_mask(name)[fid].sum()) for name in ("teeth", "tongue", "mouth_interior", "left_eye", "lips")}


def test_open_jaw_reveals_teeth_and_tongue(procedural_head):
    m = procedural_head
    closed = _front_view_regions(m, m.zero_params())
    opened = _front_view_regions(m, m.zero_params().replace(jaw_pose=jnp.array([0.35, 0.0, 0.0])))
    assert closed["teeth"] == 0 and closed["tongue"] == 0 and closed["mouth_interior"] == 0
    assert opened["teeth"] > 20 and opened["mouth_interior"] > 20 and opened["tongue"] > 5
    assert closed["lips"] > 50 and closed["left_eye"] > 20


def test_blink_closes_the_eye(procedural_arrays, procedural_head):
    m = procedural_head
    names = list(procedural_arrays["expression_names"])
    e = np.zeros(m.num_expression, np.float32)
    e[names.index("eye_blink_left")] = 1.0
    shut = _front_view_regions(m, m.zero_params().replace(expression=jnp.asarray(e)))
    open_ = _front_view_regions(m, m.zero_params())
    assert shut["left_eye"] < 0.1 * open_["left_eye"]


def test_mouth_slit_is_closed_at_rest_and_opens(procedural_head):
    m = procedural_head
    v = np.asarray(m.v_template)
    # Coincident vertex pairs (the two lips of the slit) exist and separate when the jaw opens.
    rounded = np.round(v, 9)
    _, first, counts = np.unique(rounded, axis=0, return_index=True, return_counts=True)
    dup = np.nonzero(counts > 1)[0]
    assert len(dup) >= 8
    opened = np.asarray(lbs(m, m.zero_params().replace(jaw_pose=jnp.array([0.3, 0.0, 0.0]))).vertices)
    lips = m.vertex_mask("lips")
    pairs = [np.nonzero(np.all(rounded == rounded[first[d]], axis=1))[0] for d in dup]
    lip_pairs = [p for p in pairs if lips[p].all() and len(p) == 2]
    assert len(lip_pairs) >= 8
    gaps = [np.linalg.norm(opened[a] - opened[b]) for a, b in lip_pairs]
    assert min(gaps) > 0.002


@pytest.mark.slow
def test_rebuild_is_deterministic(procedural_arrays):
    from flexavatar_jax.head.procedural import build_procedural_arrays

    fresh = build_procedural_arrays()
    for k, a in procedural_arrays.items():
        assert np.array_equal(np.asarray(fresh[k]), a), k
