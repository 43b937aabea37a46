"""Parametric head models behind one interface, LBS kinematics and the UV toolkit."""

from flexavatar_jax.head.flame import convert_flame, load_flame, load_npz, save_npz
from flexavatar_jax.head.model import (
    FLAME_PARENTS,
    JOINT_NAMES,
    POSE_SIZE,
    REGION_NAMES,
    HeadModel,
    HeadParams,
    check_params,
)
from flexavatar_jax.head.skinning import LBSOutput, blend_shapes, forward_kinematics, lbs, rodrigues

__all__ = [
    "FLAME_PARENTS", "JOINT_NAMES", "POSE_SIZE", "REGION_NAMES", "HeadModel", "HeadParams", "LBSOutput",
    "blend_shapes", "check_params", "forward_kinematics", "lbs", "rodrigues",
]
__all__ += ["convert_flame", "load_flame", "load_npz", "save_npz"]
__all__ += ["load_head"]


def load_head(spec: str = "procedural", uv_obj: str | None = None, masks_pkl: str | None = None) -> HeadModel:
    """'' or 'procedural' -> the built-in head; otherwise a FLAME file for `load_flame` (a raw
    `.pkl`/`.npz` with `uv_obj` and optional `masks_pkl`, or our converted `.npz`)."""
    if spec in ("", "procedural"):
        from flexavatar_jax.head.procedural import load_procedural_head

        return load_procedural_head()
    return load_flame(spec, uv_obj, masks_pkl=masks_pkl)
