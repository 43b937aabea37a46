"""FLAME loader on a small fake FLAME written by the test (real FLAME cannot be shipped).

The fake has FLAME's layout (shapedirs 300 + 100, posedirs [V,3,36], csc J_regressor, uint32
kintree with the huge root parent) on an x-symmetric subdivided octahedron, with chumpy-wrapped
arrays pickled through a fake `chumpy` module that is removed again before loading.
"""

import contextlib
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
from scipy.spatial.transform import Rotation

from flexavatar_jax.head import flame, lbs, mesh_ops
from flexavatar_jax.head.model import FLAME_PARENTS, REGION_NAMES

NUM_COMPONENTS = 400
MASK_KEYS = ("eye_region", "neck", "left_eyeball", "right_eyeball", "lips", "face", "scalp",
             "boundary", "forehead", "left_ear", "right_ear", "nose", "left_eye_region",
             "right_eye_region")


# ---------------------------------------------------------------------------------------------
# The fake FLAME.
# ---------------------------------------------------------------------------------------------


def _octasphere(levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit sphere from a subdivided octahedron, outward counter-clockwise faces; exactly
    symmetric under x -> -x (midpoints and norms commute with negating x)."""
    verts = [np.array(v, np.float64) for v in
             ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))]
    faces = []
    for sx in (0, 1):
        for sy in (2, 3):
            for sz in (4, 5):
                tri = (sx, sy, sz)
                flips = (sx == 1) + (sy == 3) + (sz == 5)
                faces.append(tri if flips % 2 == 0 else tri[::-1])
    for _ in range(levels):
        midpoint = {}

        def mid(a, b):
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                midpoint[key] = len(verts)
                verts.append((verts[a] + verts[b]) / 2)
            return midpoint[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
        faces = new
    v = np.stack(verts)
    return v / np.linalg.norm(v, axis=1, keepdims=True), np.asarray(faces, np.int64)


def _f32(a):
    """float64 values that are exactly float32-representable, so float32 round trips are exact."""
    return np.asarray(a, np.float32).astype(np.float64)


def _make_raw(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sphere, faces = _octasphere(3)
    v = len(sphere)
    v_template = _f32(sphere * np.array([0.08, 0.1, 0.09]))
    weights = rng.random((v, 5)) ** 4
    weights = _f32(weights / weights.sum(1, keepdims=True))
    rows, cols, vals = [], [], []
    for j in range(5):
        idx = rng.choice(v, 6, replace=False)
        w = rng.random(6)
        rows += [j] * 6
        cols += idx.tolist()
        vals += (w / w.sum()).tolist()
    j_regressor = scipy.sparse.csc_matrix((_f32(vals), (rows, cols)), shape=(5, v))
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "shapedirs": _f32(rng.normal(size=(v, 3, NUM_COMPONENTS)) * 1e-3),
        "posedirs": _f32(rng.normal(size=(v, 3, 36)) * 1e-3),
        "J_regressor": j_regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
        "J": j_regressor @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


@contextlib.contextmanager
def _fake_chumpy():
    """Registers a fake `chumpy` whose `Ch` pickles like chumpy's (class chumpy.ch.Ch + a state
    dict with the array under 'x'); unregisters it on exit."""

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense, self._make_sparse = False, False
            self._parents = {}
            self._cache = {"r": None}

        def __getstate__(self):  # chumpy drops its weak-reference caches when pickling
            state = dict(self.__dict__)
            del state["_parents"], state["_cache"]
            return state

    class add:  # noqa: N801 - a chumpy op class without an 'x' array
        def __init__(self, a, b):
            self.a, self.b = a, b

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
    modules = {name: types.ModuleType(name) for name in ("chumpy", "chumpy.ch", "chumpy.ch_ops")}
    modules["chumpy.ch"].Ch = Ch
    modules["chumpy.ch_ops"].add = add
    sys.modules.update(modules)
    try:
        yield Ch, add
    finally:
        for name in modules:
            del sys.modules[name]


def _write_pickle(path, raw, chumpy_keys=("v_template", "shapedirs", "J"), protocol=2):
    with _fake_chumpy() as (Ch, _):
        obj = {k: Ch(v) if k in chumpy_keys else v for k, v in raw.items()}
        data = pickle.dumps(obj, protocol=protocol)
    assert "chumpy" not in sys.modules
    if chumpy_keys:
        assert b"chumpy.ch" in data
    path.write_bytes(data)
    return path


def _make_uv(raw, seed: int = 1):
    """Per-vertex spherical UV plus split UV vertices on every 7th face (seams: T > V)."""
    v = raw["v_template"] / np.array([0.08, 0.1, 0.09])
    uv = np.stack([0.5 + np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi),
                   0.5 + np.arcsin(np.clip(v[:, 1], -1, 1)) / np.pi], axis=1)
    faces = raw["f"].astype(np.int64)
    faces_uv = faces.copy()
    extra = []
    rng = np.random.default_rng(seed)
    for fi in range(0, len(faces), 7):
        for c in range(3):
            faces_uv[fi, c] = len(uv) + len(extra)
            extra.append(np.clip(uv[faces[fi, c]] + rng.uniform(-0.01, 0.01, 2), 0, 1))
    return _f32(np.concatenate([uv, np.asarray(extra)])), faces_uv


def _write_obj(path, raw, uv, faces_uv, faces=None):
    faces = raw["f"].astype(np.int64) if faces is None else faces
    lines = ["# fake head_template_mesh.obj"]
    # repr of a Python float round-trips exactly.
    lines += ["v " + " ".join(repr(float(c)) for c in p) for p in raw["v_template"]]
    lines += ["vt " + " ".join(repr(float(c)) for c in t) for t in uv]
    lines.append("vn 0 0 1")
    for i, (fv, ft) in enumerate(zip(faces + 1, faces_uv + 1)):
        # Mix the corner spellings an obj writer may use: v/vt and v/vt/vn.
        corners = [f"{a}/{b}/1" if i % 2 else f"{a}/{b}" for a, b in zip(fv, ft)]
        lines.append("f " + " ".join(corners))
    path.write_text("\n".join(lines) + "\n")
    return path


def _make_masks(raw):
    v = raw["v_template"]
    x, y, z = v.T
    near = lambda c, r: np.flatnonzero(np.linalg.norm(v - np.asarray(c), axis=1) < r)  # noqa: E731
    masks = {
        "face": np.flatnonzero(z > 0.02),
        "scalp": np.flatnonzero((y > 0.05) & (z < 0.03)),
        "left_ear": np.flatnonzero(x > 0.07),
        "right_ear": np.flatnonzero(x < -0.07),
        "neck": np.flatnonzero(y < -0.08),
        "left_eyeball": near((0.03, 0.03, 0.08), 0.02),
        "right_eyeball": near((-0.03, 0.03, 0.08), 0.02),
        "lips": near((0.0, -0.04, 0.08), 0.02),
        "nose": near((0.0, 0.0, 0.09), 0.015),
        "forehead": np.flatnonzero((y > 0.06) & (z > 0.03)),
        "eye_region": near((0.0, 0.03, 0.08), 0.05),
        "left_eye_region": near((0.03, 0.03, 0.08), 0.03),
        "right_eye_region": near((-0.03, 0.03, 0.08), 0.03),
        "boundary": np.flatnonzero(y < -0.095),
    }
    assert set(masks) == set(MASK_KEYS) and all(m.size for m in masks.values())
    return masks


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame")
    raw = _make_raw()
    uv, faces_uv = _make_uv(raw)
    masks = _make_masks(raw)
    masks_path = root / "FLAME_masks.pkl"
    masks_path.write_bytes(pickle.dumps(masks, protocol=2))
    return types.SimpleNamespace(
        root=root, raw=raw, uv=uv, faces_uv=faces_uv, masks=masks, masks_path=masks_path,
        pkl=_write_pickle(root / "generic_model.pkl", raw),
        obj=_write_obj(root / "head_template_mesh.obj", raw, uv, faces_uv),
    )


@pytest.fixture(scope="module")
def model(fake):
    return flame.load_flame(fake.pkl, fake.obj, masks_pkl=fake.masks_path)


def _assert_models_equal(a, b):
    for field in flame.ARRAY_FIELDS:
        x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    assert (a.name, a.parents, a.joint_names, a.region_names) == (
        b.name, b.parents, b.joint_names, b.region_names)


# ---------------------------------------------------------------------------------------------
# Values.
# ---------------------------------------------------------------------------------------------


def test_pickle_arrays_round_trip(fake, model):
    raw = fake.raw
    assert model.name == "flame2020"
    assert model.parents == FLAME_PARENTS
    assert (model.num_shape, model.num_expression) == (300, 100)
    np.testing.assert_array_equal(model.v_template, raw["v_template"])
    np.testing.assert_array_equal(model.faces, raw["f"])
    np.testing.assert_array_equal(model.shapedirs, raw["shapedirs"][..., :300])
    np.testing.assert_array_equal(model.exprdirs, raw["shapedirs"][..., 300:])
    np.testing.assert_array_equal(model.posedirs, raw["posedirs"])
    np.testing.assert_array_equal(model.J_regressor, raw["J_regressor"].toarray())
    np.testing.assert_array_equal(model.lbs_weights, raw["weights"])
    np.testing.assert_array_equal(model.uv_coords, fake.uv)
    np.testing.assert_array_equal(model.faces_uv, fake.faces_uv)
    assert model.uv_coords.shape[0] > model.num_vertices  # seams survived
    assert model.v_template.dtype == jnp.float32 and model.faces.dtype == jnp.int32
    model.validate()


def test_reader_needs_neither_chumpy_nor_scipy(fake, monkeypatch):
    for name in ("chumpy", "scipy", "scipy.sparse", "scipy.spatial"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of these now fails
    raw = flame.read_flame_arrays(fake.pkl)
    assert set(raw) == set(flame.RAW_FLAME_KEYS)
    np.testing.assert_array_equal(raw["J_regressor"], fake.raw["J_regressor"].toarray())
    np.testing.assert_array_equal(raw["shapedirs"], fake.raw["shapedirs"])
    # The whole load, mirror tables included (brute-force nearest neighbours without scipy).
    model = flame.load_flame(fake.pkl, fake.obj)
    assert np.all(np.asarray(model.mirror_vertex)[np.asarray(model.mirror_vertex)]
                  == np.arange(model.num_vertices))


def test_python2_style_pickle_names(fake, tmp_path):
    # Protocol 0 writes globals as text, already with Python 2 module names (copy_reg,
    # __builtin__); rename numpy's module as numpy 1.x wrote it.
    path = _write_pickle(tmp_path / "generic_model.pkl", fake.raw, protocol=0)
    data = path.read_bytes()
    assert b"copy_reg\n_reconstructor" in data and b"__builtin__\nobject" in data
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    raw = flame.read_flame_arrays(path)
    np.testing.assert_array_equal(raw["v_template"], fake.raw["v_template"])
    np.testing.assert_array_equal(raw["J_regressor"], fake.raw["J_regressor"].toarray())


@pytest.mark.parametrize("protocol", [4, 5])
def test_newer_pickle_protocols(fake, tmp_path, protocol):
    raw = flame.read_flame_arrays(_write_pickle(tmp_path / "m.pkl", fake.raw, protocol=protocol))
    np.testing.assert_array_equal(raw["shapedirs"], fake.raw["shapedirs"])
    np.testing.assert_array_equal(raw["J_regressor"], fake.raw["J_regressor"].toarray())


@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_other_sparse_formats_densify(fake, tmp_path, fmt):
    raw = dict(fake.raw, J_regressor=fake.raw["J_regressor"].asformat(fmt))
    arrays = flame.read_flame_arrays(_write_pickle(tmp_path / "m.pkl", raw))
    np.testing.assert_array_equal(arrays["J_regressor"], fake.raw["J_regressor"].toarray())


def test_component_selection(fake):
    m = flame.load_flame(fake.pkl, fake.obj, num_shape=10, num_expression=5)
    np.testing.assert_array_equal(m.shapedirs, fake.raw["shapedirs"][..., :10])
    np.testing.assert_array_equal(m.exprdirs, fake.raw["shapedirs"][..., 300:305])


def test_converted_npz_round_trip(fake, model, tmp_path):
    out = tmp_path / "flame2020.npz"
    converted = flame.convert_flame(fake.pkl, fake.obj, out, masks_pkl=fake.masks_path)
    _assert_models_equal(converted, model)
    _assert_models_equal(flame.load_npz(out), model)
    _assert_models_equal(flame.load_flame(out), model)
    with np.load(out, allow_pickle=False) as archive:
        assert str(archive["format"]) == flame.NPZ_FORMAT
    small = flame.load_flame(out, num_shape=20, num_expression=7)
    np.testing.assert_array_equal(small.exprdirs, model.exprdirs[..., :7])
    np.testing.assert_array_equal(small.shapedirs, model.shapedirs[..., :20])
    with pytest.raises(ValueError, match="101 expression"):
        flame.load_flame(out, num_expression=101)


def test_flame_style_npz_loads(fake, model, tmp_path):
    path = tmp_path / "generic_model.npz"
    arrays = {k: v for k, v in fake.raw.items() if k != "J_regressor"}
    np.savez(path, J_regressor=fake.raw["J_regressor"].toarray(), **arrays)
    _assert_models_equal(flame.load_flame(path, fake.obj, masks_pkl=fake.masks_path), model)
    with pytest.raises(ValueError, match="load_flame"):
        flame.load_npz(path)


def test_lbs_zero_pose_is_template_plus_blendshapes(fake, model):
    rng = np.random.default_rng(3)
    shape, expr = rng.normal(size=300), rng.normal(size=100)
    params = model.zero_params().replace(shape=jnp.asarray(shape, jnp.float32),
                                         expression=jnp.asarray(expr, jnp.float32))
    out = jax.jit(lbs)(model, params)
    want = fake.raw["v_template"] + fake.raw["shapedirs"] @ np.concatenate([shape, expr])
    np.testing.assert_allclose(out.vertices, want, atol=1e-6)


def _reference_flame_lbs(raw, shape, expr, pose, translation):
    """FLAME forward pass written on the file's own layout (shapedirs 300+E, posedirs flattened
    to [36, V*3] as FLAME's reference code does), independent of skinning.py."""
    v_template, weights = raw["v_template"], raw["weights"]
    betas = np.concatenate([shape, np.zeros(300 - len(shape)), expr])
    shapedirs = raw["shapedirs"][..., :300 + len(expr)]
    v_shaped = v_template + shapedirs @ betas
    joints = raw["J_regressor"].toarray() @ v_shaped
    rot = Rotation.from_rotvec(pose).as_matrix()
    pose_feature = (rot[1:] - np.eye(3)).reshape(-1)
    v_posed = v_shaped + (pose_feature @ raw["posedirs"].reshape(-1, 36).T).reshape(-1, 3)
    parents = [int(p) if p < 5 else -1 for p in raw["kintree_table"][0]]
    world = np.zeros((5, 4, 4))
    for j, p in enumerate(parents):
        local = np.eye(4)
        local[:3, :3] = rot[j]
        local[:3, 3] = joints[j] - (joints[p] if p >= 0 else 0)
        world[j] = local if p < 0 else world[p] @ local
    relative = world.copy()
    relative[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    per_vertex = np.einsum("vj,jab->vab", weights, relative)
    posed = np.einsum("vab,vb->va", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]
    return posed + translation


def test_lbs_matches_reference_flame(fake, model):
    rng = np.random.default_rng(4)
    shape, expr = rng.normal(size=300), rng.normal(size=100)
    pose = rng.normal(size=(5, 3)) * 0.3
    translation = np.array([0.01, -0.02, 0.03])
    params = model.zero_params().replace(
        shape=jnp.asarray(shape, jnp.float32), expression=jnp.asarray(expr, jnp.float32),
        global_pose=jnp.asarray(pose[0], jnp.float32), neck_pose=jnp.asarray(pose[1], jnp.float32),
        jaw_pose=jnp.asarray(pose[2], jnp.float32),
        eyes_pose=jnp.asarray(pose[3:].reshape(-1), jnp.float32),
        translation=jnp.asarray(translation, jnp.float32))
    out = jax.jit(lbs)(model, params)
    want = _reference_flame_lbs(fake.raw, shape, expr, pose, translation)
    np.testing.assert_allclose(out.vertices, want, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Regions and mirrors.
# ---------------------------------------------------------------------------------------------


def test_regions_from_masks(fake, model):
    masks, v = fake.masks, model.num_vertices
    expected = {
        "face_skin": masks["face"], "scalp": masks["scalp"], "neck": masks["neck"],
        "ears": np.union1d(masks["left_ear"], masks["right_ear"]),
        "left_eye": masks["left_eyeball"], "right_eye": masks["right_eyeball"],
        "lips": masks["lips"], "nose": masks["nose"],
    }
    faces = np.asarray(model.faces)
    for region in REGION_NAMES:
        want = np.zeros(v, bool)
        want[expected.get(region, [])] = True
        np.testing.assert_array_equal(model.vertex_mask(region), want, err_msg=region)
        np.testing.assert_array_equal(model.face_mask(region), want[faces].all(axis=1),
                                      err_msg=region)
    for region in ("teeth", "mouth_interior", "tongue", "eyebrows"):
        assert not model.vertex_mask(region).any()
    assert model.face_mask("face_skin").any()


def test_no_masks_means_empty_regions_and_a_warning(fake, caplog):
    m = flame.load_flame(fake.pkl, fake.obj)
    assert not np.asarray(m.vertex_regions).any() and not np.asarray(m.face_regions).any()
    assert "FLAME_masks.pkl" in caplog.text


def test_mirror_tables_on_symmetric_mesh(model):
    v = np.asarray(model.v_template)
    mv = np.asarray(model.mirror_vertex)
    np.testing.assert_array_equal(mv[mv], np.arange(len(v)))
    np.testing.assert_array_equal(v[mv], v * np.array([-1, 1, 1], np.float32))
    assert np.any(mv == np.arange(len(v))) and np.any(mv != np.arange(len(v)))
    faces, mf = np.asarray(model.faces), np.asarray(model.mirror_face)
    np.testing.assert_array_equal(mf[mf], np.arange(len(faces)))
    for f in range(len(faces)):
        # Mirroring flips the winding: the mirrored face is the reversed mirrored corners.
        want = mv[faces[f]][::-1]
        assert any(np.array_equal(np.roll(faces[mf[f]], k), want) for k in range(3)), f


def test_mirror_is_an_involution_on_asymmetric_points(fake):
    rng = np.random.default_rng(5)
    v = fake.raw["v_template"] + rng.normal(size=fake.raw["v_template"].shape) * 4e-3
    for points in (v, rng.normal(size=(300, 3))):
        with_tree = flame.mirror_vertex_table(points)
        brute = flame.mirror_vertex_table(points, use_kdtree=False)
        np.testing.assert_array_equal(with_tree, brute)
        np.testing.assert_array_equal(with_tree[with_tree], np.arange(len(points)))
    faces = fake.raw["f"].astype(np.int64)
    mf = mesh_ops.mirror_faces(faces, flame.mirror_vertex_table(v), v)
    assert mf.shape == (len(faces),) and mf.min() >= 0 and mf.max() < len(faces)


def test_model_names():
    assert flame.flame_model_name("FLAME2020/generic_model.pkl") == "flame2020"
    assert flame.flame_model_name("x/generic_model.pkl") == "flame2020"
    assert flame.flame_model_name("FLAME2023/flame2023.pkl") == "flame2023"
    assert flame.flame_model_name("flame2023_Open.pkl") == "flame2023_open"
    assert flame.flame_model_name("head.pkl") == "flame"


# ---------------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------------


def test_missing_files(fake, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pkl"):
        flame.load_flame(tmp_path / "nope.pkl", fake.obj)
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        flame.load_flame(fake.pkl, tmp_path / "nope.obj")
    with pytest.raises(FileNotFoundError, match="nope_masks.pkl"):
        flame.load_flame(fake.pkl, fake.obj, masks_pkl=tmp_path / "nope_masks.pkl")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        flame.load_npz(tmp_path / "nope.npz")


def test_uv_obj_is_required(fake):
    with pytest.raises(ValueError, match="head_template_mesh.obj"):
        flame.load_flame(fake.pkl)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_a_dict"])
def test_corrupt_pickle(fake, tmp_path, damage):
    path = tmp_path / "generic_model.pkl"
    data = fake.pkl.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x80\x02garbage" * 9,
                      "not_a_dict": pickle.dumps([1, 2, 3], 2)}[damage])
    with pytest.raises(ValueError, match="generic_model.pkl"):
        flame.load_flame(path, fake.obj)


def test_pickle_with_foreign_global_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, 2))
    with pytest.raises(ValueError, match="refusing to load global"):
        flame.read_flame_arrays(path)


