"""VHAP NeRF-style export: writer -> reader round trip, the OpenGL camera convention checked on a
hand-written json, and every bad-data path (raise, or skip and count with skip_bad=True)."""

import json
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from flexavatar_jax.data import vhap
from flexavatar_jax.head import HeadParams
from flexavatar_jax.render import camera

W, H = 24, 16
NUM_SHAPE, NUM_EXPR = 5, 4
# (timestep, camera) -> split: disjoint subsets, as the VHAP export makes them.
SPLIT_OF = {(0, 0): "train", (0, 1): "train", (1, 0): "val", (1, 1): "test"}


def _random_params(rng, num_shape=NUM_SHAPE, num_expr=NUM_EXPR) -> HeadParams:
    f = lambda n: rng.normal(size=n).astype(np.float32)  # noqa: E731
    return HeadParams(f(num_shape), f(num_expr), f(3), f(3), f(3), f(6), f(3))


def _write_tiny(folder, seed=0):
    """2 timesteps x 2 cameras; camera 1 writes RGBA images. Returns everything written."""
    rng = np.random.default_rng(seed)
    eyes = np.array([[0.0, 0.1, 1.5], [0.9, 0.3, 1.1]], np.float32)
    viewmats = np.asarray(camera.look_at(eyes, np.zeros_like(eyes)))
    Ks = np.stack([np.asarray(camera.intrinsics_from_fov(30.0, W, H)),
                   np.asarray(camera.intrinsics_from_fov(22.5, W, H))])
    written = dict(viewmats=viewmats, Ks=Ks, images={}, masks={}, params={}, frames={})
    with vhap.SequenceWriter(folder, metadata={"source": "test"}) as writer:
        for t in range(2):
            for c in range(2):
                image = rng.integers(0, 256, (H, W, 3 + c), dtype=np.uint8)
                mask = rng.integers(0, 256, (H, W), dtype=np.uint8)
                written["frames"][t, c] = writer.add_frame(
                    image, viewmats[c], Ks[c], t, c, mask=mask, split=SPLIT_OF[t, c],
                    extra={"camera_id": f"cam{c}"})
                written["images"][t, c], written["masks"][t, c] = image, mask
            written["params"][t] = _random_params(rng)
            writer.add_timestep_params(t, written["params"][t],
                                       extra_arrays={"static_offset": np.ones((7, 3), np.float32)})
        written["canonical"] = _random_params(rng)
        writer.set_canonical_params(written["canonical"])
    return written


@pytest.fixture
def tiny(tmp_path):
    return tmp_path, _write_tiny(tmp_path)


def _assert_params_equal(a: HeadParams, b: HeadParams):
    for field in ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose",
                  "translation"):
        got = getattr(a, field)
        assert got.dtype == np.float32 and got.ndim == 1, field
        np.testing.assert_array_equal(got, np.asarray(getattr(b, field)), err_msg=field)


def _edit_json(folder, edit, name="transforms.json"):
    path = folder / name
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return path


# ---------------------------------------------------------------------------------------------
# Round trip.
# ---------------------------------------------------------------------------------------------


