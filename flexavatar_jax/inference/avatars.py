"""The library behind the user commands: reconstruct an avatar (from photos or from synthetic
dataset frames), save / load it, drive it with a motion, and render videos, turntables and a
`.ply` of it.

    avatar = reconstruct_from_images(system, params, ["me_front.png", "me_left.png"])
    save_avatar("me.npz", avatar, system, source="...")
    avatar, meta = load_avatar("me.npz", system)       # checked against the system once, here
    motion = driving.load_motion("talk.npz", system.head.num_expression)  # HeadParams [T]
    frames = animate_frames(system, params, avatar, motion)
    media.write_video("talk.mp4", frames)

Frames are float32 numpy `[T,H,W,3]` in [0,1] (clipped: the compositing sum can overshoot 1 by
float rounding, and `media.write_video` rejects anything outside [0,1]). Every jitted function is
built once per `FlexAvatar` instance and reused, so a command compiles each program once.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from flexavatar_jax.config import to_dict
from flexavatar_jax.data import eval_sets, media
from flexavatar_jax.data import motion as motion_lib
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.data.synthetic import SyntheticWorld
from flexavatar_jax.files import read_npz, write_atomic
from flexavatar_jax.head import HeadParams
from flexavatar_jax.inference.params import model_config_differences
from flexavatar_jax.models.avatar import Avatar, FlexAvatar
from flexavatar_jax.models.uv_decoder import NUM_ATTRIBUTES
from flexavatar_jax.render import ply

AVATAR_FORMAT = "flexavatar-jax avatar"
AVATAR_VERSION = 1
# Avatar field -> array name in the file (the format keeps its version-1 names).
AVATAR_ARRAYS = {"raw_maps": "raw_maps", "identity_features": "identity_features", "shape_coeffs": "shape"}
# Model-config entries that change what an avatar's maps mean when animated. Everything else
# (encoder, lifter, decoder width, dtype) only affects how the maps were made.
ANIMATION_CONFIG_KEYS = ("uv_resolution", "decoder.id_channels", "dense_regions", "unet.enabled", "unet.channels",
                         "driving", "subtract_neutral", "driving_scale", "init_opacity", "init_scale",
                         "offset_scale")
WHITE = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------- jit cache
@functools.lru_cache(maxsize=16)
def _jitted(system: FlexAvatar, name: str) -> Callable:
    """One jitted program per (system, name): a fresh `jax.jit` wrapper per call would re-trace."""
    return jax.jit(_PROGRAMS[name](system))


def _animate_and_render(system: FlexAvatar):
    def chunk(params, avatar, frames: HeadParams, viewmat, K, background):
        def one(frame):
            g = system.animate(params, avatar, frame)
            rgb, _ = system.render(g, viewmat[None], K[None], backgrounds=background[None])
            return rgb[0]

        return jax.vmap(one)(frames)

    return chunk


def _render_views(system: FlexAvatar):
    def views(gaussians, viewmats, Ks, background):
        bg = jnp.broadcast_to(background, (viewmats.shape[0], 3))
        return system.render(gaussians, viewmats, Ks, backgrounds=bg)[0]

    return views


_PROGRAMS: dict[str, Callable[[FlexAvatar], Callable]] = {
    "reconstruct": lambda s: s.reconstruct,
    "animate": lambda s: s.animate,
    "animate_and_render": _animate_and_render,
    "render_views": _render_views,
}


# ---------------------------------------------------------------------------------------------- files
def save_avatar(path: str | os.PathLike, avatar: Avatar, system: FlexAvatar, *, source: str = "") -> None:
    """Write one avatar of `system` (unbatched: `raw_maps [K,K,14]`, `identity_features [K,K,C]`,
    `shape_coeffs [S]`) as a `.npz` holding the three float32 arrays (`raw_maps`,
    `identity_features`, `shape`) and a `metadata` JSON string: the system's model config, its
    input `image_size` and a free-text `source` (e.g. the photo paths). Parent folders are created.

    Raises ValueError for an avatar that does not fit `system` (`FlexAvatar.check_avatar`) or has
    non-finite values."""
    arrays = {key: np.asarray(getattr(avatar, field), np.float32) for field, key in AVATAR_ARRAYS.items()}
    k, c, s = _avatar_dims(arrays, "avatar")
    system.check_avatar(avatar)
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"avatar.{name} has {int(np.sum(~np.isfinite(a)))} non-finite values")
    meta = dict(format=AVATAR_FORMAT, version=AVATAR_VERSION, image_size=int(system.image_size), source=str(source),
                uv_resolution=k, id_channels=c, num_shape=s, model=to_dict(system.cfg))
    # A file object: np.savez would append ".npz" to other names.
    write_atomic(path, lambda f: np.savez(f, metadata=np.asarray(json.dumps(meta)), **arrays))


def _avatar_dims(arrays: dict[str, np.ndarray], where: str) -> tuple[int, int, int]:
    """(K, C, S) of unbatched avatar arrays (keyed by file name); ValueError naming the array otherwise."""
    raw, ident, shape = (arrays[n] for n in AVATAR_ARRAYS.values())
    if raw.ndim != 3 or raw.shape[0] != raw.shape[1] or raw.shape[2] != NUM_ATTRIBUTES:
        raise ValueError(f"{where}: raw_maps must be [K,K,{NUM_ATTRIBUTES}] (one unbatched avatar), got "
                         f"{list(raw.shape)}")
    k = raw.shape[0]
    if ident.ndim != 3 or ident.shape[:2] != (k, k):
        raise ValueError(f"{where}: identity_features must be [{k},{k},C] like raw_maps, got {list(ident.shape)}")
    if shape.ndim != 1:
        raise ValueError(f"{where}: shape must be [S], got {list(shape.shape)}")
    return int(k), int(ident.shape[2]), int(shape.shape[0])


def load_avatar(path: str | os.PathLike, system: FlexAvatar | None = None) -> tuple[Avatar, dict]:
    """Read a `save_avatar` file -> (Avatar of jnp float32 arrays, metadata dict). The arrays are
    checked against each other and the recorded dimensions; with `system`, also that the avatar
    fits it (`FlexAvatar.check_avatar`) and that every `ANIMATION_CONFIG_KEYS` entry of the
    recorded model config equals the system's. FileNotFoundError for a missing file, ValueError
    naming the path for anything unreadable, inconsistent or incompatible."""
    path = Path(path)
    contents = read_npz(path, "avatar file", "avatar")
    missing = [k for k in ("metadata", *AVATAR_ARRAYS.values()) if k not in contents]
    if missing:
        raise ValueError(f"{path}: not an avatar file, missing {missing} (has {sorted(contents)})")
    try:
        meta = json.loads(str(contents["metadata"][()]))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != AVATAR_FORMAT:
        raise ValueError(f"{path}: metadata does not describe a {AVATAR_FORMAT!r} file")
    if meta.get("version") != AVATAR_VERSION:
        raise ValueError(f"{path}: avatar format version {meta.get('version')!r}, this code reads {AVATAR_VERSION}")
    arrays = {}
    for name in AVATAR_ARRAYS.values():
        a = contents[name]
        if a.dtype != np.float32:
            raise ValueError(f"{path}: {name} has dtype {a.dtype}, expected float32")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: {name} has non-finite values")
        arrays[name] = a
    dims = _avatar_dims(arrays, str(path))
    recorded = tuple(meta.get(k) for k in ("uv_resolution", "id_channels", "num_shape"))
    if dims != recorded:
        raise ValueError(f"{path}: arrays have (K, channels, S) = {dims} but the metadata records {recorded}")
    avatar = Avatar(**{field: jnp.asarray(arrays[key]) for field, key in AVATAR_ARRAYS.items()})
    if system is not None:
        try:
            system.check_avatar(avatar)
            _check_recorded_config(system, meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return avatar, meta


def _check_recorded_config(system: FlexAvatar, meta: dict) -> None:
    differences = model_config_differences(system.cfg, meta.get("model", {}))
    problems = [f"model.{key} is {differences[key][0]!r} in the avatar's config but {differences[key][1]!r} in the "
                "system's" for key in ANIMATION_CONFIG_KEYS if key in differences]
    if problems:
        raise ValueError("avatar does not match the model: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- reconstruct
def reconstruct_from_images(system: FlexAvatar, params: dict, paths: str | os.PathLike | Sequence,
                            background: Sequence[float] = WHITE, prepare: bool = False) -> Avatar:
    """An avatar from 1–4 square portrait files (`media.load_portraits` at `system.image_size`;
    0 or >4 files, non-square or unreadable images raise there). Images with an alpha channel
    are composited over `background` (the synthetic training images have a solid background).
    With `prepare`, the files are photos as they come: each is cropped around its one face with
    the training framing and matted to `background` first (`data.portrait.prepared_images`,
    the optional `faces` extra; a photo with no face or several faces raises ValueError).

    Raises ValueError for a lifter that needs cameras (`dual_uv`, `symmetric`): photos carry no
    cameras or tracked head parameters."""
    if system.needs_cameras():
        raise ValueError(f"the {system.cfg.lifter_type!r} lifter needs calibrated cameras and tracked head "
                         "parameters for its inputs, which photos do not carry: reconstruct from dataset frames "
                         "(reconstruct_from_dataset) or use a model trained with the default 'queries' lifter")
    if prepare:
        from flexavatar_jax.data import portrait

        images, _ = portrait.prepared_images(paths, system.image_size, background)
        return _jitted(system, "reconstruct")(params, jnp.asarray(images))
    images, alphas = media.load_portraits(paths, size=system.image_size)
    if alphas is not None:
        a = alphas[..., None]
        images = images * a + (1.0 - a) * np.asarray(background, np.float32)
    return _jitted(system, "reconstruct")(params, jnp.asarray(images))


def reconstruct_from_dataset(system: FlexAvatar, params: dict, world: SyntheticWorld, identity_id: int,
                             num_views: int = 4, seed: int = 0) -> tuple[Avatar, np.ndarray]:
    """An avatar of synthetic identity `identity_id` from `num_views` of its frames, drawn as the
    self-reenactment eval set draws them (`data.eval_sets.build_eval_set`; the first view is frontal).
    Cameras and tracked head params are passed when the lifter reads them.
    Returns (avatar, input images `[num_views,H,W,3]`)."""
    if world.config.image_size != system.image_size:
        raise ValueError(f"the world renders {world.config.image_size}² images but the model takes "
                         f"{system.image_size}² (model.image_size)")
    es = eval_sets.build_eval_set(world, [identity_id], num_views, num_targets=1, mode="self", seed=seed)
    images = es["input_images"][0, :num_views]
    fn = _jitted(system, "reconstruct")
    if not system.needs_cameras():
        return fn(params, jnp.asarray(images)), images
    tracked = HeadParams(**{f: jnp.asarray(es[f"input_{f}"][0, :num_views]) for f in PARAM_FIELDS})
    avatar = fn(params, jnp.asarray(images), viewmats=jnp.asarray(es["input_viewmats"][0, :num_views]),
                Ks=jnp.asarray(es["input_Ks"][0, :num_views]), tracked=tracked)
    return avatar, images


# ---------------------------------------------------------------------------------------------- render
def _chunks(n: int, batch: int):
    """(start, indices [batch]) per chunk; the last chunk repeats index n-1 so every chunk has
    the same shape (one compile)."""
    for start in range(0, n, batch):
        yield start, np.minimum(np.arange(start, start + batch), n - 1)


def _check_motion(system: FlexAvatar, motion: HeadParams) -> int:
    """Frame count T of a motion `HeadParams [T]`; ValueError naming a field of the wrong size."""
    sizes = dict(expression=system.head.num_expression, global_pose=3, neck_pose=3, jaw_pose=3, eyes_pose=6,
                 translation=3)
    t = int(np.shape(motion.expression)[0]) if np.ndim(motion.expression) == 2 else -1
    for name, n in sizes.items():
        shape = tuple(np.shape(getattr(motion, name)))
        if shape != (t, n):
            raise ValueError(f"motion.{name} must be [T,{n}] (T frames, head model {system.head.name!r}), got "
                             f"{list(shape)}")
    if t == 0:
        raise ValueError("no frames to animate (T=0)")
    return t


def animate_frames(system: FlexAvatar, params: dict, avatar: Avatar, motion: HeadParams, viewmat=None, K=None,
                   batch: int = 8, background: Sequence[float] = WHITE) -> np.ndarray:
    """Render `avatar` under a motion (`HeadParams` with leading [T]; see `data.driving`; its
    `shape` is ignored) from one fixed camera -> float32 `[T,H,W,3]` in [0,1] at
    `system.image_size`. Global pose and translation move the head in front of the camera.
    `viewmat [4,4]`, `K [3,3]` default to `motion.front_camera`. Frames are animated and rendered
    `batch` at a time (one jitted vmap; the last chunk is padded)."""
    system.check_avatar(avatar)
    t = _check_motion(system, motion)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if (viewmat is None) != (K is None):
        raise ValueError("give both viewmat and K, or neither (front camera)")
    if viewmat is None:
        viewmat, K = motion_lib.front_camera(system.image_size)
    batch = min(batch, t)
    fn = _jitted(system, "animate_and_render")
    cam = (jnp.asarray(viewmat, jnp.float32), jnp.asarray(K, jnp.float32), jnp.asarray(background, jnp.float32))
    # The frame's shape is the avatar's (FlexAvatar.animate): an empty placeholder keeps the
    # chunks' shapes independent of where the motion came from.
    fields = {f: np.asarray(getattr(motion, f), np.float32) for f in _MOTION_FIELDS}
    frames = np.zeros((t, system.image_size, system.image_size, 3), np.float32)
    for start, idx in _chunks(t, batch):
        chunk = HeadParams(shape=jnp.zeros((len(idx), 0), jnp.float32),
                           **{f: jnp.asarray(v[idx]) for f, v in fields.items()})
        rgb = fn(params, avatar, chunk, *cam)
        stop = min(start + batch, t)
        frames[start:stop] = np.asarray(rgb)[: stop - start]
    return np.clip(frames, 0.0, 1.0)


_MOTION_FIELDS = ("expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def _still_frame(system: FlexAvatar, frame: HeadParams | None) -> HeadParams:
    """`frame` (one unbatched `HeadParams`) or the head model's neutral, zero-pose frame."""
    if frame is None:
        return system.head.zero_params()
    _check_motion(system, jax.tree.map(lambda x: np.asarray(x)[None], frame))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), frame)


