"""Driving motions: one type end to end, `HeadParams` with a leading frame axis `[T]`.

A motion comes from a file (`load_motion`: our `.npz`, a VHAP tracked-parameter `.npz` or a VHAP
`flame_param/` folder) or from a synthetic identity's clip (`driving_sequence`), and goes as it is
to `inference.animate_frames`, which vmaps `FlexAvatar.animate` over it. A motion has no identity:
the animated avatar keeps its own shape coefficients.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flexavatar_jax.data.synthetic import SyntheticWorld
from flexavatar_jax.files import read_npz, write_atomic
from flexavatar_jax.head import POSE_SIZE, HeadParams


def num_frames(motion: HeadParams) -> int:
    return int(np.shape(motion.expression)[0])


def take_frames(motion: HeadParams, count: int | None) -> HeadParams:
    """The first `count` frames (None: all); ValueError unless 1 <= count <= the motion's length."""
    length = num_frames(motion)
    if count is None:
        return motion
    if not 1 <= int(count) <= length:
        raise ValueError(f"the motion has {length} frames, asked for {count}")
    return HeadParams(**{f: np.asarray(getattr(motion, f))[: int(count)] for f in _FIELDS})


_FIELDS = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation")


def driving_sequence(world: SyntheticWorld, identity_id: int, count: int | None = None,
                     clip: int = 0) -> HeadParams:
    """The first `count` frames (default: all) of clip `clip` of a synthetic identity, as
    `HeadParams` with leading `[T]` (numpy float32; `shape` is the driver's own)."""
    ident = world.identity(int(identity_id))
    if not 0 <= clip < len(ident.clips):
        raise ValueError(f"identity {identity_id} has clips 0..{len(ident.clips) - 1}, got clip={clip}")
    c = ident.clips[clip]
    length = len(c)
    take = lambda a: np.asarray(a, np.float32)  # noqa: E731
    motion = HeadParams(shape=np.tile(np.asarray(ident.shape, np.float32), (length, 1)),
                        expression=take(c.expression), global_pose=take(c.global_pose), neck_pose=take(c.neck_pose),
                        jaw_pose=take(c.jaw_pose), eyes_pose=take(c.eyes_pose), translation=take(c.translation))
    try:
        return take_frames(motion, count)
    except ValueError as e:
        raise ValueError(f"clip {clip} of identity {identity_id}: {e} (data.synthetic.frames_per_clip sets the clip "
                         "length)") from None


def save_motion(path: str | os.PathLike, expression, pose, translation) -> None:
    """Write a motion file that `load_motion` reads (`expression [T,E]`, `pose [T,15]`,
    `translation [T,3]`)."""
    _checked_motion(Path(path), dict(expression=np.asarray(expression), pose=np.asarray(pose),
                                     translation=np.asarray(translation)), None)
    write_atomic(path, lambda f: np.savez(f, expression=np.asarray(expression, np.float32),
                                          pose=np.asarray(pose, np.float32),
                                          translation=np.asarray(translation, np.float32)))


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
        contents = read_npz(path, "motion file", "motion")
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
    want = dict(expression=num_expression, pose=POSE_SIZE, translation=3)
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