def test_round_trip_is_exact(tiny):
    folder, w = tiny
    seq = vhap.read_sequence(folder)
    assert len(seq) == 4 and seq.num_skipped == 0 and seq.skipped == ()
    assert seq.timestep_indices == (0, 1) and seq.camera_indices == (0, 1)
    assert seq.metadata["source"] == "test"
    for frame in seq:
        t, c = frame.timestep_index, frame.camera_index
        assert (frame.width, frame.height) == (W, H)
        assert frame.image_path == folder / f"images/{t:05d}_{c:02d}.png"
        assert frame.extra["camera_id"] == f"cam{c}" and frame.extra["timestep_id"] == f"{t:05d}"
        assert frame.K.dtype == np.float32 and frame.viewmat.dtype == np.float32
        np.testing.assert_array_equal(frame.K, w["Ks"][c])
        np.testing.assert_allclose(frame.viewmat, w["viewmats"][c], rtol=0, atol=1e-6)
        # The writer's own record of the frame matches what the reader reports.
        np.testing.assert_allclose(w["frames"][t, c].viewmat, frame.viewmat, rtol=0, atol=1e-6)

        rgb, alpha = seq.load_image_with_alpha(frame)
        assert rgb.dtype == np.float32 and rgb.shape == (H, W, 3)
        np.testing.assert_array_equal(rgb, w["images"][t, c][..., :3].astype(np.float32) / 255)
        if c == 1:
            np.testing.assert_array_equal(alpha, w["images"][t, c][..., 3].astype(np.float32) / 255)
        else:
            assert alpha is None
        np.testing.assert_array_equal(seq.load_image(frame), rgb)
        mask = seq.load_mask(frame)
        assert mask.dtype == np.float32 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, w["masks"][t, c].astype(np.float32) / 255)
    for t in range(2):
        _assert_params_equal(seq.head_params(t), w["params"][t])
        np.testing.assert_array_equal(seq.param_arrays(t)["static_offset"], np.ones((7, 3)))
        assert seq.param_arrays(t)["expr"].shape == (NUM_EXPR,)  # written unbatched
    _assert_params_equal(seq.canonical_params(), w["canonical"])


def test_split_files_hold_their_subsets(tiny):
    folder, _ = tiny
    for split in vhap.SPLITS:
        seq = vhap.read_sequence(folder, split)
        got = {(f.timestep_index, f.camera_index) for f in seq}
        assert got == {k for k, s in SPLIT_OF.items() if s == split}
        assert seq.json_path == folder / f"transforms_{split}.json"


def test_cached_params_cannot_be_corrupted_by_the_caller(tiny):
    folder, w = tiny
    seq = vhap.read_sequence(folder)
    seq.head_params(0).expression[:] = 99.0
    _assert_params_equal(seq.head_params(0), w["params"][0])


def test_params_are_parsed_once_per_timestep(tiny):
    folder, _ = tiny
    with mock.patch.object(vhap, "_read_npz", wraps=vhap._read_npz) as read_npz:
        seq = vhap.read_sequence(folder)
        for frame in seq:
            seq.head_params(frame.timestep_index)
    assert read_npz.call_count == 2  # 2 timesteps, 4 frames, 4 head_params calls


def test_float_images_are_quantised_by_rounding(tmp_path):
    image = np.full((H, W, 3), 0.5, np.float32)
    with vhap.SequenceWriter(tmp_path) as writer:
        writer.add_frame(image, np.eye(4), np.asarray(camera.intrinsics_from_fov(30.0, W, H)), 0, 0)
        writer.add_timestep_params(0, _random_params(np.random.default_rng(0)))
    seq = vhap.read_sequence(tmp_path)
    np.testing.assert_array_equal(seq.load_image(0), np.full((H, W, 3), 128 / 255, np.float32))
    with pytest.raises(ValueError, match="has no 'fg_mask_path'"):
        seq.load_mask(0)


# ---------------------------------------------------------------------------------------------
# Independent check of the camera convention: a json written by hand, not by the writer.
# ---------------------------------------------------------------------------------------------


def _hand_written_sequence(folder, frames, top=None, params_shape=lambda n: (1, n)):
    (folder / "images").mkdir()
    (folder / "flame_param").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "images/a.png")
    # Real VHAP exports batch every parameter as [1,N].
    arrays = {k: np.arange(n, dtype=np.float32).reshape(params_shape(n)) for k, n in
              dict(shape=3, expr=2, rotation=3, neck_pose=3, jaw_pose=3, eyes_pose=6,
                   translation=3).items()}
    np.savez(folder / "flame_param/00000.npz", **arrays, static_offset=np.zeros((1, 9, 3)))
    base = dict(file_path="images/a.png", flame_param_path="flame_param/00000.npz",
                timestep_index=0)
    doc = dict(top or {}, frames=[dict(base, **f) for f in frames])
    (folder / "transforms.json").write_text(json.dumps(doc))


