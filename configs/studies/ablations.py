"""Ablations: `--study configs/studies/ablations.py:tiny|base|smoke`.

Every paper component behind its config switch, trained with the same steps and seeds and scored
on the same held-out identities (with the input-shuffle control), and the papers' claims tested as
paired differences with 95% intervals (`flexavatar_jax/studies/ablation.py`). The first variant is
the baseline (the default config). Input-view counts are an evaluation condition, not a variant:
every variant is scored from 1, 2 and 4 views.

* tiny  — this repository's CPU study (tiny model, 24 identities, 300 steps, 32 held-out identities;
          16 points of ~6–8 minutes on 2 cores: about two hours).
* base  — a GPU cluster (base model, 1,000 identities).
* smoke — the test: a micro model, two variants, a few steps.
"""

import ml_collections

from flexavatar_jax.configs.studies.identity_scaling import MICRO, overrides

VARIANTS = ("tiny", "base", "smoke")

ALL_VARIANTS = (
    ("baseline", ()),
    ("dual_uv", (("model.lifter_type", "dual_uv"),)),
    ("symmetric", (("model.lifter_type", "symmetric"),)),
    ("expression_code", (("model.driving", "expression_code"),)),
    ("no_unet", (("model.unet.enabled", False),)),
    ("no_balance", (("data.balance.enabled", False),)),
    ("no_mouth_loss", (("loss.mouth.weight", 0.0),)),
    ("no_tv3d", (("loss.tv3d.weight", 0.0),)),
)

# (claim, a, b, expected sign of a − b, source)
CLAIMS = (
    ("4 views beat 1, side/back", "baseline:self/4_views/side_back/psnr", "baseline:self/1_views/side_back/psnr", "+",
     "FlexAvatar (multi-view input)"),
    ("4 views beat 1, all views", "baseline:self/4_views/all/psnr", "baseline:self/1_views/all/psnr", "+",
     "FlexAvatar"),
    ("4 views beat 2, all views", "baseline:self/4_views/all/psnr", "baseline:self/2_views/all/psnr", "+",
     "FlexAvatar"),
    ("queries beat Dual-UV projection, side/back", "baseline:self/1_views/side_back/psnr",
     "dual_uv:self/1_views/side_back/psnr", "+", "FlexAvatar (completeness)"),
    ("symmetric fusion beats Dual-UV projection, side/back", "symmetric:self/1_views/side_back/psnr",
     "dual_uv:self/1_views/side_back/psnr", "+", "FHAvatar (symmetric UV fusion)"),
    ("position-map driving beats expression code, cross-reenactment", "baseline:cross/4_views/all/psnr",
     "expression_code:cross/4_views/all/psnr", "+", "FlexAvatar"),
    ("UNet helps marginal expressions", "baseline:self/4_views/marginal/psnr", "no_unet:self/4_views/marginal/psnr",
     "+", "FlexAvatar"),
    ("expression balancing helps marginal expressions", "baseline:self/4_views/marginal/psnr",
     "no_balance:self/4_views/marginal/psnr", "+", "FlexAvatar (data distribution adjustment)"),
    ("the model uses its inputs (identity gain > 0)", "baseline:self/4_views/all/psnr",
     "baseline:self/4_views/all/psnr_shuffled", "+", "premise"),
)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"ablations:{arg}"
    c.compute = "fixed_steps"
    c.variants = ALL_VARIANTS
    c.claims = CLAIMS
    views = {"eval.views": (1, 2, 4)}
    if arg == "tiny":
        c.base_config = "configs/flexavatar.py:tiny"
        c.seeds = (0, 1)
        c.steps = 300
        c.overrides = overrides({**views, "data.num_heldout": 32, "eval.num_identities": 32, "eval.num_targets": 4,
                                 "data.memoize_examples": 0, "train.eval_every": 0, "train.image_every": 0})
    elif arg == "base":
        c.base_config = "configs/flexavatar.py:base"
        c.seeds = (0, 1, 2)
        c.steps = 100_000
        c.cache = False
        c.slurm_time = "48:00:00"
        c.overrides = overrides({**views, "data.num_identities": 1_000, "data.num_heldout": 64,
                                 "eval.num_identities": 64, "data.worker_count": 8, "train.eval_every": 5_000})
    else:  # smoke
        c.base_config = "configs/flexavatar.py:tiny"
        c.seeds = (0,)
        c.steps = 4
        c.variants = ALL_VARIANTS[:1] + (("no_unet", (("model.unet.enabled", False),)),)
        c.claims = (CLAIMS[0], CLAIMS[-1], ("UNet on vs off, all targets",
                                            "baseline:self/4_views/all/psnr", "no_unet:self/4_views/all/psnr", "+",
                                            "FlexAvatar"))
        c.overrides = overrides({**MICRO, **views, "data.num_identities": 2})
    return c