def turntable_frames(system: FlexAvatar, params: dict, avatar: Avatar, num_frames: int = 36,
                     frame: HeadParams | None = None, batch: int = 8,
                     background: Sequence[float] = WHITE) -> np.ndarray:
    """A 360° orbit (`motion.turntable_cameras`, first frame frontal) around the avatar at one
    driving `frame` (default: neutral, zero pose) -> float32 `[T,H,W,3]` in [0,1]."""
    system.check_avatar(avatar)
    gaussians = _jitted(system, "animate")(params, avatar, _still_frame(system, frame))
    viewmats, Ks = motion_lib.turntable_cameras(num_frames, system.image_size)
    fn = _jitted(system, "render_views")
    frames = np.zeros((num_frames, system.image_size, system.image_size, 3), np.float32)
    bg = jnp.asarray(background, jnp.float32)
    for start, idx in _chunks(num_frames, min(batch, num_frames)):
        rgb = fn(gaussians, jnp.asarray(viewmats[idx]), jnp.asarray(Ks[idx]), bg)
        stop = min(start + len(idx), num_frames)
        frames[start:stop] = np.asarray(rgb)[: stop - start]
    return np.clip(frames, 0.0, 1.0)


def export_avatar_ply(system: FlexAvatar, params: dict, avatar: Avatar, path: str | os.PathLike,
                      frame: HeadParams | None = None) -> int:
    """Write the avatar's Gaussians at one driving `frame` (default: neutral, zero pose, no
    translation) to a standard 3DGS `.ply` (`render.ply.export_ply`: colours stored as given,
    opacities clamped away from 0/1 for the logit). Returns the number of Gaussians written
    (`system.num_gaussians`)."""
    system.check_avatar(avatar)
    gaussians = _jitted(system, "animate")(params, avatar, _still_frame(system, frame))
    return ply.export_ply(path, {k: np.asarray(v) for k, v in gaussians.items()})


__all__ = [
    "ANIMATION_CONFIG_KEYS", "animate_frames", "export_avatar_ply", "load_avatar", "reconstruct_from_dataset",
    "reconstruct_from_images", "save_avatar", "turntable_frames",
]
