"""Parametric head models behind one interface, LBS kinematics and the UV toolkit."""

from flexavatar_jax.head.flame import convert_flame, load_flame, load_npz, save_npz
from flexavatar_jax.head.lbs import LBSOutput, blend_shapes, forward_kinematics, lbs, rodrigues
from flexavatar_jax.head.model import (
    FLAME_PARENTS,
    JOINT_NAMES,
    REGION_NAMES,
    HeadModel,
    HeadParams,
    check_params,
)

__all__ = [
    "FLAME_PARENTS", "JOINT_NAMES", "REGION_NAMES", "HeadModel", "HeadParams", "LBSOutput",
    "blend_shapes", "check_params", "forward_kinematics", "lbs", "rodrigues",
]
__all__ += ["convert_flame", "load_flame", "load_npz", "save_npz"]
