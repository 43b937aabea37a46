"""Ablations: `--study configs/studies/ablations.py:tiny|base|smoke`.

Every paper component behind its config switch, trained with the same steps and seeds and scored
on the same held-out identities (with the input-shuffle control), and the papers' claims tested as
paired differences with 95% intervals (`flexavatar_jax/studies/ablation.py`). The first variant is
the baseline (the default config). Input-view counts are an evaluation condition, not a variant:
every variant is scored from 1, 2 and 4 views. The baseline's points are also refined per held-out
identity (FlexAvatar's refinement: PSNR before/after).

* tiny  — this repository's CPU study (tiny model, 24 identities, 300 steps, 32 held-out identities;
          16 points of ~6–8 minutes on 2 cores: about two hours).
* scale — the tiny model trained the way the views study found it must be for 4 input views to beat
          1 (`configs/studies/views.py:scale` and `:confirm`): 1,024 training identities, 1,200
          steps, 2 seeds, 128 held-out identities × 4 targets. 16 points of ~17 minutes on 2 CPU
          cores at 8² tiles (about 4.5 hours: run it over several sessions, `sweep run` resumes,
          `sweep archive`/`restore` carry finished points between machines) or minutes each on a
          GPU.
* base  — a GPU cluster (base model, 1,000 identities).
* smoke — the test: a micro model, two variants, a few steps.
"""

import ml_collections

from flexavatar_jax.configs.studies.identity_scaling import MICRO, overrides

VARIANTS = ("tiny", "scale", "base", "smoke")

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
def _views(a: int, b: int, split: str, mode: str = "self", variant: str = "baseline") -> tuple:
    who = "" if variant == "baseline" else f" ({variant})"
    return (f"{a} views beat {b}, {mode}, {split.replace('_', '/')}{who}", f"{variant}:{mode}/{a}_views/{split}/psnr",
            f"{variant}:{mode}/{b}_views/{split}/psnr", "+", "FlexAvatar (multi-view input)")


CLAIMS = (
    _views(4, 1, "side_back"), _views(4, 1, "frontal"), _views(4, 1, "all"), _views(4, 1, "marginal"),
    _views(2, 1, "all"), _views(4, 2, "all"), _views(4, 1, "all", "cross"),
    # The projection lifters place each view's pixels on the surface points it sees, by construction:
    # how much their side/back views gain from more inputs bounds what the data offers.
    _views(4, 1, "side_back", variant="dual_uv"), _views(4, 1, "side_back", variant="symmetric"),
    ("queries beat Dual-UV projection, side/back PSNR", "baseline:self/1_views/side_back/psnr",
     "dual_uv:self/1_views/side_back/psnr", "+", "FlexAvatar, Dual-UV (completeness)"),
    ("queries beat Dual-UV projection, side/back SSIM", "baseline:self/1_views/side_back/ssim",
     "dual_uv:self/1_views/side_back/ssim", "+", "FlexAvatar, Dual-UV (completeness)"),
    ("queries beat Dual-UV projection, frontal PSNR", "baseline:self/1_views/frontal/psnr",
     "dual_uv:self/1_views/frontal/psnr", "+", "FlexAvatar"),
    ("symmetric fusion beats Dual-UV projection, side/back PSNR", "symmetric:self/1_views/side_back/psnr",
     "dual_uv:self/1_views/side_back/psnr", "+", "FHAvatar (symmetric UV fusion)"),
    ("symmetric fusion beats Dual-UV projection, side/back SSIM", "symmetric:self/1_views/side_back/ssim",
     "dual_uv:self/1_views/side_back/ssim", "+", "FHAvatar (symmetric UV fusion)"),
    ("position-map driving beats expression code, cross-reenactment", "baseline:cross/4_views/all/psnr",
     "expression_code:cross/4_views/all/psnr", "+", "FlexAvatar"),
    ("position-map driving beats expression code, marginal expressions", "baseline:self/4_views/marginal/psnr",
     "expression_code:self/4_views/marginal/psnr", "+", "FlexAvatar"),
    ("UNet helps marginal expressions", "baseline:self/4_views/marginal/psnr", "no_unet:self/4_views/marginal/psnr",
     "+", "FlexAvatar"),
    ("UNet helps cross-reenactment", "baseline:cross/4_views/all/psnr", "no_unet:cross/4_views/all/psnr",
     "+", "FlexAvatar"),
    ("expression balancing helps marginal expressions", "baseline:self/4_views/marginal/psnr",
     "no_balance:self/4_views/marginal/psnr", "+", "FlexAvatar (data distribution adjustment)"),
    ("mouth loss helps inside the mouth box (frontal)", "baseline:self/4_views/frontal/psnr_mouth",
     "no_mouth_loss:self/4_views/frontal/psnr_mouth", "+", "FlexAvatar (mouth loss)"),
    ("3D TV lowers the rendered depth error", "baseline:self/4_views/all/depth_err_mm",
     "no_tv3d:self/4_views/all/depth_err_mm", "-", "FHAvatar (3D TV loss)"),
    ("3D TV keeps Gaussians near the surface (offset spread)", "baseline:self/4_views/all/offset_mm",
     "no_tv3d:self/4_views/all/offset_mm", "-", "FHAvatar (3D TV loss)"),
    ("the model uses its inputs (identity gain > 0)", "baseline:self/4_views/all/psnr",
     "baseline:self/4_views/all/psnr_shuffled", "+", "premise"),
)


