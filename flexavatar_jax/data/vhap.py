"""VHAP "NeRF-style" sequence export (the layout LAM-style projects train on): reader and writer.

Layout of a sequence folder
---------------------------
::

    transforms.json                   every frame
    transforms_{train,val,test}.json  optional subsets, same schema
    images/00000_00.png               RGB or RGBA uint8 ({timestep:05d}_{camera:02d})
    fg_masks/00000_00.png             grayscale uint8 foreground mask
    flame_param/00000.npz             head parameters of one timestep
    canonical_flame_param.npz         canonical / neutral parameters of the sequence

A transforms json is a dict with `frames` (a list of dicts) and optional top-level keys. Camera
intrinsics `fl_x, fl_y, cx, cy, w, h` (and `camera_angle_x/_y`) may sit at the top level, shared by
all frames; a frame's own value overrides the top-level one. Per frame:

* `transform_matrix` — 4x4 camera->world in the **OpenGL** convention (camera looks down -z,
  y up). It is converted once, at read time, to our OpenCV world->camera `viewmat` by
  `flexavatar_jax.render.camera.opengl_to_opencv` (the writer uses `opencv_to_opengl`); no other
  code in this module touches the convention.
* `fl_x, fl_y, cx, cy` in pixels and `w, h` (image size) — the NeRF-style principal point is in
  pixel coordinates with the same +0.5 pixel-centre convention as OpenCV, so `K` copies it.
  Without `fl_x` the focal comes from `camera_angle_x` (`fl_x = w / 2 / tan(angle / 2)`); without
  `fl_y` from `camera_angle_y`, else `fl_y = fl_x` (square pixels, the NeRF default). `cx, cy,
  w, h` are required.
* `file_path`, `flame_param_path` (required), `fg_mask_path` (optional), relative to the folder.
* `timestep_index`, `camera_index` (required ints).
* Anything else (`timestep_id`, `camera_id`, `timestep_index_original`, ...) is kept verbatim in
  `VHAPFrame.extra` and written back by `SequenceWriter` (top-level extras: `metadata`).

A parameter npz holds `shape [S]`, `expr [E]`, axis-angle `rotation [3]` (global), `neck_pose [3]`,
`jaw_pose [3]`, `eyes_pose [6]` (left, right), `translation [3]`; real exports add a leading batch
dim (`[1,N]`), which is accepted. Mapped to `HeadParams` as expr -> expression, rotation ->
global_pose, the rest by name. Extra keys (`static_offset`, ...) are ignored by `head_params` and
available unparsed through `VHAPSequence.param_arrays`.

Validation (`read_sequence`)
----------------------------
*Eager, at read time:* the json (keys, types, finite rigid transforms, positive intrinsics), that
every image / mask / parameter file exists, and the content of every parameter npz (required keys,
shapes, finite values, sizes against `head_model` when given). The npz files are small and each is
parsed once and cached per timestep, so this costs about a millisecond per timestep.
*Lazy, at load time:* image and mask decoding and their size against the frame's `w, h` — decoding
every image up front would cost as much as a pass over the data. `validate_images=True` moves
those checks to read time too (decodes everything once).

Bad data raises `FileNotFoundError` (missing folder / json / file) or `ValueError` (everything
else), naming the file and, for json problems, the frame index and the key. With `skip_bad=True`
the reader skips bad frames instead, but never silently: `VHAPSequence.skipped` lists
`(path, reason)` per skipped frame, `num_skipped` counts them and an absl warning summarises them;
if every frame is bad it still raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jaxtyping import Float, UInt8
from PIL import Image

from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadModel, HeadParams
from flexavatar_jax.render.camera import opencv_to_opengl, opengl_to_opencv

SPLITS = ("train", "val", "test")
CANONICAL_PARAMS_FILE = "canonical_flame_param.npz"
# npz key -> HeadParams field, with the fixed size of the pose / translation entries.
PARAM_FIELDS = {
    "shape": "shape",
    "expr": "expression",
    "rotation": "global_pose",
    "neck_pose": "neck_pose",
    "jaw_pose": "jaw_pose",
    "eyes_pose": "eyes_pose",
    "translation": "translation",
}
_PARAM_SIZES = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
_FRAME_KEYS = ("transform_matrix", "file_path", "fg_mask_path", "flame_param_path",
               "timestep_index", "camera_index", *_INTRINSIC_KEYS)
# A real c2w is rigid; tolerate float noise from the exporter, reject scaled / sheared matrices.
_RIGID_ATOL = 1e-3

BadFrame = tuple[str, str]


def _error(cls: type[Exception], path: str | os.PathLike, message: str) -> Exception:
    """An exception whose message starts with the file it is about; `.vhap_path` lets
    `skip_bad` record the same file."""
    e = cls(f"{path}: {message}")
    e.vhap_path = str(path)
    return e


# --------------------------------------------------------------------------------------------
# Records.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class VHAPFrame:
    """One image of a sequence (one camera at one timestep), with absolute file paths.

    `K [3,3]` float32 pixel intrinsics (pixel centres at +0.5), `viewmat [4,4]` float32
    world->camera in the OpenCV convention, `width`/`height` in pixels as the json states them.
    `extra` holds the json keys this module does not interpret; `json_index` is the frame's
    position in the json it was read from (-1 for frames made by the writer before `close`).
    """

    image_path: Path
    mask_path: Path | None
    flame_param_path: Path
    timestep_index: int
    camera_index: int
    K: Float[np.ndarray, "3 3"]
    viewmat: Float[np.ndarray, "4 4"]
    width: int
    height: int
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    json_index: int = -1


# --------------------------------------------------------------------------------------------
# Cameras: the only place the OpenGL <-> OpenCV conversion is applied.
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _host_float64() -> Iterator[None]:
    # float64 on the CPU: a write -> read round trip is two 4x4 inversions, which in float32 drift
    # by up to ~2e-6 for cameras a few metres out, and an accelerator's default matmul precision
    # (TF32) would be far worse. In float64 the round trip is exact to float32 rounding.
    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.enable_x64(True))
        try:
            stack.enter_context(jax.default_device(jax.devices("cpu")[0]))
        except RuntimeError:  # no CPU backend (e.g. JAX_PLATFORMS=cuda): float64 still applies
            pass
        yield


def _viewmats_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """[N,4,4] OpenGL camera->world -> float32 OpenCV world->camera."""
    if len(c2w_gl) == 0:
        return np.zeros((0, 4, 4), np.float32)
    with _host_float64():
        return np.asarray(opengl_to_opencv(np.asarray(c2w_gl, np.float64))).astype(np.float32)


def _opengl_from_viewmats(viewmats: np.ndarray) -> np.ndarray:
    """[N,4,4] OpenCV world->camera -> float64 OpenGL camera->world."""
    with _host_float64():
        return np.asarray(opencv_to_opengl(np.asarray(viewmats, np.float64)))


def _check_rigid(m: np.ndarray) -> str | None:
    """Why `m` is not a rigid 4x4 transform, or None."""
    if m.shape != (4, 4):
        return f"shape {m.shape}, expected (4, 4)"
    if not np.all(np.isfinite(m)):
        return "contains NaN or Inf"
    if np.max(np.abs(m[3] - [0.0, 0.0, 0.0, 1.0])) > _RIGID_ATOL:
        return f"last row {m[3].tolist()}, expected [0, 0, 0, 1]"
    rot = m[:3, :3]
    if np.max(np.abs(rot @ rot.T - np.eye(3))) > _RIGID_ATOL or np.linalg.det(rot) < 0:
        return "rotation block is not a proper rotation (scaled, sheared or mirrored)"
    return None


# --------------------------------------------------------------------------------------------
# Images, masks and parameter files.
# --------------------------------------------------------------------------------------------


def _check_exists(path: Path, what: str) -> None:
    if not path.is_file():
        raise _error(FileNotFoundError, path, f"{what} not found" if not path.exists()
                     else f"{what} is not a file")


def _decode_png(path: Path, what: str) -> Image.Image:
    _check_exists(path, what)
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully, so truncated files fail here and not later
            return img.copy()
    except OSError as e:  # PIL's UnidentifiedImageError and truncation errors are OSErrors
        raise _error(ValueError, path, f"cannot decode {what} ({type(e).__name__}: {e})") from e


def _check_size(path: Path, what: str, got: tuple[int, int], expected: tuple[int, int] | None,
                source: str) -> None:
    if expected is not None and tuple(got) != tuple(expected):
        raise _error(ValueError, path, f"{what} is {got[0]}x{got[1]} (w x h) but {source} says "
                     f"w={expected[0]}, h={expected[1]}")


def read_image(
    path: str | os.PathLike, expected_size: tuple[int, int] | None = None, *, source: str = "the json"
) -> tuple[Float[np.ndarray, "h w 3"], Float[np.ndarray, "h w"] | None]:
    """Decodes an image file to float32 RGB in [0, 1] `[H,W,3]` and its alpha `[H,W]` in [0, 1]
    (None without an alpha channel). Grayscale is repeated to RGB; palette images are expanded.

    `expected_size = (width, height)`: a different size raises ValueError naming both.
    """
    path = Path(path)
    img = _decode_png(path, "image")
    _check_size(path, "image", img.size, expected_size, source)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "1":
        img = img.convert("L")
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        raise _error(ValueError, path, f"unsupported image mode {img.mode!r} (expected 8-bit RGB, "
                     "RGBA, L or LA)")
    pixels = np.asarray(img)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    colour = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, axis=-1)
    rgb = colour.astype(np.float32) / 255.0
    alpha = pixels[..., -1].astype(np.float32) / 255.0 if img.mode in ("RGBA", "LA") else None
    return rgb, alpha


def read_mask(
    path: str | os.PathLike, expected_size: tuple[int, int] | None = None, *, source: str = "the json"
) -> Float[np.ndarray, "h w"]:
    """Decodes a foreground mask to float32 `[H,W]` in [0, 1] (8-bit / 1-bit / 16-bit grayscale;
    an RGB(A) mask is accepted only when its colour channels are equal, since picking one of
    differing channels would be a guess)."""
    path = Path(path)
    img = _decode_png(path, "mask")
    _check_size(path, "mask", img.size, expected_size, source)
    if img.mode == "1":
        img = img.convert("L")
    pixels = np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return pixels.astype(np.float32) / 65535.0
    if img.mode == "L":
        return pixels.astype(np.float32) / 255.0
    if img.mode == "LA":
        return pixels[..., 0].astype(np.float32) / 255.0
    if img.mode in ("RGB", "RGBA"):
        colour = pixels[..., :3]
        if np.any(colour != colour[..., :1]):
            raise _error(ValueError, path, "mask has differing colour channels; expected grayscale")
        return colour[..., 0].astype(np.float32) / 255.0
    raise _error(ValueError, path, f"unsupported mask mode {img.mode!r} (expected grayscale)")


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    _check_exists(path, what)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except Exception as e:  # zipfile / pickle / format errors: all mean an unreadable file
        raise _error(ValueError, path, f"cannot read {what} npz ({type(e).__name__}: {e})") from e


def _parse_param_arrays(path: Path, data: Mapping[str, np.ndarray],
                        head_model: HeadModel | None) -> dict[str, np.ndarray]:
    """Validated float32 `[N]` arrays of the `PARAM_FIELDS` keys of one npz."""
    out = {}
    for key in PARAM_FIELDS:
        if key not in data:
            raise _error(ValueError, path, f"missing key {key!r} (has {sorted(data)})")
        a = np.asarray(data[key])
        # Real exports store a batch of one ([1,N]); a longer batch would be several timesteps.
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 1:
            raise _error(ValueError, path, f"{key!r} has shape {a.shape}, expected [N] or [1,N]")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise _error(ValueError, path, f"{key!r} has dtype {a.dtype}, expected float")
        if not np.all(np.isfinite(a)):
            raise _error(ValueError, path, f"{key!r} contains NaN or Inf")
        if key in _PARAM_SIZES and a.shape[0] != _PARAM_SIZES[key]:
            raise _error(ValueError, path, f"{key!r} has {a.shape[0]} entries, expected "
                         f"{_PARAM_SIZES[key]}")
        out[key] = a.astype(np.float32)
    if head_model is not None:
        for key, n in (("shape", head_model.num_shape), ("expr", head_model.num_expression)):
            if out[key].shape[0] != n:
                raise _error(ValueError, path, f"{key!r} has {out[key].shape[0]} components but "
                             f"head model {head_model.name!r} has {n}")
    return out


def _to_head_params(arrays: Mapping[str, np.ndarray]) -> HeadParams:
    # Copies, so a caller editing the returned arrays cannot corrupt the per-timestep cache.
    return HeadParams(**{field: np.array(arrays[key]) for key, field in PARAM_FIELDS.items()})


def load_head_params(path: str | os.PathLike, head_model: HeadModel | None = None) -> HeadParams:
    """Reads one parameter npz as unbatched float32 numpy `HeadParams` (`shape [S]`,
    `expression [E]`, poses `[3]`/`[6]`, `translation [3]` in the sequence's units).

    Raises FileNotFoundError for a missing file, ValueError for an unreadable file, a missing key,
    a bad shape, NaN/Inf, or S/E differing from `head_model`'s — each naming the file and key.
    """
    path = Path(path)
    return _to_head_params(_parse_param_arrays(path, _read_npz(path, "parameter"), head_model))


# --------------------------------------------------------------------------------------------
# Reader.
# --------------------------------------------------------------------------------------------


class VHAPSequence(Sequence[VHAPFrame]):
    """Frames of one sequence (a `Sequence` of `VHAPFrame`) plus loaders for their files.

    Made by `read_sequence`. Images and masks are read from disk on every call (never cached);
    the head parameters of each timestep are parsed once (at read time) and cached.
    """

    def __init__(self, folder: Path, json_path: Path, split: str | None, frames: list[VHAPFrame],
                 metadata: dict[str, Any], skipped: list[BadFrame],
                 param_cache: dict[Path, dict[str, np.ndarray]], head_model: HeadModel | None):
        self.folder = folder
        self.json_path = json_path
        self.split = split
        self.frames = tuple(frames)
        self.metadata = metadata
        self.skipped = tuple(skipped)
        self.head_model = head_model
        self._param_cache = param_cache
        self._param_path = {f.timestep_index: f.flame_param_path for f in self.frames}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index):
        return self.frames[index]

    def __repr__(self) -> str:
        return (f"VHAPSequence({str(self.json_path)!r}, {len(self)} frames, "
                f"{len(self.timestep_indices)} timesteps, {len(self.camera_indices)} cameras, "
                f"{self.num_skipped} skipped)")

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @functools.cached_property
    def timestep_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self._param_path))

    @functools.cached_property
    def camera_indices(self) -> tuple[int, ...]:
        return tuple(sorted({f.camera_index for f in self.frames}))

    def _frame(self, frame: VHAPFrame | int) -> VHAPFrame:
        return self.frames[frame] if isinstance(frame, int) else frame

    def _source(self, frame: VHAPFrame) -> str:
        return f"frame {frame.json_index} of {self.json_path.name}"

    def load_image(self, frame: VHAPFrame | int) -> Float[np.ndarray, "h w 3"]:
        """float32 RGB `[H,W,3]` in [0, 1] of a frame (or frame index); see `read_image`."""
        return self.load_image_with_alpha(frame)[0]

    def load_image_with_alpha(
        self, frame: VHAPFrame | int
    ) -> tuple[Float[np.ndarray, "h w 3"], Float[np.ndarray, "h w"] | None]:
        """RGB `[H,W,3]` and alpha `[H,W]` (None for an RGB file), float32 in [0, 1]."""
        frame = self._frame(frame)
        return read_image(frame.image_path, (frame.width, frame.height), source=self._source(frame))

    def load_mask(self, frame: VHAPFrame | int) -> Float[np.ndarray, "h w"]:
        """float32 foreground mask `[H,W]` in [0, 1]; ValueError for a frame without a mask."""
        frame = self._frame(frame)
        if frame.mask_path is None:
            raise ValueError(f"{self.json_path}: frame {frame.json_index} has no 'fg_mask_path'")
        return read_mask(frame.mask_path, (frame.width, frame.height), source=self._source(frame))

    def head_params(self, timestep_index: int) -> HeadParams:
        """Unbatched float32 numpy `HeadParams` of a timestep (from the cache)."""
        if timestep_index not in self._param_path:
            raise KeyError(f"{self.json_path}: no frame has timestep_index {timestep_index}")
        return _to_head_params(self._param_cache[self._param_path[timestep_index]])

    def param_arrays(self, timestep_index: int) -> dict[str, np.ndarray]:
        """Every array of a timestep's npz as stored, extras (`static_offset`, ...) included;
        read from disk on each call (not cached: extras can be large)."""
        if timestep_index not in self._param_path:
            raise KeyError(f"{self.json_path}: no frame has timestep_index {timestep_index}")
        return _read_npz(self._param_path[timestep_index], "parameter")

    @functools.cached_property
    def _canonical_arrays(self) -> dict[str, np.ndarray]:
        path = self.folder / CANONICAL_PARAMS_FILE
        return _parse_param_arrays(path, _read_npz(path, "canonical parameter"), self.head_model)

    def canonical_params(self) -> HeadParams:
        """The sequence's `canonical_flame_param.npz` as `HeadParams` (read on first use, then
        cached; FileNotFoundError if the file is absent)."""
        return _to_head_params(self._canonical_arrays)


def _json_int(value: Any, json_path: Path, index: int, key: str) -> int:
    # bool is an int subclass in Python; `true` as an index is a broken file, not 1.
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value != int(value)):
        raise _error(ValueError, json_path, f"frame {index}: {key!r} = {value!r} is not an integer")
    return int(value)


def _json_float(value: Any, json_path: Path, index: int, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _error(ValueError, json_path, f"frame {index}: {key!r} = {value!r} is not a finite number")
    return float(value)


def _parse_frame(raw: Any, index: int, top: Mapping[str, Any], folder: Path,
                 json_path: Path) -> dict[str, Any]:
    """Checks one json frame; returns its fields with the OpenGL c2w still unconverted."""
    if not isinstance(raw, dict):
        raise _error(ValueError, json_path, f"frame {index} is a {type(raw).__name__}, not a dict")

    def get(key: str, required: bool = True) -> Any:
        value = raw.get(key, top.get(key))
        if value is None and required:
            raise _error(ValueError, json_path, f"frame {index}: missing key {key!r}")
        return value

    for key in ("transform_matrix", "file_path", "flame_param_path", "timestep_index",
                "camera_index"):
        if raw.get(key) is None:
            raise _error(ValueError, json_path, f"frame {index}: missing key {key!r}")
    width = _json_int(get("w"), json_path, index, "w")
    height = _json_int(get("h"), json_path, index, "h")
    if width <= 0 or height <= 0:
        raise _error(ValueError, json_path, f"frame {index}: image size w={width}, h={height}")
    focal = {}
    for key, angle_key, size in (("fl_x", "camera_angle_x", width), ("fl_y", "camera_angle_y", height)):
        if get(key, required=False) is not None:
            focal[key] = _json_float(get(key), json_path, index, key)
        elif get(angle_key, required=False) is not None:
            angle = _json_float(get(angle_key), json_path, index, angle_key)
            focal[key] = 0.5 * size / math.tan(0.5 * angle)
        elif key == "fl_y" and "fl_x" in focal:
            focal[key] = focal["fl_x"]  # square pixels: the NeRF convention when only x is given
        else:
            raise _error(ValueError, json_path, f"frame {index}: missing key {key!r} (and no "
                         f"{angle_key!r} to derive it from)")
        if not focal[key] > 0:
            raise _error(ValueError, json_path, f"frame {index}: {key!r} = {focal[key]} is not positive")
    cx = _json_float(get("cx"), json_path, index, "cx")
    cy = _json_float(get("cy"), json_path, index, "cy")
    # Float32 from the json's decimal text: the writer stores float32 values, so this is exact.
    K = np.array([[focal["fl_x"], 0.0, cx], [0.0, focal["fl_y"], cy], [0.0, 0.0, 1.0]], np.float32)

    try:
        c2w = np.asarray(raw["transform_matrix"], np.float64)
    except (TypeError, ValueError) as e:
        raise _error(ValueError, json_path, f"frame {index}: 'transform_matrix' is not a numeric "
                     f"4x4 matrix ({e})") from e
    problem = _check_rigid(c2w)
    if problem:
        raise _error(ValueError, json_path, f"frame {index}: 'transform_matrix' {problem}")

    paths = {}
    for key in ("file_path", "fg_mask_path", "flame_param_path"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise _error(ValueError, json_path, f"frame {index}: {key!r} = {value!r} is not a string")
        paths[key] = None if value is None else folder / value
    return dict(
        image_path=paths["file_path"],
        mask_path=paths["fg_mask_path"],
        flame_param_path=paths["flame_param_path"],
        timestep_index=_json_int(raw["timestep_index"], json_path, index, "timestep_index"),
        camera_index=_json_int(raw["camera_index"], json_path, index, "camera_index"),
        K=K,
        c2w=c2w,
        width=width,
        height=height,
        extra={k: v for k, v in raw.items() if k not in _FRAME_KEYS},
        json_index=index,
    )


def read_sequence(
    folder: str | os.PathLike,
    split: str | None = None,
    *,
    skip_bad: bool = False,
    validate_images: bool = False,
    head_model: HeadModel | None = None,
) -> VHAPSequence:
    """Reads `transforms.json` (or `transforms_{split}.json`) of a VHAP NeRF-style export.

    What is checked when is described in the module docstring: json content, file existence and
    parameter files eagerly; image/mask decoding and sizes at load time unless
    `validate_images=True`. `head_model`: parameter sizes must match its `num_shape` /
    `num_expression`. `skip_bad=True` skips bad frames, recording them in `.skipped`.
    """
    folder = Path(folder)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected None or one of {SPLITS}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: sequence folder not found")
    json_path = folder / ("transforms.json" if split is None else f"transforms_{split}.json")
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: transforms json not found")
    try:
        top = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_path}: cannot parse json ({type(e).__name__}: {e})") from e
    if not isinstance(top, dict):
        raise ValueError(f"{json_path}: top level is a {type(top).__name__}, expected a dict")
    if not isinstance(top.get("frames"), list):
        raise ValueError(f"{json_path}: missing key 'frames' (a list of frame dicts)")
    raw_frames = top["frames"]
    metadata = {k: v for k, v in top.items() if k != "frames" and k not in _INTRINSIC_KEYS}
    shared = {k: v for k, v in top.items() if k in _INTRINSIC_KEYS}

    parsed, skipped = [], []
    param_cache: dict[Path, dict[str, np.ndarray] | Exception] = {}
    param_path_of: dict[int, Path] = {}
    seen: dict[tuple[int, int], int] = {}
    for index, raw in enumerate(raw_frames):
        try:
            f = _parse_frame(raw, index, shared, folder, json_path)
            key = (f["timestep_index"], f["camera_index"])
            if key in seen:
                raise _error(ValueError, json_path, f"frame {index}: timestep {key[0]}, camera "
                             f"{key[1]} already appears as frame {seen[key]}")
            known = param_path_of.get(f["timestep_index"])
            if known is not None and known != f["flame_param_path"]:
                raise _error(ValueError, json_path, f"frame {index}: 'flame_param_path' "
                             f"{f['flame_param_path']} differs from {known} of another frame of "
                             f"timestep {f['timestep_index']}")
            _check_exists(f["image_path"], "image")
            if f["mask_path"] is not None:
                _check_exists(f["mask_path"], "mask")
            path = f["flame_param_path"]
            if path not in param_cache:
                try:
                    param_cache[path] = _parse_param_arrays(path, _read_npz(path, "parameter"),
                                                            head_model)
                except (FileNotFoundError, ValueError) as e:
                    param_cache[path] = e  # remembered: later frames of the timestep are bad too
            if isinstance(param_cache[path], Exception):
                raise param_cache[path]
            if validate_images:
                source = f"frame {index} of {json_path.name}"
                read_image(f["image_path"], (f["width"], f["height"]), source=source)
                if f["mask_path"] is not None:
                    read_mask(f["mask_path"], (f["width"], f["height"]), source=source)
        except (FileNotFoundError, ValueError) as e:
            if not skip_bad:
                raise
            skipped.append((getattr(e, "vhap_path", str(json_path)), str(e)))
            continue
        seen[key] = index
        param_path_of[f["timestep_index"]] = f["flame_param_path"]
        parsed.append(f)

    if skipped:
        shown = "; ".join(reason for _, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        logging.warning("%s: skipped %d of %d frames: %s%s", json_path, len(skipped),
                        len(raw_frames), shown, more)
        if not parsed:
            raise ValueError(f"{json_path}: all {len(skipped)} frames are bad: {shown}{more}")
    elif not raw_frames:
        logging.warning("%s: the json lists no frames", json_path)

    viewmats = _viewmats_from_opengl(np.stack([f.pop("c2w") for f in parsed]) if parsed
                                     else np.zeros((0, 4, 4)))
    frames = [VHAPFrame(**f, viewmat=vm) for f, vm in zip(parsed, viewmats)]
    good_params = {p: v for p, v in param_cache.items() if not isinstance(v, Exception)}
    return VHAPSequence(folder, json_path, split, frames, metadata, skipped, good_params, head_model)


# --------------------------------------------------------------------------------------------
# Writer.
# --------------------------------------------------------------------------------------------


def _image_to_uint8(image: np.ndarray, what: str, channels: tuple[int, ...]) -> np.ndarray:
    """uint8 as is; bool -> 0/255; float in [0, 1] -> rounded. Out-of-range floats are an error
    (clipping would hide a bug upstream)."""
    image = np.asarray(image)
    if channels == (0,):
        ok = image.ndim == 2
    else:
        ok = image.ndim == 3 and image.shape[-1] in channels
    if not ok:
        raise ValueError(f"{what} has shape {image.shape}, expected "
                         f"{'[H,W]' if channels == (0,) else f'[H,W,C] with C in {channels}'}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"{what} has dtype {image.dtype}, expected uint8, bool or float in [0, 1]")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{what} contains NaN or Inf")
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"{what} has values in [{image.min()}, {image.max()}], expected [0, 1]")
    return np.round(image.astype(np.float64) * 255.0).astype(np.uint8)


def _params_to_arrays(params: HeadParams, what: str) -> dict[str, np.ndarray]:
    out = {}
    for key, field in PARAM_FIELDS.items():
        a = np.asarray(getattr(params, field), np.float32)
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 1:
            raise ValueError(f"{what}: {field} has shape {a.shape}, expected unbatched [N]")
        if key in _PARAM_SIZES and a.shape[0] != _PARAM_SIZES[key]:
            raise ValueError(f"{what}: {field} has {a.shape[0]} entries, expected {_PARAM_SIZES[key]}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: {field} contains NaN or Inf")
        out[key] = a
    return out


class SequenceWriter:
    """Writes a VHAP NeRF-style sequence incrementally (one frame at a time, as a renderer makes
    them): images, masks and parameter files are written immediately, the transforms json(s) by
    `close()`. Use as a context manager; an exception inside the block skips writing the json, so
    a folder without `transforms.json` marks an unfinished export.

    Files: `images/{t:05d}_{c:02d}.png`, `fg_masks/{t:05d}_{c:02d}.png`,
    `flame_param/{t:05d}.npz` (float32, unbatched `[N]`), `canonical_flame_param.npz`.
    """

    def __init__(self, folder: str | os.PathLike, *, overwrite: bool = False,
                 metadata: Mapping[str, Any] | None = None):
        self.folder = Path(folder)
        if (self.folder / "transforms.json").exists() and not overwrite:
            raise FileExistsError(f"{self.folder}: already holds transforms.json (overwrite=False)")
        bad = set(metadata or {}) & {"frames", *_INTRINSIC_KEYS}
        if bad:
            raise ValueError(f"metadata may not set {sorted(bad)}: they are written per frame")
        self.metadata = dict(metadata or {})
        self._frames: list[dict[str, Any]] = []
        self._splits: list[str | None] = []
        self._keys: set[tuple[int, int]] = set()
        self._param_sizes: dict[str, int] = {}
        self._timesteps_with_params: set[int] = set()
        self._closed = False
        for sub in ("images", "fg_masks", "flame_param"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "SequenceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()

    def add_frame(
        self,
        image: UInt8[np.ndarray, "h w c"] | Float[np.ndarray, "h w c"],
        viewmat: Float[np.ndarray, "4 4"],
        K: Float[np.ndarray, "3 3"],
        timestep_index: int,
        camera_index: int,
        *,
        mask: UInt8[np.ndarray, "h w"] | Float[np.ndarray, "h w"] | None = None,
        split: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> VHAPFrame:
        """Writes one frame's image (RGB or RGBA, uint8 or float in [0, 1]) and mask (`[H,W]`).

        `viewmat` is OpenCV world->camera, `K` pixel intrinsics without skew; they are stored as
        OpenGL c2w + `fl_x, fl_y, cx, cy`. `split` adds the frame to `transforms_{split}.json`.
        `extra`: more json keys for this frame (`timestep_id` / `camera_id` default to the
        zero-padded indices). Returns the frame as `read_sequence` will report it.
        """
        if self._closed:
            raise RuntimeError(f"{self.folder}: writer is closed")
        t, c = int(timestep_index), int(camera_index)
        if t < 0 or c < 0:
            raise ValueError(f"timestep_index {t} / camera_index {c} must be non-negative")
        if (t, c) in self._keys:
            raise ValueError(f"{self.folder}: timestep {t}, camera {c} was already added")
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        clash = set(extra or {}) & set(_FRAME_KEYS)
        if clash:
            raise ValueError(f"extra may not override {sorted(clash)}")
        try:  # fail now, not at close() after every frame has been rendered
            json.dumps(dict(extra or {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra is not JSON-serialisable ({e})") from e
        what = f"frame (timestep {t}, camera {c})"
        pixels = _image_to_uint8(image, f"{what} image", (3, 4))
        height, width = pixels.shape[:2]
        mask_pixels = None if mask is None else _image_to_uint8(mask, f"{what} mask", (0,))
        if mask_pixels is not None and mask_pixels.shape != (height, width):
            raise ValueError(f"{what}: mask is {mask_pixels.shape}, image is {(height, width)}")

        K = np.asarray(K, np.float32)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise ValueError(f"{what}: K must be a finite 3x3 matrix, got shape {K.shape}")
        if K[0, 1] != 0 or K[1, 0] != 0 or K[2].tolist() != [0.0, 0.0, 1.0]:
            raise ValueError(f"{what}: K {K.tolist()} has skew or is not a pinhole matrix; the "
                             "NeRF-style format stores only fl_x, fl_y, cx, cy")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise ValueError(f"{what}: K has non-positive focal lengths")
        viewmat = np.asarray(viewmat, np.float32)
        problem = _check_rigid(viewmat.astype(np.float64))
        if problem:
            raise ValueError(f"{what}: viewmat {problem}")
        c2w = _opengl_from_viewmats(viewmat[None])[0]

        image_rel = f"images/{t:05d}_{c:02d}.png"
        mask_rel = None if mask_pixels is None else f"fg_masks/{t:05d}_{c:02d}.png"
        param_rel = f"flame_param/{t:05d}.npz"
        write_atomic(self.folder / image_rel, lambda fh: Image.fromarray(pixels).save(fh, "PNG"))
        if mask_pixels is not None:
            write_atomic(self.folder / mask_rel,
                          lambda fh: Image.fromarray(mask_pixels, "L").save(fh, "PNG"))

        fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
        record = {
            "timestep_index": t,
            "camera_index": c,
            "timestep_id": f"{t:05d}",
            "camera_id": f"{c:02d}",
            "file_path": image_rel,
            "flame_param_path": param_rel,
            # float32 values print exactly as float64 decimals, so K survives the json unchanged.
            "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": int(width), "h": int(height),
            "camera_angle_x": 2.0 * math.atan(0.5 * width / fx),
            "camera_angle_y": 2.0 * math.atan(0.5 * height / fy),
            "transform_matrix": c2w.tolist(),
            **dict(extra or {}),
        }
        if mask_rel is not None:
            record["fg_mask_path"] = mask_rel
        self._frames.append(record)
        self._splits.append(split)
        self._keys.add((t, c))
        return VHAPFrame(
            image_path=self.folder / image_rel,
            mask_path=None if mask_rel is None else self.folder / mask_rel,
            flame_param_path=self.folder / param_rel,
            timestep_index=t, camera_index=c, K=K, viewmat=viewmat, width=int(width),
            height=int(height), extra={k: v for k, v in record.items() if k not in _FRAME_KEYS},
        )

    def _write_params(self, path: Path, params: HeadParams, what: str,
                      extra_arrays: Mapping[str, np.ndarray] | None) -> Path:
        arrays = _params_to_arrays(params, what)
        for key in ("shape", "expr"):
            n = self._param_sizes.setdefault(key, arrays[key].shape[0])
            if arrays[key].shape[0] != n:
                raise ValueError(f"{what}: {PARAM_FIELDS[key]} has {arrays[key].shape[0]} "
                                 f"components, earlier parameters of this sequence have {n}")
        clash = set(extra_arrays or {}) & set(PARAM_FIELDS)
        if clash:
            raise ValueError(f"{what}: extra_arrays may not override {sorted(clash)}")
        arrays.update({k: np.asarray(v) for k, v in (extra_arrays or {}).items()})
        write_atomic(path, lambda fh: np.savez(fh, **arrays))
        return path

    def add_timestep_params(self, timestep_index: int, params: HeadParams,
                            extra_arrays: Mapping[str, np.ndarray] | None = None) -> Path:
        """Writes `flame_param/{t:05d}.npz` from unbatched `HeadParams` (jax or numpy; `[1,N]`
        is squeezed) plus optional extra arrays (e.g. `static_offset`). Returns the path."""
        t = int(timestep_index)
        path = self.folder / f"flame_param/{t:05d}.npz"
        self._write_params(path, params, f"parameters of timestep {t}", extra_arrays)
        self._timesteps_with_params.add(t)
        return path

    def set_canonical_params(self, params: HeadParams,
                             extra_arrays: Mapping[str, np.ndarray] | None = None) -> Path:
        """Writes `canonical_flame_param.npz` (same layout as a timestep's npz)."""
        return self._write_params(self.folder / CANONICAL_PARAMS_FILE, params,
                                  "canonical parameters", extra_arrays)

    def _write_json(self, path: Path, frames: list[dict[str, Any]]) -> None:
        doc = {
            **self.metadata,
            "timestep_indices": sorted({f["timestep_index"] for f in frames}),
            "camera_indices": sorted({f["camera_index"] for f in frames}),
            "frames": frames,
        }
        write_atomic(path, lambda fh: fh.write(json.dumps(doc, indent=2).encode()))

    def close(self) -> Path:
        """Writes `transforms.json` (every frame) and `transforms_{split}.json` for each split
        used; every frame's timestep must have parameters by now. Returns the main json path."""
        if self._closed:
            raise RuntimeError(f"{self.folder}: writer is already closed")
        missing = sorted({f["timestep_index"] for f in self._frames} - self._timesteps_with_params)
        if missing:
            raise ValueError(f"{self.folder}: no parameters for timesteps {missing} "
                             "(call add_timestep_params)")
        for split in SPLITS:
            subset = [f for f, s in zip(self._frames, self._splits) if s == split]
            split_path = self.folder / f"transforms_{split}.json"
            if subset:
                self._write_json(split_path, subset)
            elif split_path.exists():
                split_path.unlink()  # left by an overwritten export; it would list foreign frames
        path = self.folder / "transforms.json"
        self._write_json(path, self._frames)
        self._closed = True
        return path