def test_hand_written_opengl_camera_projects_as_expected(tmp_path):
    # OpenGL c2w with identity rotation at (0, 0, 2): the camera looks down -z at the origin, y up.
    c2w = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]
    top = dict(fl_x=20.0, fl_y=20.0, cx=W / 2, cy=H / 2, w=W, h=H)
    _hand_written_sequence(tmp_path, [dict(transform_matrix=c2w, camera_index=0),
                                      dict(transform_matrix=c2w, camera_index=1, cx=10.5)], top)
    seq = vhap.read_sequence(tmp_path)
    frame = seq[0]
    np.testing.assert_array_equal(frame.K, [[20, 0, W / 2], [0, 20, H / 2], [0, 0, 1]])
    assert seq[1].K[0, 2] == 10.5  # a frame's own value overrides the top-level one
    points = np.array([[0, 0, 0], [0, 0.1, 0], [0.1, 0, 0]], np.float32)
    uv, z = map(np.asarray, camera.project_points(points, frame.viewmat, frame.K))
    np.testing.assert_allclose(uv[0], [W / 2, H / 2], atol=1e-6)
    assert z[0] == pytest.approx(2.0, abs=1e-6)
    assert uv[1, 1] < uv[0, 1]  # world +y is image up (smaller row)
    assert uv[2, 0] > uv[0, 0]  # world +x is image right for a camera looking down -z
    np.testing.assert_allclose(np.asarray(camera.camera_center(frame.viewmat)), [0, 0, 2], atol=1e-6)


def test_batched_npz_params_and_fov_intrinsics_are_accepted(tmp_path):
    top = dict(camera_angle_x=2 * np.arctan(0.5 * W / 30.0), cx=12.0, cy=8.0, w=W, h=H)
    _hand_written_sequence(tmp_path, [dict(transform_matrix=np.eye(4).tolist(), camera_index=0)], top)
    seq = vhap.read_sequence(tmp_path)
    np.testing.assert_allclose(seq[0].K, [[30, 0, 12], [0, 30, 8], [0, 0, 1]], rtol=1e-6)
    params = seq.head_params(0)
    assert params.shape.shape == (3,) and params.expression.shape == (2,)
    np.testing.assert_array_equal(params.eyes_pose, np.arange(6, dtype=np.float32))
    assert seq.param_arrays(0)["static_offset"].shape == (1, 9, 3)  # extras kept as stored


