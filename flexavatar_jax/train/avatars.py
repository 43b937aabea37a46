"""The library behind the user commands: reconstruct an avatar (from photos or from synthetic
dataset frames), save / load it, drive it with a motion, and render videos, turntables and a
`.ply` of it.

    avatar = reconstruct_from_images(system, params, ["me_front.png", "me_left.png"])
    save_avatar("me.npz", avatar, config_json=config.model.to_dict(), image_size=512, source="...")
    avatar, meta = load_avatar("me.npz"); check_avatar(system, avatar, meta)
    motion = load_motion("talk.npz", system.head.num_expression)        # or driving_sequence(world, ...)
    frames = animate_frames(system, params, avatar, *motion_arrays(motion))
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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.data import media, motion
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.data.synthetic import SyntheticWorld
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models.avatar import Avatar, FlexAvatar
from flexavatar_jax.render import camera, ply
from flexavatar_jax.train import evaluate as ev

AVATAR_FORMAT = "flexavatar-jax avatar"
AVATAR_VERSION = 1
AVATAR_ARRAYS = ("raw_maps", "identity_features", "shape")
NUM_POSE = 15  # axis-angle global, neck, jaw, left eye, right eye
# Model-config entries that change what an avatar's maps mean when animated. Everything else
# (encoder, lifter, decoder width, dtype) only affects how the maps were made.
ANIMATION_CONFIG_KEYS = ("uv_resolution", "decoder.id_channels", "dense_regions", "unet.enabled", "unet.channels",
                         "driving", "subtract_neutral", "driving_scale", "init_opacity", "init_scale",
                         "offset_scale")
# Default front camera: 0.6 m in front of the head; a 32° vertical field of view frames the
# ~0.3 m head at ~85% of the image height (like the turntable).
FRONT_DISTANCE_M = 0.6
FRONT_FOV_DEG = 32.0
WHITE = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------------------------- jit cache
@functools.lru_cache(maxsize=16)
def _jitted(system: FlexAvatar, name: str) -> Callable:
    """One jitted program per (system, name): a fresh `jax.jit` wrapper per call would re-trace."""
    return jax.jit(_PROGRAMS[name](system))


def _animate_and_render(system: FlexAvatar):
    def chunk(params, avatar, expression, pose, translation, viewmat, K, background):
        def one(e, p, t):
            g = system.animate(params, avatar, e, p, t)
            rgb, _ = system.render(g, viewmat[None], K[None], backgrounds=background[None])
            return rgb[0]

        return jax.vmap(one)(expression, pose, translation)

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
def _json_normalised(tree: Any) -> Any:
    """Tuples -> lists etc., so a live config compares equal to one read back from JSON."""
    return json.loads(json.dumps(tree))


def _lookup(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return KeyError
        tree = tree[part]
    return tree


def save_avatar(path: str | os.PathLike, avatar: Avatar, *, config_json: dict, image_size: int, source: str) -> None:
    """Write one avatar (unbatched: `raw_maps [K,K,14]`, `identity_features [K,K,C]`, `shape [S]`)
    as a `.npz` holding the three float32 arrays and a `metadata` JSON string: the model config
    (`config_json` = `config.model.to_dict()` of the system that made it), the input `image_size`
    and a free-text `source` (e.g. the photo paths). Parent folders are created.

    Raises ValueError for a batched / malformed avatar, non-finite values, or a `config_json`
    whose `uv_resolution` / `decoder.id_channels` disagree with the arrays (e.g. a whole run
    config passed instead of its `model` part)."""
    arrays = {name: np.asarray(getattr(avatar, name), np.float32) for name in AVATAR_ARRAYS}
    k, c, s = _avatar_dims(arrays, "avatar")
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"avatar.{name} has {int(np.sum(~np.isfinite(a)))} non-finite values")
    config = _json_normalised(dict(config_json))
    for key, have in (("uv_resolution", k), ("decoder.id_channels", c)):
        want = _lookup(config, key)
        if want != have:
            got = "missing" if want is KeyError else want
            raise ValueError(f"config_json[{key!r}] is {got} but the avatar has {have}; pass the model config "
                             "(config.model.to_dict()) of the system that reconstructed it")
    meta = dict(format=AVATAR_FORMAT, version=AVATAR_VERSION, image_size=int(image_size), source=str(source),
                uv_resolution=k, id_channels=c, num_shape=s, model=config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to other names
        np.savez(f, metadata=np.asarray(json.dumps(meta)), **arrays)


def _avatar_dims(arrays: dict[str, np.ndarray], where: str) -> tuple[int, int, int]:
    """(K, C, S) of unbatched avatar arrays; ValueError naming the array otherwise."""
    raw, ident, shape = (arrays[n] for n in AVATAR_ARRAYS)
    if raw.ndim != 3 or raw.shape[0] != raw.shape[1] or raw.shape[2] != 14:
        raise ValueError(f"{where}: raw_maps must be [K,K,14] (one unbatched avatar), got {list(raw.shape)}")
    k = raw.shape[0]
    if ident.ndim != 3 or ident.shape[:2] != (k, k):
        raise ValueError(f"{where}: identity_features must be [{k},{k},C] like raw_maps, got {list(ident.shape)}")
    if shape.ndim != 1:
        raise ValueError(f"{where}: shape must be [S], got {list(shape.shape)}")
    return int(k), int(ident.shape[2]), int(shape.shape[0])


def load_avatar(path: str | os.PathLike) -> tuple[Avatar, dict]:
    """Read a `save_avatar` file -> (Avatar of jnp float32 arrays, metadata dict). The arrays are
    checked against each other and against the recorded dimensions; whether they fit a given
    system is `check_avatar`'s job. FileNotFoundError for a missing file, ValueError naming the
    path for anything unreadable or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"avatar file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {k: archive[k] for k in archive.files}
    except Exception as e:  # zip, header and pickle errors all mean: not an avatar file
        raise ValueError(f"{path}: not a readable avatar .npz ({type(e).__name__}: {e})") from e
    missing = [k for k in ("metadata", *AVATAR_ARRAYS) if k not in contents]
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
    for name in AVATAR_ARRAYS:
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
    return Avatar(**{n: jnp.asarray(a) for n, a in arrays.items()}), meta


