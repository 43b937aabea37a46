"""3DGS `.ply` export/import: layout, hand-computed values, round trip, bad input."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.render.ply import OPACITY_EPS, PLY_PROPERTIES, SH_C0, export_ply, read_ply

EXPECTED_PROPERTIES = (
    "x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3"
).split()


def _random_gaussians(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32) * 0.1,
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "scales": np.exp(rng.uniform(-7, -2, size=(n, 3))).astype(np.float32),
        "opacities": rng.uniform(0.01, 0.99, size=n).astype(np.float32),
        "colors": rng.uniform(0, 1, size=(n, 3)).astype(np.float32),
    }


def _header_and_data(path):
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end].decode("ascii"), raw[end:]


def test_header_lists_exactly_the_3dgs_properties_in_order(tmp_path):
    path = tmp_path / "g.ply"
    n = export_ply(path, _random_gaussians(7))
    header, data = _header_and_data(path)
    lines = header.splitlines()
    assert n == 7
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 7"]
    assert [l.split() for l in lines[3:-1]] == [["property", "float", p] for p in EXPECTED_PROPERTIES]
    assert lines[-1] == "end_header"
    assert tuple(EXPECTED_PROPERTIES) == PLY_PROPERTIES
    assert path.stat().st_size == len(header) + 7 * 17 * 4
    assert len(data) == 7 * 17 * 4


def test_hand_computed_row(tmp_path):
    path = tmp_path / "one.ply"
    gaussians = {
        "means": [[1.0, -2.0, 3.0]],
        "quats": [[2.0, 0.0, 0.0, 0.0]],  # normalised to identity (w = 1)
        "scales": [[math.e, 1.0, math.exp(-3.0)]],
        "opacities": [0.5],
        "colors": [[0.5, 0.5 + SH_C0, 0.0]],
    }
    export_ply(path, gaussians)
    _, data = _header_and_data(path)
    row = np.frombuffer(data, dtype="<f4")
    expected = [1, -2, 3, 0, 0, 0, 0, 1, -0.5 / SH_C0, 0, 1, 0, -3, 1, 0, 0, 0]
    np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-7)


def test_quaternion_stored_wxyz_after_normalising(tmp_path):
    path = tmp_path / "q.ply"
    g = _random_gaussians(1)
    g["quats"] = np.array([[0.0, 0.0, 3.0, 4.0]])  # w = 0, so any order swap would show
    export_ply(path, g)
    _, data = _header_and_data(path)
    np.testing.assert_allclose(np.frombuffer(data, "<f4")[13:17], [0, 0, 0.6, 0.8], rtol=1e-7)


def test_round_trip_within_float32_rounding(tmp_path):
    path = tmp_path / "rt.ply"
    g = _random_gaussians(200, seed=3)
    g = {k: jnp.asarray(v) for k, v in g.items()}  # jax arrays are accepted too
    extra = {"region_id": np.arange(200, dtype=np.float32)}
    export_ply(path, g, extra=extra)
    back = read_ply(path)
    quats = np.asarray(g["quats"]) / np.linalg.norm(np.asarray(g["quats"]), axis=-1, keepdims=True)
    np.testing.assert_array_equal(back["means"], np.asarray(g["means"]))
    np.testing.assert_allclose(back["quats"], quats, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back["scales"], np.asarray(g["scales"]), rtol=1e-6)
    np.testing.assert_allclose(back["opacities"], np.asarray(g["opacities"]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(back["colors"], np.asarray(g["colors"]), rtol=1e-6, atol=1e-7)
    assert list(back["extra"]) == ["region_id"]
    np.testing.assert_array_equal(back["extra"]["region_id"], extra["region_id"])
    assert path.stat().st_size == len(_header_and_data(path)[0]) + 200 * 18 * 4
    assert all(back[k].dtype == np.float32 for k in ("means", "quats", "scales", "opacities", "colors"))


def test_mid_grey_has_zero_dc_and_extreme_opacities_are_clamped(tmp_path):
    path = tmp_path / "c.ply"
    g = _random_gaussians(3)
    g["colors"] = np.full((3, 3), 0.5)
    g["opacities"] = np.array([0.0, 1.0, 0.5])
    export_ply(path, g)
    _, data = _header_and_data(path)
    table = np.frombuffer(data, "<f4").reshape(3, 17)
    np.testing.assert_array_equal(table[:, 6:9], 0.0)
    assert np.all(np.isfinite(table))
    logit_eps = math.log(OPACITY_EPS / (1 - OPACITY_EPS))
    np.testing.assert_allclose(table[:, 9], [logit_eps, -logit_eps, 0.0], rtol=1e-6)
    back = read_ply(path)["opacities"]
    np.testing.assert_allclose(back, [OPACITY_EPS, 1 - OPACITY_EPS, 0.5], atol=1e-7)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("means", np.zeros((4, 2)), r"gaussians\['means'\] must have shape \[N,3\]"),
        ("quats", np.zeros((3, 4)), r"gaussians\['quats'\] must have shape \[4,4\]"),
        ("opacities", np.zeros((4, 1)), r"gaussians\['opacities'\] must have shape \[4\]"),
        ("colors", np.full((4, 3), np.nan), r"gaussians\['colors'\] has 12 non-finite"),
        ("scales", np.full((4, 3), np.inf), r"gaussians\['scales'\] has 12 non-finite"),
        ("scales", np.zeros((4, 3)), r"gaussians\['scales'\] must be > 0"),
        ("quats", np.zeros((4, 4)), r"gaussians\['quats'\] has 4 zero quaternions"),
        ("opacities", np.full(4, 1.5), r"gaussians\['opacities'\] must lie in \[0,1\]"),
    ],
)
def test_bad_input_raises_naming_the_array(tmp_path, key, value, match):
    g = _random_gaussians(4)
    g[key] = value
    with pytest.raises(ValueError, match=match):
        export_ply(tmp_path / "bad.ply", g)
    assert not (tmp_path / "bad.ply").exists()


def test_bad_extra_and_missing_key(tmp_path):
    g = _random_gaussians(4)
    with pytest.raises(ValueError, match=r"extra\.id"):
        export_ply(tmp_path / "e.ply", g, extra={"id": np.zeros(5)})
    with pytest.raises(ValueError, match="not a valid new PLY property"):
        export_ply(tmp_path / "e.ply", g, extra={"opacity": np.zeros(4)})
    del g["colors"]
    with pytest.raises(ValueError, match="missing.*colors"):
        export_ply(tmp_path / "e.ply", g)


def _write_raw(path, header_lines, payload=b""):
    path.write_bytes(("\n".join(header_lines) + "\n").encode() + payload)
    return path


def test_read_rejects_files_that_are_not_3dgs_plys(tmp_path):
    props = [f"property float {p}" for p in EXPECTED_PROPERTIES]
    binary = ["ply", "format binary_little_endian 1.0", "element vertex 0"]
    ascii_ply = _write_raw(
        tmp_path / "a.ply", ["ply", "format ascii 1.0", "element vertex 0", *props, "end_header"]
    )
    with pytest.raises(ValueError, match="format is 'ascii 1.0'"):
        read_ply(ascii_ply)
    no_rot = _write_raw(tmp_path / "m.ply", [*binary, *props[:-4], "end_header"])
    with pytest.raises(ValueError, match=r"missing properties \['rot_0', 'rot_1', 'rot_2', 'rot_3'\]"):
        read_ply(no_rot)
    mesh = _write_raw(
        tmp_path / "mesh.ply",
        [*binary, *props, "element face 0", "property list uchar int vertex_indices", "end_header"],
    )
    with pytest.raises(ValueError, match="unexpected PLY element 'face'"):
        read_ply(mesh)
    with pytest.raises(ValueError, match="not a PLY file"):
        read_ply(_write_raw(tmp_path / "x.ply", ["hello"]))
    with pytest.raises(FileNotFoundError):
        read_ply(tmp_path / "missing.ply")


def test_read_rejects_truncated_data(tmp_path):
    path = tmp_path / "t.ply"
    export_ply(path, _random_gaussians(5))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(path)


def test_read_accepts_file_without_normals_and_with_higher_sh(tmp_path):
    # Layout of files from other tools: no normals, f_rest_* after f_dc, unnormalised rotations.
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
    row = np.array([1, 2, 3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 2], "<f4")
    header = ["ply", "format binary_little_endian 1.0", "element vertex 1",
              *(f"property float {p}" for p in names), "end_header"]  # fmt: skip
    back = read_ply(_write_raw(tmp_path / "o.ply", header, row.tobytes()))
    np.testing.assert_array_equal(back["means"], [[1, 2, 3]])
    np.testing.assert_array_equal(back["quats"], [[0, 0, 0, 1]])
    np.testing.assert_array_equal(back["scales"], [[1, 1, 1]])
    np.testing.assert_array_equal(back["colors"], [[0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(back["opacities"], [0.5])
    assert list(back["extra"]) == ["f_rest_0"] and back["extra"]["f_rest_0"][0] == 7