def test_multi_row_npz_params_are_rejected(tmp_path):
    top = dict(fl_x=30.0, cx=12.0, cy=8.0, w=W, h=H)
    _hand_written_sequence(tmp_path, [dict(transform_matrix=np.eye(4).tolist(), camera_index=0)],
                           top, params_shape=lambda n: (2, n // 2) if n % 2 == 0 else (n,))
    with pytest.raises(ValueError, match=r"00000\.npz: 'expr' has shape \(2, 1\)"):
        vhap.read_sequence(tmp_path)


# ---------------------------------------------------------------------------------------------
# Bad data.
# ---------------------------------------------------------------------------------------------


def test_missing_folder_and_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vhap.read_sequence(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="transforms.json"):
        vhap.read_sequence(tmp_path)
    _write_tiny(tmp_path)
    (tmp_path / "transforms_val.json").unlink()
    with pytest.raises(FileNotFoundError, match="transforms_val.json"):
        vhap.read_sequence(tmp_path, "val")
    with pytest.raises(ValueError, match="unknown split"):
        vhap.read_sequence(tmp_path, "training")


@pytest.mark.parametrize("key", ["transform_matrix", "file_path", "flame_param_path",
                                 "timestep_index", "camera_index", "cx", "cy", "w", "h", "fl_x"])
def test_json_missing_key_names_file_frame_and_key(tiny, key):
    folder, _ = tiny

    def drop(doc):
        del doc["frames"][2][key]
        if key == "fl_x":
            del doc["frames"][2]["camera_angle_x"]

    _edit_json(folder, drop)
    with pytest.raises(ValueError, match=rf"transforms\.json: frame 2: missing key '{key}'"):
        vhap.read_sequence(folder)


@pytest.mark.parametrize("key,value,message", [
    ("transform_matrix", [[1, 0, 0], [0, 1, 0], [0, 0, 1]], r"shape \(3, 3\)"),
    ("transform_matrix", np.diag([2.0, 2, 2, 1]).tolist(), "not a proper rotation"),
    ("transform_matrix", "eye", "not a numeric 4x4"),
    ("timestep_index", 1.5, "not an integer"),
    ("fl_x", -3.0, "not positive"),
    ("cx", None, "missing key 'cx'"),
    ("file_path", 3, "not a string"),
])
def test_json_bad_values_name_file_frame_and_key(tiny, key, value, message):
    folder, _ = tiny
    _edit_json(folder, lambda doc: doc["frames"][1].__setitem__(key, value))
    with pytest.raises(ValueError, match=rf"transforms\.json: frame 1: .*{message}"):
        vhap.read_sequence(folder)


def test_duplicate_frame_is_rejected(tiny):
    folder, _ = tiny
    _edit_json(folder, lambda doc: doc["frames"].append(doc["frames"][0]))
    with pytest.raises(ValueError, match="frame 4: timestep 0, camera 0 already appears as frame 0"):
        vhap.read_sequence(folder)


@pytest.mark.parametrize("rel", ["images/00001_00.png", "fg_masks/00001_00.png",
                                 "flame_param/00001.npz"])
def test_missing_file_is_named_at_read_time(tiny, rel):
    folder, _ = tiny
    (folder / rel).unlink()
    with pytest.raises(FileNotFoundError, match=rel):
        vhap.read_sequence(folder)


@pytest.mark.parametrize("rel,loader", [("images/00000_01.png", "load_image"),
                                        ("fg_masks/00000_01.png", "load_mask")])
def test_corrupt_image_or_mask_fails_lazily_or_up_front(tiny, rel, loader):
    folder, _ = tiny
    (folder / rel).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    seq = vhap.read_sequence(folder)  # lazy: decoding happens at load time
    getattr(seq, loader)(0)  # other frames still load
    with pytest.raises(ValueError, match=rf"{rel}: cannot decode"):
        getattr(seq, loader)(1)
    with pytest.raises(ValueError, match=rf"{rel}: cannot decode"):
        vhap.read_sequence(folder, validate_images=True)


@pytest.mark.parametrize("rel,loader", [("images/00001_01.png", "load_image"),
                                        ("fg_masks/00001_01.png", "load_mask")])
def test_wrong_image_size_names_file_and_both_sizes(tiny, rel, loader):
    folder, _ = tiny
    shape = (H + 1, W, 3) if rel.startswith("images") else (H + 1, W)
    Image.fromarray(np.zeros(shape, np.uint8)).save(folder / rel)
    seq = vhap.read_sequence(folder)
    message = rf"{rel}: .* is {W}x{H + 1} \(w x h\) but frame 3 of transforms\.json says w={W}, h={H}"
    with pytest.raises(ValueError, match=message):
        getattr(seq, loader)(3)
    with pytest.raises(ValueError, match=message):
        vhap.read_sequence(folder, validate_images=True)


def _rewrite_npz(path, **changes):
    arrays = dict(np.load(path))
    arrays.update(changes)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
    np.savez(path, **arrays)


@pytest.mark.parametrize("key", ["expr", "translation", "eyes_pose"])
def test_nan_params_name_file_and_key(tiny, key):
    folder, _ = tiny
    path = folder / "flame_param/00001.npz"
    bad = np.load(path)[key].copy()
    bad[0] = np.inf if key == "translation" else np.nan
    _rewrite_npz(path, **{key: bad})
    with pytest.raises(ValueError, match=rf"00001\.npz: '{key}' contains NaN or Inf"):
        vhap.read_sequence(folder)


@pytest.mark.parametrize("key", list(vhap.PARAM_FIELDS))
def test_absent_param_key_names_file_and_key(tiny, key):
    folder, _ = tiny
    _rewrite_npz(folder / "flame_param/00000.npz", **{key: None})
    with pytest.raises(ValueError, match=rf"00000\.npz: missing key '{key}'"):
        vhap.read_sequence(folder)


def test_corrupt_npz_is_named(tiny):
    folder, _ = tiny
    (folder / "flame_param/00001.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match=r"00001\.npz: cannot read parameter npz"):
        vhap.read_sequence(folder)


def test_canonical_params_missing_is_named(tiny):
    folder, _ = tiny
    (folder / vhap.CANONICAL_PARAMS_FILE).unlink()
    seq = vhap.read_sequence(folder)
    with pytest.raises(FileNotFoundError, match="canonical_flame_param.npz"):
        seq.canonical_params()


def test_head_model_sizes_are_checked(tiny, procedural_head):
    folder, _ = tiny
    S, E = procedural_head.num_shape, procedural_head.num_expression
    with pytest.raises(ValueError, match=rf"00000\.npz: 'shape' has {NUM_SHAPE} components but "
                                         rf"head model .* has {S}"):
        vhap.read_sequence(folder, head_model=procedural_head)
    zeros = HeadParams(*(np.zeros(n, np.float32) for n in (S, E + 1, 3, 3, 3, 6, 3)))
    np.savez(folder / "flame_param/00000.npz", **vhap._params_to_arrays(zeros, "test"))
    with pytest.raises(ValueError, match=rf"00000\.npz: 'expr' has {E + 1} components but "
                                         rf"head model .* has {E}"):
        vhap.load_head_params(folder / "flame_param/00000.npz", procedural_head)
    zeros = zeros.replace(expression=np.zeros(E, np.float32))
    np.savez(folder / "flame_param/00000.npz", **vhap._params_to_arrays(zeros, "test"))
    loaded = vhap.load_head_params(folder / "flame_param/00000.npz", procedural_head)
    assert loaded.shape.shape == (S,) and loaded.expression.shape == (E,)


# ---------------------------------------------------------------------------------------------
# skip_bad: skipped and counted, never silent.
# ---------------------------------------------------------------------------------------------


def test_skip_bad_skips_counts_and_warns(tiny):
    folder, _ = tiny
    (folder / "images/00000_01.png").unlink()
    _edit_json(folder, lambda doc: doc["frames"][2].pop("camera_index"))
    with mock.patch.object(vhap.logging, "warning") as warning:
        seq = vhap.read_sequence(folder, skip_bad=True)
    assert [(f.timestep_index, f.camera_index) for f in seq] == [(0, 0), (1, 1)]
    assert seq.num_skipped == 2
    (path0, reason0), (path1, reason1) = seq.skipped
    assert path0 == str(folder / "images/00000_01.png") and "image not found" in reason0
    assert path1 == str(folder / "transforms.json") and "frame 2: missing key 'camera_index'" in reason1
    warning.assert_called_once()
    assert "skipped %d of %d frames" in warning.call_args.args[0]
    assert warning.call_args.args[2:4] == (2, 4)


def test_skip_bad_skips_every_frame_of_a_bad_timestep(tiny):
    folder, _ = tiny
    _rewrite_npz(folder / "flame_param/00001.npz", expr=np.full(NUM_EXPR, np.nan, np.float32))
    seq = vhap.read_sequence(folder, skip_bad=True)
    assert seq.timestep_indices == (0,) and len(seq) == 2 and seq.num_skipped == 2
    assert all(p.endswith("00001.npz") and "'expr' contains NaN" in r for p, r in seq.skipped)
    with pytest.raises(KeyError, match="timestep_index 1"):
        seq.head_params(1)


def test_skip_bad_with_validate_images_skips_undecodable_images(tiny):
    folder, _ = tiny
    (folder / "fg_masks/00001_00.png").write_bytes(b"garbage")
    assert len(vhap.read_sequence(folder, skip_bad=True)) == 4  # lazy: not noticed yet
    seq = vhap.read_sequence(folder, skip_bad=True, validate_images=True)
    assert len(seq) == 3 and seq.skipped[0][0] == str(folder / "fg_masks/00001_00.png")


def test_skip_bad_still_raises_when_nothing_is_left(tiny):
    folder, _ = tiny
    for rel in ("flame_param/00000.npz", "flame_param/00001.npz"):
        (folder / rel).unlink()
    with pytest.raises(ValueError, match="all 4 frames are bad"):
        vhap.read_sequence(folder, skip_bad=True)


# ---------------------------------------------------------------------------------------------
# Writer input checks.
# ---------------------------------------------------------------------------------------------


def test_writer_rejects_bad_input(tmp_path):
    K = np.asarray(camera.intrinsics_from_fov(30.0, W, H))
    rng = np.random.default_rng(0)
    writer = vhap.SequenceWriter(tmp_path)
    with pytest.raises(ValueError, match=r"values in \[.*\], expected \[0, 1\]"):
        writer.add_frame(np.full((H, W, 3), 1.5, np.float32), np.eye(4), K, 0, 0)
    with pytest.raises(ValueError, match="mask is"):
        writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4), K, 0, 0,
                         mask=np.zeros((H, W + 1), np.uint8))
    skewed = K.copy()
    skewed[0, 1] = 0.5
    with pytest.raises(ValueError, match="skew"):
        writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4), skewed, 0, 0)
    with pytest.raises(ValueError, match="not a proper rotation"):
        writer.add_frame(np.zeros((H, W, 3), np.uint8), np.diag([1.0, 1, -1, 1]), K, 0, 0)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4), K, 0, 0, extra={"x": object()})
    writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4), K, 0, 0)
    with pytest.raises(ValueError, match="already added"):
        writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4), K, 0, 0)
    bad = _random_params(rng).replace(jaw_pose=np.array([0, np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="timestep 0: jaw_pose contains NaN"):
        writer.add_timestep_params(0, bad)
    with pytest.raises(ValueError, match=r"no parameters for timesteps \[0\]"):
        writer.close()
    writer.add_timestep_params(0, _random_params(rng))
    with pytest.raises(ValueError, match="earlier parameters of this sequence have"):
        writer.add_timestep_params(1, _random_params(rng, num_expr=NUM_EXPR + 1))
    writer.close()
    with pytest.raises(FileExistsError, match="already holds transforms.json"):
        vhap.SequenceWriter(tmp_path)
    vhap.SequenceWriter(tmp_path, overwrite=True)


def test_writer_exception_leaves_no_json(tmp_path):
    with pytest.raises(RuntimeError, match="render failed"):
        with vhap.SequenceWriter(tmp_path) as writer:
            writer.add_frame(np.zeros((H, W, 3), np.uint8), np.eye(4),
                             np.asarray(camera.intrinsics_from_fov(30.0, W, H)), 0, 0)
            raise RuntimeError("render failed")
    assert not (tmp_path / "transforms.json").exists()


def test_annotations_are_checked_by_jaxtyping(tiny):
    jaxtyping = pytest.importorskip("jaxtyping")
    beartype = pytest.importorskip("beartype")
    folder, _ = tiny
    read_image = jaxtyping.jaxtyped(typechecker=beartype.beartype)(vhap.read_image)
    read_mask = jaxtyping.jaxtyped(typechecker=beartype.beartype)(vhap.read_mask)
    rgb, alpha = read_image(folder / "images/00000_01.png", (W, H))
    assert rgb.shape == (H, W, 3) and alpha.shape == (H, W)
    assert read_mask(folder / "fg_masks/00000_01.png").shape == (H, W)