def check_avatar(system: FlexAvatar, avatar: Avatar, meta: dict | None = None) -> None:
    """Raise ValueError unless `avatar` (unbatched) fits `system`: the UV resolution K, the
    identity-feature channels and the shape size S are named when they differ; with `meta`
    (from `load_avatar`) also every `ANIMATION_CONFIG_KEYS` entry of the recorded model config."""
    arrays = {name: np.shape(getattr(avatar, name)) for name in AVATAR_ARRAYS}
    raw, ident, shape = (arrays[n] for n in AVATAR_ARRAYS)
    k, c, s = system.cfg.uv_resolution, system.cfg.decoder.id_channels, system.head.num_shape
    problems = []
    if raw != (k, k, 14):
        problems.append(f"raw_maps is {list(raw)} but the system's UV resolution K (model.uv_resolution) is {k}, "
                        f"expecting {[k, k, 14]}")
    if len(ident) != 3 or ident[:2] != (k, k) or ident[2] != c:
        problems.append(f"identity_features is {list(ident)} but the system expects {[k, k, c]} "
                        f"(K={k}, channels model.decoder.id_channels={c})")
    if shape != (s,):
        problems.append(f"shape is {list(shape)} but the head model {system.head.name!r} has S={s} shape coefficients")
    if meta is not None:
        recorded = meta.get("model", {})
        current = _json_normalised(system.cfg.to_dict())
        for key in ANIMATION_CONFIG_KEYS:
            a, b = _lookup(recorded, key), _lookup(current, key)
            if a != b:
                problems.append(f"model.{key} is {'missing' if a is KeyError else a!r} in the avatar's config but "
                                f"{'missing' if b is KeyError else b!r} in the system's")
    if problems:
        raise ValueError("avatar does not match the model: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- reconstruct
def reconstruct_from_images(system: FlexAvatar, params: dict, paths: str | os.PathLike | Sequence,
                            background: Sequence[float] = WHITE) -> Avatar:
    """An avatar from 1–4 square portrait files (`media.load_portraits` at `system.image_size`;
    0 or >4 files, non-square or unreadable images raise there). Images with an alpha channel
    are composited over `background` (the synthetic training images have a solid background).

    Raises ValueError for a lifter that needs cameras (`dual_uv`, `symmetric`): photos carry no
    cameras or tracked head parameters."""
    if system.needs_cameras():
        raise ValueError(f"the {system.cfg.lifter_type!r} lifter needs calibrated cameras and tracked head "
                         "parameters for its inputs, which photos do not carry: reconstruct from dataset frames "
                         "(reconstruct_from_dataset) or use a model trained with the default 'queries' lifter")
    images, alphas = media.load_portraits(paths, size=system.image_size)
    if alphas is not None:
        a = alphas[..., None]
        images = images * a + (1.0 - a) * np.asarray(background, np.float32)
    return _jitted(system, "reconstruct")(params, jnp.asarray(images))


def reconstruct_from_dataset(system: FlexAvatar, params: dict, world: SyntheticWorld, identity_id: int,
                             num_views: int = 4, seed: int = 0) -> tuple[Avatar, np.ndarray]:
    """An avatar of synthetic identity `identity_id` from `num_views` of its frames, drawn as the
    self-reenactment eval set draws them (`evaluate.build_eval_set`; the first view is frontal).
    Cameras and tracked head params are passed when the lifter reads them.
    Returns (avatar, input images `[num_views,H,W,3]`)."""
    if world.config.image_size != system.image_size:
        raise ValueError(f"the world renders {world.config.image_size}² images but the model takes "
                         f"{system.image_size}² (model.image_size)")
    es = ev.build_eval_set(world, [identity_id], num_views, num_targets=1, mode="self", seed=seed)
    images = es["input_images"][0, :num_views]
    fn = _jitted(system, "reconstruct")
    if not system.needs_cameras():
        return fn(params, jnp.asarray(images)), images
    tracked = HeadParams(**{f: jnp.asarray(es[f"input_{f}"][0, :num_views]) for f in PARAM_FIELDS})
    avatar = fn(params, jnp.asarray(images), viewmats=jnp.asarray(es["input_viewmats"][0, :num_views]),
                Ks=jnp.asarray(es["input_Ks"][0, :num_views]), tracked=tracked)
    return avatar, images


# ---------------------------------------------------------------------------------------------- motion
def driving_sequence(world: SyntheticWorld, identity_id: int, num_frames: int | None = None,
                     clip: int = 0) -> HeadParams:
    """The first `num_frames` frames (default: all) of clip `clip` of a synthetic identity, as
    `HeadParams` with leading `[T]` (numpy float32; `shape` is the driver's own)."""
    ident = world.identity(int(identity_id))
    if not 0 <= clip < len(ident.clips):
        raise ValueError(f"identity {identity_id} has clips 0..{len(ident.clips) - 1}, got clip={clip}")
    c = ident.clips[clip]
    length = len(c)
    num_frames = length if num_frames is None else int(num_frames)
    if not 1 <= num_frames <= length:
        raise ValueError(f"clip {clip} of identity {identity_id} has {length} frames, asked for {num_frames} "
                         "(data.synthetic.frames_per_clip sets the clip length)")
    take = lambda a: np.asarray(a[:num_frames], np.float32)  # noqa: E731
    return HeadParams(shape=np.tile(np.asarray(ident.shape, np.float32), (num_frames, 1)),
                      expression=take(c.expression), global_pose=take(c.global_pose), neck_pose=take(c.neck_pose),
                      jaw_pose=take(c.jaw_pose), eyes_pose=take(c.eyes_pose), translation=take(c.translation))


def motion_arrays(driving: HeadParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`HeadParams [T]` -> (expression [T,E], pose [T,15], translation [T,3]), the arguments of
    `animate_frames` (pose order: global, neck, jaw, left eye, right eye)."""
    pose = np.asarray(driving.pose_vector(), np.float32)
    return (np.asarray(driving.expression, np.float32), pose,
            np.asarray(driving.translation, np.float32))


def save_motion(path: str | os.PathLike, expression, pose, translation) -> None:
    """Write a motion file that `load_motion` reads (`expression [T,E]`, `pose [T,15]`,
    `translation [T,3]`)."""
    _checked_motion(Path(path), dict(expression=np.asarray(expression), pose=np.asarray(pose),
                                     translation=np.asarray(translation)), None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, expression=np.asarray(expression, np.float32), pose=np.asarray(pose, np.float32),
                 translation=np.asarray(translation, np.float32))


_VHAP_KEYS = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def load_motion(path: str | os.PathLike, num_expression: int | None = None) -> HeadParams:
    """A driving motion -> `HeadParams` with leading `[T]` and an empty `shape [T,0]` (a motion
    has no identity: the avatar's own shape is used when animating).

    Accepted layouts:
    * an `.npz` with `expression [T,E]`, `pose [T,15]` (global, neck, jaw, left eye, right eye,
      axis-angle) and `translation [T,3]` metres (what `save_motion` writes);
    * an `.npz` with VHAP's tracked keys `expr [T,E]`, `rotation`, `neck_pose`, `jaw_pose [T,3]`,
      `eyes_pose [T,6]`, `translation [T,3]` (extra keys such as `shape` are ignored);
    * a VHAP `flame_param/` folder of per-timestep npz files (read in file-name order).

    `num_expression`: the head model's E; a different E raises. Missing keys, frame counts that
    differ between arrays, wrong trailing sizes, zero frames and NaN/inf raise ValueError naming
    the file and array; a missing path raises FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        from flexavatar_jax.data import vhap

        files = sorted(path.glob("*.npz"))
        if not files:
            raise ValueError(f"{path}: folder holds no .npz parameter files")
        frames = [vhap.load_head_params(f) for f in files]
        arrays = {field: np.stack([np.asarray(getattr(p, field)) for p in frames])
                  for field in ("expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation")}
        expression, pose = arrays["expression"], np.concatenate(
            [arrays[k] for k in ("global_pose", "neck_pose", "jaw_pose", "eyes_pose")], axis=-1)
        arrays = dict(expression=expression, pose=pose, translation=arrays["translation"])
    else:
        if not path.is_file():
            raise FileNotFoundError(f"motion file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                contents = {k: archive[k] for k in archive.files}
        except Exception as e:
            raise ValueError(f"{path}: not a readable motion .npz ({type(e).__name__}: {e})") from e
        if "expression" in contents or "pose" in contents:
            missing = [k for k in ("expression", "pose", "translation") if k not in contents]
            if missing:
                raise ValueError(f"{path}: motion file is missing {missing} (has {sorted(contents)}); "
                                 "expected expression [T,E], pose [T,15], translation [T,3]")
            arrays = {k: contents[k] for k in ("expression", "pose", "translation")}
        elif "expr" in contents:
            missing = [k for k in _VHAP_KEYS if k not in contents]
            if missing:
                raise ValueError(f"{path}: VHAP parameter file is missing {missing} (has {sorted(contents)})")
            sizes = dict(rotation=3, neck_pose=3, jaw_pose=3, eyes_pose=6)
            for key, n in sizes.items():
                if contents[key].ndim != 2 or contents[key].shape[-1] != n:
                    raise ValueError(f"{path}: {key!r} must be [T,{n}], got {list(contents[key].shape)}")
            counts = {k: contents[k].shape[0] for k in sizes}
            if len(set(counts.values())) != 1:
                raise ValueError(f"{path}: pose arrays have different frame counts T: {counts}")
            arrays = dict(expression=contents["expr"], pose=np.concatenate([contents[k] for k in sizes], axis=-1),
                          translation=contents["translation"])
        else:
            raise ValueError(f"{path}: missing 'expression', 'pose', 'translation' (or VHAP's 'expr', 'rotation', "
                             f"...) arrays; has {sorted(contents)}")
    expression, pose, translation = _checked_motion(path, arrays, num_expression)
    t = expression.shape[0]
    return HeadParams.from_pose(np.zeros((t, 0), np.float32), expression, pose, translation)


def _checked_motion(path: Path, arrays: dict[str, np.ndarray], num_expression: int | None):
    want = dict(expression=num_expression, pose=NUM_POSE, translation=3)
    out = {}
    for name, n in want.items():
        a = np.asarray(arrays[name])
        if a.ndim != 2 or (n is not None and a.shape[1] != n):
            shape = f"[T,{'E' if n is None else n}]"
            extra = f" (the head model has E={n} expression components)" if name == "expression" and n else ""
            raise ValueError(f"{path}: {name} must be {shape}{extra}, got {list(a.shape)}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{path}: {name} has dtype {a.dtype}, expected float")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: {name} has non-finite values")
        out[name] = a.astype(np.float32)
    counts = {k: v.shape[0] for k, v in out.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{path}: arrays have different frame counts T: {counts}")
    if counts["expression"] == 0:
        raise ValueError(f"{path}: motion has 0 frames")
    return out["expression"], out["pose"], out["translation"]


# ---------------------------------------------------------------------------------------------- render
def front_camera(image_size: int, distance: float = FRONT_DISTANCE_M,
                 fov_deg: float = FRONT_FOV_DEG) -> tuple[np.ndarray, np.ndarray]:
    """(viewmat [4,4], K [3,3]) of a camera `distance` metres in front of the face (+z) looking
    at `motion.HEAD_CENTER` (OpenCV; the subject's left, +x, is on the image's right)."""
    eye = motion.HEAD_CENTER + np.array([0.0, 0.0, distance], np.float32)
    viewmat = np.asarray(camera.look_at(eye, motion.HEAD_CENTER), np.float32)
    return viewmat, np.asarray(camera.intrinsics_from_fov(fov_deg, image_size, image_size), np.float32)


def _chunks(n: int, batch: int):
    """(start, indices [batch]) per chunk; the last chunk repeats index n-1 so every chunk has
    the same shape (one compile)."""
    for start in range(0, n, batch):
        yield start, np.minimum(np.arange(start, start + batch), n - 1)


def animate_frames(system: FlexAvatar, params: dict, avatar: Avatar, expression: Float[Array, "t e"],
                   pose: Float[Array, "t 15"], translation: Float[Array, "t 3"], viewmat=None, K=None,
                   batch: int = 8, background: Sequence[float] = WHITE) -> np.ndarray:
    """Render `avatar` under T frames of driving parameters from one fixed camera -> float32
    `[T,H,W,3]` in [0,1] at `system.image_size`. Global pose and translation move the head in
    front of the camera. `viewmat [4,4]`, `K [3,3]` default to `front_camera`. Frames are
    animated and rendered `batch` at a time (one jitted vmap; the last chunk is padded)."""
    check_avatar(system, avatar)
    expression, pose, translation = (np.asarray(a, np.float32) for a in (expression, pose, translation))
    t = expression.shape[0]
    if expression.ndim != 2 or expression.shape[1] != system.head.num_expression:
        raise ValueError(f"expression must be [T,{system.head.num_expression}], got {list(expression.shape)}")
    if pose.shape != (t, NUM_POSE) or translation.shape != (t, 3):
        raise ValueError(f"pose must be [{t},15] and translation [{t},3], got {list(pose.shape)}, "
                         f"{list(translation.shape)}")
    if t == 0:
        raise ValueError("no frames to animate (T=0)")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if (viewmat is None) != (K is None):
        raise ValueError("give both viewmat and K, or neither (front camera)")
    if viewmat is None:
        viewmat, K = front_camera(system.image_size)
    batch = min(batch, t)
    fn = _jitted(system, "animate_and_render")
    cam = (jnp.asarray(viewmat, jnp.float32), jnp.asarray(K, jnp.float32), jnp.asarray(background, jnp.float32))
    frames = np.zeros((t, system.image_size, system.image_size, 3), np.float32)
    for start, idx in _chunks(t, batch):
        rgb = fn(params, avatar, jnp.asarray(expression[idx]), jnp.asarray(pose[idx]),
                 jnp.asarray(translation[idx]), *cam)
        stop = min(start + batch, t)
        frames[start:stop] = np.asarray(rgb)[: stop - start]
    return np.clip(frames, 0.0, 1.0)


def _neutral(system: FlexAvatar, expression, pose) -> tuple[jnp.ndarray, jnp.ndarray]:
    e = jnp.zeros(system.head.num_expression) if expression is None else jnp.asarray(expression, jnp.float32)
    p = jnp.zeros(NUM_POSE) if pose is None else jnp.asarray(pose, jnp.float32)
    if e.shape != (system.head.num_expression,) or p.shape != (NUM_POSE,):
        raise ValueError(f"expression must be [{system.head.num_expression}] and pose [15], got {list(e.shape)}, "
                         f"{list(p.shape)}")
    return e, p


def turntable_frames(system: FlexAvatar, params: dict, avatar: Avatar, num_frames: int = 36, expression=None,
                     pose=None, batch: int = 8, background: Sequence[float] = WHITE) -> np.ndarray:
    """A 360° orbit (`evaluate.turntable_cameras`, first frame frontal) around the avatar at one
    expression (default neutral) and pose (default zero) -> float32 `[T,H,W,3]` in [0,1]."""
    check_avatar(system, avatar)
    e, p = _neutral(system, expression, pose)
    gaussians = _jitted(system, "animate")(params, avatar, e, p, jnp.zeros(3))
    viewmats, Ks = ev.turntable_cameras(num_frames, system.image_size)
    fn = _jitted(system, "render_views")
    frames = np.zeros((num_frames, system.image_size, system.image_size, 3), np.float32)
    bg = jnp.asarray(background, jnp.float32)
    for start, idx in _chunks(num_frames, min(batch, num_frames)):
        rgb = fn(gaussians, jnp.asarray(viewmats[idx]), jnp.asarray(Ks[idx]), bg)
        stop = min(start + len(idx), num_frames)
        frames[start:stop] = np.asarray(rgb)[: stop - start]
    return np.clip(frames, 0.0, 1.0)


def export_avatar_ply(system: FlexAvatar, params: dict, avatar: Avatar, path: str | os.PathLike, expression=None,
                      pose=None) -> int:
    """Write the avatar's Gaussians at one expression (default neutral) and pose (default zero,
    no translation) to a standard 3DGS `.ply` (`render.ply.export_ply`: colours stored as given,
    opacities clamped away from 0/1 for the logit). Returns the number of Gaussians written
    (`system.num_gaussians`)."""
    check_avatar(system, avatar)
    e, p = _neutral(system, expression, pose)
    gaussians = _jitted(system, "animate")(params, avatar, e, p, jnp.zeros(3))
    return ply.export_ply(path, {k: np.asarray(v) for k, v in gaussians.items()})


__all__ = [
    "ANIMATION_CONFIG_KEYS", "animate_frames", "check_avatar", "driving_sequence", "export_avatar_ply",
    "front_camera", "load_avatar", "load_motion", "motion_arrays", "reconstruct_from_dataset",
    "reconstruct_from_images", "save_avatar", "save_motion", "turntable_frames",
]
