"""Synthetic data engine config: `--config configs/synthetic_data.py:tiny|base`."""

import ml_collections

from flexavatar_jax.configs.flexavatar import FEATURE_MIX


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = arg
    c.synthetic = ml_collections.ConfigDict(dict(
        seed=0, uv_resolution=192, image_size=256, frames_per_clip=48, clips_per_identity=4,
        shape_scale=0.8, background="white", event_rate=0.012, **FEATURE_MIX))
    c.num_identities = 1000  # training ids [0, N); held-out ids start at synthetic.HELDOUT_OFFSET
    c.split = "train"  # which id range make-dataset writes: train | heldout
    c.cameras_per_frame = 4
    c.frame_stride = 1  # write every k-th frame of each clip
    c.val_fraction = 0.1  # timesteps written to transforms_val.json (and as many to _test)
    if arg == "tiny":
        c.synthetic.update(uv_resolution=64, image_size=64, frames_per_clip=6, clips_per_identity=1)
        c.num_identities = 2
        c.cameras_per_frame = 2
    elif arg != "base":
        raise ValueError(f"unknown variant {arg!r}: use tiny or base")
    return c