def test_unsupported_chumpy_class(fake, tmp_path):
    with _fake_chumpy() as (Ch, add):
        raw = dict(fake.raw, shapedirs=add(Ch(fake.raw["shapedirs"]), Ch(fake.raw["shapedirs"])))
        data = pickle.dumps(raw, 2)
    path = tmp_path / "m.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"'shapedirs' is a chumpy chumpy\.ch_ops\.add"):
        flame.read_flame_arrays(path)


def test_missing_key(fake, tmp_path):
    raw = {k: v for k, v in fake.raw.items() if k not in ("weights", "posedirs")}
    path = _write_pickle(tmp_path / "m.pkl", raw)
    with pytest.raises(ValueError, match=r"missing FLAME keys \['posedirs', 'weights'\]"):
        flame.load_flame(path, fake.obj)


@pytest.mark.parametrize("key,bad,match", [
    ("weights", lambda r: r["weights"][:, :4], r"weights has shape \[258, 4\]"),
    ("posedirs", lambda r: r["posedirs"].reshape(-1, 36), r"posedirs has shape \[774, 36\]"),
    ("v_template", lambda r: r["v_template"][:, :2], r"v_template has shape"),
    ("kintree_table", lambda r: np.array([[4294967295, 0, 0, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
     "parents"),
    ("shapedirs", lambda r: r["shapedirs"][..., :200], "200 components"),
])
def test_wrong_shapes(fake, tmp_path, key, bad, match):
    path = _write_pickle(tmp_path / "m.pkl", dict(fake.raw, **{key: bad(fake.raw)}))
    with pytest.raises(ValueError, match=match):
        flame.load_flame(path, fake.obj)


def test_too_many_components(fake):
    with pytest.raises(ValueError, match="asked for 101 expression components, the file has 100"):
        flame.load_flame(fake.pkl, fake.obj, num_expression=101)
    with pytest.raises(ValueError, match="asked for 301 shape components"):
        flame.load_flame(fake.pkl, fake.obj, num_shape=301)


def test_obj_faces_must_match(fake, tmp_path):
    faces = fake.raw["f"].astype(np.int64).copy()
    faces[[3, 4]] = faces[[4, 3]]
    path = _write_obj(tmp_path / "swapped.obj", fake.raw, fake.uv, fake.faces_uv, faces)
    with pytest.raises(ValueError, match="2 faces have other vertex indices"):
        flame.load_flame(fake.pkl, path)
    path = _write_obj(tmp_path / "fewer.obj", fake.raw, fake.uv, fake.faces_uv[:-1],
                      fake.raw["f"][:-1].astype(np.int64))
    with pytest.raises(ValueError, match="511 faces"):
        flame.load_flame(fake.pkl, path)


def test_obj_parse_errors(fake, tmp_path):
    path = tmp_path / "no_vt.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match=r"no_vt.obj:5: .*texture"):
        flame.read_uv_obj(path)
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nf 1/1 2/1 3/1 4/1\n")
    with pytest.raises(ValueError, match="4 corners"):
        flame.read_uv_obj(path)
    # Negative (relative) indices are valid obj.
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf -3/-3 -2/-2 -1/-1\n")
    layout = flame.read_uv_obj(path)
    np.testing.assert_array_equal(layout.faces, [[0, 1, 2]])
    np.testing.assert_array_equal(layout.faces_uv, [[0, 1, 2]])


def test_corrupt_npz(fake, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="model.npz"):
        flame.load_flame(path, fake.obj)
    with pytest.raises(ValueError, match="model.npz"):
        flame.load_npz(path)


def test_converted_npz_rejects_uv_obj(fake, model, tmp_path):
    out = tmp_path / "m.npz"
    flame.save_npz(model, out)
    with pytest.raises(ValueError, match="already holds UV"):
        flame.load_flame(out, fake.obj)
