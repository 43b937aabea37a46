"""Using a trained model: load params only (no optimizer, mesh or train step), reconstruct avatars
from photos or dataset frames, animate them from motions, turntables, avatar files, PLY export.

    from flexavatar_jax import inference
    system, params = inference.load(config, "out/tiny")
    avatar = inference.reconstruct_from_images(system, params, ["front.png", "left.png"])
    frames = inference.animate_frames(system, params, avatar, motion)   # motion: HeadParams [T]
"""

from flexavatar_jax.inference.avatars import (
    ANIMATION_CONFIG_KEYS,
    animate_frames,
    export_avatar_ply,
    load_avatar,
    reconstruct_from_dataset,
    reconstruct_from_images,
    save_avatar,
    turntable_frames,
)
from flexavatar_jax.inference.params import initial_params, load, load_params, load_run, make_system

__all__ = [
    "ANIMATION_CONFIG_KEYS", "animate_frames", "export_avatar_ply", "initial_params", "load", "load_avatar",
    "load_params", "load_run", "make_system", "reconstruct_from_dataset", "reconstruct_from_images", "save_avatar",
    "turntable_frames",
]
