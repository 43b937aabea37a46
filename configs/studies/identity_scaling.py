"""Identity-count scaling: `--study configs/studies/identity_scaling.py:tiny|base|smoke`.

Held-out quality and convergence against the number of training identities N (FlexAvatar Fig. 5),
at fixed compute (every point trains the same number of steps). Every point is scored on one fixed
held-out identity set (`eval.seed` draws the same targets for every point and seed) with the
input-shuffle control, whose *identity gain* is the study's primary axis: plain PSNR rewards a
model that renders an average head.

* tiny  — this repository's CPU study: the tiny model, N = 1…128 (8 points, 2.1 decades), 2 seeds
          up to N = 32, 300 steps each, 32 held-out identities × 4 targets; ~100 min on 2 cores.
* base  — a GPU cluster: the base model, N = 100…100,000, 3 seeds up to N = 3,000; one job per point.
* smoke — the test: a micro model, N ∈ {1, 2, 4}, a few steps (minutes on a CPU).
"""

import ml_collections

VARIANTS = ("tiny", "base", "smoke")

# Held-out evaluation made for studies (shared by every variant).
EVAL = {"eval.shuffle_control": True, "eval.seed": 0, "eval.views": (1, 4)}
# The tiny config shrunk to a micro model (32² inputs, K=32) whose points run in seconds: smoke tests.
MICRO = {
    "model.image_size": 32, "model.encoder.width": 32, "model.encoder.depth": 1, "model.encoder.num_heads": 2,
    "model.lifter.width": 32, "model.lifter.num_heads": 2, "model.lifter.depth": 1, "model.uv_resolution": 32,
    "model.decoder.channels": 16, "model.decoder.id_channels": 8, "model.unet.channels": (8, 16),
    "data.synthetic.uv_resolution": 32, "data.synthetic.frames_per_clip": 6, "data.num_targets": 1,
    "data.examples_per_identity": 8, "data.memoize_examples": 0, "data.num_heldout": 4,
    "eval.num_identities": 4, "eval.num_targets": 2, "eval.batch_size": 2,
    "train.batch_size": 8, "train.warmup_steps": 1, "train.log_every": 1, "train.image_every": 0,
    "train.eval_every": 2, "train.checkpoint_every": 2, "eval.turntable_frames": 0,
}


def overrides(fields: dict) -> tuple:
    """(dotted field, value) pairs with the study evaluation (a ConfigDict takes no dots in keys)."""
    return tuple({**EVAL, **fields}.items())


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"identity_scaling:{arg}"
    c.compute = "fixed_steps"
    if arg == "tiny":
        c.base_config = "configs/flexavatar.py:tiny"
        c.identities = (1, 2, 4, 8, 16, 32, 64, 128)
        c.seeds = (0, 1)
        c.multi_seed_max_identities = 32
        c.steps = 300
        c.convergence_psnr = 17.0
        c.overrides = overrides({
            "data.num_heldout": 32, "eval.num_identities": 32, "eval.num_targets": 4, "eval.batch_size": 4,
            "data.memoize_examples": 0,  # examples are rendered on the device in each step
            "train.eval_every": 100, "train.checkpoint_every": 100, "train.image_every": 0,
        })
    elif arg == "base":
        c.base_config = "configs/flexavatar.py:base"
        c.identities = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
        c.seeds = (0, 1, 2)
        c.multi_seed_max_identities = 3_000
        c.steps = 100_000
        c.convergence_psnr = 22.0
        c.slurm_time = "48:00:00"
        c.cache = False  # 512² examples of 100K identities do not belong on disk
        c.overrides = overrides({
            "data.num_heldout": 64, "eval.num_identities": 64, "eval.num_targets": 8,
            "data.worker_count": 8, "train.eval_every": 5_000, "train.checkpoint_every": 2_000,
        })
    else:  # smoke
        c.base_config = "configs/flexavatar.py:tiny"
        c.identities = (1, 2, 4)
        c.seeds = (0,)
        c.steps = 4
        c.convergence_psnr = 10.0
        c.overrides = overrides(MICRO)
    return c