# Every input-view count is scored; the tiny evaluation (32 held-out identities × 4 targets).
VIEWS = {"eval.views": (1, 2, 4)}
TINY_EVALUATION = {**VIEWS, "data.num_heldout": 32, "eval.num_identities": 32, "eval.num_targets": 4,
                   "data.memoize_examples": 0, "train.eval_every": 0, "train.image_every": 0,
                   "eval.turntable_frames": 0}
# The views study's finding (experiments/results/views_scale, views_confirm): 4 views beat 1 only
# once the model cannot memorise its training people (1,024 identities) and has fit them (1,200
# steps); 128 held-out identities resolve the per-identity spread of that difference.
SCALE_EVALUATION = {"data.num_heldout": 128, "eval.num_identities": 128}
SCALE_DATA = {"data.num_identities": 1024, **SCALE_EVALUATION}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"ablations:{arg}"
    c.compute = "fixed_steps"
    c.variants = ALL_VARIANTS
    c.claims = CLAIMS
    if arg in ("tiny", "scale"):
        c.base_config = "configs/flexavatar.py:tiny"
        c.seeds = (0, 1)
        c.steps = 300 if arg == "tiny" else 1200
        c.refine_variants = ("baseline",)
        c.refine_identities = 16
        c.overrides = overrides(TINY_EVALUATION if arg == "tiny" else {**TINY_EVALUATION, **SCALE_DATA})
    elif arg == "base":
        c.base_config = "configs/flexavatar.py:base"
        c.seeds = (0, 1, 2)
        c.steps = 100_000
        c.cache = False
        c.slurm_time = "48:00:00"
        c.refine_variants = ("baseline",)
        c.overrides = overrides({**VIEWS, "data.num_identities": 1_000, "data.num_heldout": 64,
                                 "eval.num_identities": 64, "data.worker_count": 8, "train.eval_every": 5_000})
    else:  # smoke
        c.base_config = "configs/flexavatar.py:tiny"
        c.seeds = (0,)
        c.steps = 4
        c.variants = ALL_VARIANTS[:1] + (("no_unet", (("model.unet.enabled", False),)),)
        c.refine_variants = ("baseline",)
        c.claims = (CLAIMS[0], CLAIMS[-1], ("UNet on vs off, all targets",
                                            "baseline:self/4_views/all/psnr", "no_unet:self/4_views/all/psnr", "+",
                                            "FlexAvatar"))
        c.overrides = overrides({**MICRO, **VIEWS, "data.num_identities": 2})
    return c
