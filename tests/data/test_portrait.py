"""Portrait preprocessing (`flexavatar_jax.data.portrait`, `flexavatar-jax prepare`) on real photos
shipped inside installed packages, on the synthetic engine's renders, and on bad input.

Framing tolerance (the claim `prepare` makes): a prepared crop, detected again, has its eye-mouth
distance within 3% of `TRAINING_FRAMING.eye_mouth` and its eye-mouth midpoint within 1% of the
image side (5 px at 512²) of the training position. The training data's own spread is far wider
(eye-mouth fraction 0.145-0.213 between its 5% and 95% quantiles).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from flexavatar_jax.data import portrait

SCALE_TOLERANCE = 0.03  # relative, eye-mouth distance
CENTER_TOLERANCE = 0.01  # fraction of the image side
GRACE_HOPPER = pathlib.Path(__import__("matplotlib").get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut).save(d / "astronaut.png")
    Image.fromarray(np.concatenate([astronaut, astronaut], axis=1)).save(d / "pair.png")
    Image.fromarray(astronaut).convert("L").save(d / "grey.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(d / "noise.png")
    data = (d / "astronaut.png").read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 3])
    (d / "notimage.jpg").write_text("not an image")
    return d


def _check_framing(crop: np.ndarray) -> portrait.Face:
    faces = portrait.detect_faces(crop)
    assert len(faces) == 1
    got, want = portrait.face_framing(faces[0], crop.shape[0]), portrait.TRAINING_FRAMING
    assert abs(got.eye_mouth / want.eye_mouth - 1.0) < SCALE_TOLERANCE, got
    assert abs(got.center_x - want.center_x) < CENTER_TOLERANCE, got
    assert abs(got.center_y - want.center_y) < CENTER_TOLERANCE, got
    return faces[0]


# ---------------------------------------------------------------------------------------------- real faces
def test_astronaut_has_one_face_and_its_crop_has_the_training_framing(astronaut):
    import beartype
    import jaxtyping

    faces = portrait.detect_faces(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.landmarks.shape == (portrait.NUM_LANDMARKS, 2) and face.landmarks.dtype == np.float32
    x0, y0, x1, y1 = face.box
    inside = ((face.landmarks >= [x0 - 10, y0 - 10]) & (face.landmarks <= [x1 + 10, y1 + 10])).all(1)
    assert inside.mean() > 0.9 and portrait.LANDMARK_SCHEME == "ibug68"
    right_eye, left_eye = face.eye_centers
    assert right_eye[0] < left_eye[0] < 300 and face.mouth_center[1] > left_eye[1]  # image left = subject's right

    checked = jaxtyping.jaxtyped(typechecker=beartype.beartype)(portrait.prepare_portrait)
    crop, report = checked(astronaut, 512, name="astronaut")
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    _check_framing(crop)
    # The report's own landmarks sit exactly at the target framing (by construction).
    by_report = portrait.face_framing(portrait.Face(box=(0, 0, 1, 1), landmarks=report.landmarks, score=1.0,
                                                    detector="hog"), 512)
    assert by_report.eye_mouth == pytest.approx(portrait.TRAINING_FRAMING.eye_mouth, abs=1e-4)
    assert report.detector == "hog" and report.matte == "grabcut" and 0.15 < report.mask_coverage < 0.6
    assert report.scale == pytest.approx(512 / report.crop_side)
    assert abs(report.roll_deg) < 10 and report.outside_fraction < 0.05
    # Matted: the corners are the white background, the face centre is not.
    assert (crop[:8, :8] == 255).all() and (crop[:8, -8:] == 255).all()
    cx, cy = np.round(np.array([portrait.TRAINING_FRAMING.center_x, portrait.TRAINING_FRAMING.center_y]) * 512)
    assert crop[int(cy) - 4:int(cy) + 4, int(cx) - 4:int(cx) + 4].mean() < 230
    json.dumps(report.to_dict())  # JSON-ready


def test_grace_hopper_portrait_from_matplotlib_is_framed_too():
    """The other real portrait shipped inside an installed dependency (matplotlib's sample data)."""
    image = portrait.load_image(GRACE_HOPPER)
    crop, report = portrait.prepare_portrait(image, 256, background=(0.0, 0.0, 0.0), name=GRACE_HOPPER.name)
    assert report.detector == "hog" and crop.shape == (256, 256, 3)
    assert (crop[:4, :4] == 0).all()  # black background as asked
    _check_framing(crop)


def test_training_framing_constants_match_the_synthetic_engine():
    """Re-measure the framing from the engine's camera sampler (another seed than the constants')."""
    measured = portrait.measure_training_framing(seed=1)
    assert measured["num_cameras"] > 3000
    want = portrait.TRAINING_FRAMING
    assert measured["eye_mouth"] == pytest.approx(want.eye_mouth, abs=0.003)
    assert measured["center_x"] == pytest.approx(want.center_x, abs=0.004)
    assert measured["center_y"] == pytest.approx(want.center_y, abs=0.004)
    assert measured["eye_mouth_q05"] < want.eye_mouth < measured["eye_mouth_q95"]


def test_detector_finds_the_synthetic_faces_where_the_framing_says():
    """The detector's landmarks on frontal synthetic renders agree with the projected head-model
    points the framing constants come from (so real and synthetic faces are framed alike)."""
    from flexavatar_jax.data import motion
    from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld
    from flexavatar_jax.render import camera

    size, fov, fill = 256, 21.0, 0.675
    world = SyntheticWorld(SyntheticConfig(image_size=size, uv_resolution=128))
    distance = 0.3 / (2 * np.tan(np.deg2rad(fov) / 2) * fill)  # as motion.sample_cameras places them
    viewmat = np.asarray(camera.look_at(motion.HEAD_CENTER + np.array([0, 0, distance], np.float32),
                                        motion.HEAD_CENTER), np.float32)
    K = np.asarray(camera.intrinsics_from_fov(fov, size, size), np.float32)
    points = np.array([*portrait._HEAD_EYE_POINTS, portrait._HEAD_MOUTH_POINT])
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    pix = (cam / cam[:, 2:]) @ K.T
    eye_mid, mouth = pix[:2, :2].mean(0), pix[2, :2]
    projected = (np.linalg.norm(mouth - eye_mid) / size, *((eye_mid + mouth) / 2 / size))
    detected = []
    for identity in range(4):
        ident = world.identity(identity)
        rgb, _, _ = world.render(ident, world.model.zero_params().replace(shape=ident.shape), viewmat[None], K[None])
        image = np.round(np.clip(np.asarray(rgb[0]), 0, 1) * 255).astype(np.uint8)
        faces = portrait.detect_faces(image, cnn_fallback=False)
        assert len(faces) == 1, identity
        f = portrait.face_framing(faces[0], size)
        detected.append((f.eye_mouth, f.center_x, f.center_y))
    median = np.median(np.array(detected), axis=0)
    # The identities' shapes differ from the mean head the projection uses: a few percent.
    assert median[0] == pytest.approx(projected[0], rel=0.08)
    assert median[1:] == pytest.approx(projected[1:], abs=0.025)


# ---------------------------------------------------------------------------------------------- bad input
def test_two_portraits_side_by_side_are_refused_naming_file_and_count(photos, tmp_path):
    with pytest.raises(ValueError, match=r"pair\.png: found 2 faces"):
        portrait.prepare_files([photos / "pair.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_photo_without_a_face_is_refused_naming_the_file(tmp_path):
    """skimage's cat (chelsea): a real photo, no human face (both detectors look)."""
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    with pytest.raises(ValueError, match=r"chelsea\.png: no face found"):
        portrait.prepare_files([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_and_missing_files_are_named(photos, tmp_path):
    with pytest.raises(ValueError, match=r"truncated\.png: corrupt or truncated"):
        portrait.read_image(photos / "truncated.png")
    with pytest.raises(ValueError, match=r"notimage\.jpg: not a readable image"):
        portrait.load_image(photos / "notimage.jpg")
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        portrait.prepare_files([photos / "missing.png"], tmp_path / "out")
    with pytest.raises(ValueError, match=r"2 of 2 images.*truncated\.png.*notimage\.jpg"):
        portrait.prepare_files([photos / "truncated.png", photos / "notimage.jpg"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nothing_is_written_when_one_image_fails(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut.png").write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"noise\.png: no face found"):
        portrait.prepare_files([photos / "astronaut.png", photos / "noise.png"], out)
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png"]
    assert (out / "astronaut.png").read_bytes() == b"previous"


def test_grayscale_and_rgba_photos(photos, astronaut, tmp_path):
    # RGBA: the file's own alpha is the matte; the colour under alpha 0 (noise) must not show.
    matte = np.zeros(astronaut.shape[:2], np.uint8)
    matte[40:200, 150:300] = 255
    colour = astronaut.copy()
    colour[matte == 0] = np.random.default_rng(1).integers(0, 256, (int((matte == 0).sum()), 3), dtype=np.uint8)
    Image.fromarray(np.dstack([colour, matte])).save(tmp_path / "cutout.png")
    reports = portrait.prepare_files([photos / "grey.png", tmp_path / "cutout.png"], tmp_path / "out", size=256)
    grey = np.asarray(Image.open(tmp_path / "out" / "grey.png"))
    cutout = np.asarray(Image.open(tmp_path / "out" / "cutout.png"))
    assert grey.shape == cutout.shape == (256, 256, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert [r.matte for r in reports] == ["grabcut", "alpha"]
    assert (cutout[:6] == 255).all()  # above the alpha box: background, not the noise under it
    assert 0.1 < reports[1].mask_coverage < 0.9
    written = json.loads((tmp_path / "out" / portrait.REPORT_NAME).read_text())
    assert [pathlib.Path(r["output"]).name for r in written] == ["grey.png", "cutout.png"]
    assert written[0]["face_box"] and written[0]["detector"] == "hog"
    # An alpha channel that is opaque everywhere is no matte; load_image composites real transparency.
    Image.fromarray(np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])).save(tmp_path / "opaque.png")
    assert portrait.read_image(tmp_path / "opaque.png")[1] is None
    assert (portrait.load_image(tmp_path / "cutout.png")[0, 0] == 255).all()


def test_bad_arguments(astronaut, photos, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        portrait.prepare_portrait(astronaut.astype(np.float32), 256)
    with pytest.raises(ValueError, match="background"):
        portrait.prepare_portrait(astronaut, 256, background=(2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="same file"):
        portrait.prepare_files([photos / "grey.png", tmp_path / "grey.png"], tmp_path / "out")
    with pytest.raises(ValueError, match="between 1 and 4"):
        portrait.prepared_images([photos / "grey.png"] * 5, 64)


def test_missing_extra_names_it(monkeypatch, photos, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)  # `import dlib` raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[faces\]"):
        portrait.require_faces_extra()
    with pytest.raises(ImportError, match=r"faces.*dlib"):
        portrait.prepare_files([photos / "astronaut.png"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- command line
def test_prepare_command(photos, tmp_path, monkeypatch, capsys):
    from flexavatar_jax import cli

    monkeypatch.setenv("FLEXAVATAR_XLA_CACHE", "0")
    out = tmp_path / "prepared"
    assert cli.main(["flexavatar-jax", "prepare", f"--images={photos / 'astronaut.png'}", f"--out={out}",
                     "--size=128"]) == 0
    assert "astronaut.png" in capsys.readouterr().out
    assert np.asarray(Image.open(out / "astronaut.png")).shape == (128, 128, 3)
    assert len(json.loads((out / portrait.REPORT_NAME).read_text())) == 1
    assert cli.main(["flexavatar-jax", "prepare", f"--images={photos / 'pair.png'}", f"--out={tmp_path / 'x'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flexavatar-jax prepare: error:") and "found 2 faces" in err[0]
    assert cli.main(["flexavatar-jax", "prepare", f"--images={photos / 'pair.png'}", f"--out={tmp_path / 'x'}",
                     "--background=blue"]) == 2
    assert not (tmp_path / "x").exists()
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    assert cli.main(["flexavatar-jax", "prepare", f"--images={photos / 'astronaut.png'}", f"--out={out}"]) == 2
    assert ".[faces]" in capsys.readouterr().err
