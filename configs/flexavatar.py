"""FlexAvatar: `--config configs/flexavatar.py:tiny|base|large`.

* tiny  — forward+backward in seconds on a CPU (64² inputs, G=8, K=64, ~3K Gaussians); the main job.
* base  — one GPU: 512² inputs, ViT-S/16, G=32, K=256 + a 2× denser scalp grid (~100K Gaussians: the
          procedural scalp covers ~30% of the UV atlas; FHAvatar's layout gives ~78K).
* large — a cluster: ViT-B/16, G=64, K=512 (~211K Gaussians: every valid texel of a 512² atlas, like
          Dual-UV's 262K on a fully used one), FSDP-sharded.

Every ablation switch of the papers is a field here: `model.lifter_type` (queries | dual_uv |
symmetric), `model.unet.enabled`, `model.driving` (position_map | expression_code),
`data.balance.enabled`, `loss.mouth.weight`, `loss.tv3d.weight`, ...
Override any field on the command line: `--config.model.lifter_type=dual_uv`.
"""

import ml_collections

# The synthetic identities' feature mix (`data.appearance.FeatureMix`: hair styles bald/short/long/fringe,
# beard none/stubble/full, freckle counts 0/10/40/120, skin tone range); configs import nothing from
# the package, so the defaults are written out here (a test keeps them equal to FeatureMix's).
FEATURE_MIX = dict(hair_style_probs=(0.12, 0.40, 0.28, 0.20), beard_probs=(0.6, 0.2, 0.2),
                   freckle_count_probs=(0.4, 0.2, 0.2, 0.2), skin_tone_range=(0.0, 1.0))

VARIANTS = ("tiny", "base", "large")


def _term(weight: float, start: int = 0, ramp: int = 0) -> ml_collections.ConfigDict:
    """A loss term: `weight`, switched on at step `start`, ramped linearly over `ramp` steps."""
    return ml_collections.ConfigDict(dict(weight=weight, start=start, ramp=ramp))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}: use one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.variant = arg
    c.seed = 0
    c.head = ""  # "" = the built-in procedural head; else a FLAME .pkl / converted .npz

    # ---------------------------------------------------------------- model
    m = c.model = ml_collections.ConfigDict()
    m.image_size = 512
    m.compute_dtype = "float32"  # or bfloat16 (params stay float32)
    m.encoder = ml_collections.ConfigDict(dict(patch_size=16, width=384, depth=12, num_heads=6, pretrained=""))
    m.lifter_type = "queries"
    m.grid = 32  # G: UV query grid
    m.lifter = ml_collections.ConfigDict(dict(width=384, num_heads=6, global_depth=2, depth=4,
                                              fourier_frequencies=6, window=7, view_gate=False, view_pose=False,
                                              view_pose_oracle=False))
    m.uv_resolution = 256  # K: attribute maps and Gaussian grid
    m.dense_regions = ml_collections.ConfigDict(dict(scalp=2))  # region -> samples per texel side
    m.decoder = ml_collections.ConfigDict(dict(channels=64, id_channels=32))
    m.unet = ml_collections.ConfigDict(dict(enabled=True, channels=(32, 64, 128, 128)))
    m.driving = "position_map"  # or expression_code
    m.subtract_neutral = True
    m.driving_scale = 0.01  # metres per unit of the driving map fed to the UNet
    m.shape_head = True
    m.init_opacity = 0.7
    m.init_scale = 0.7  # relative to one texel
    m.offset_scale = 0.01  # metres per raw offset unit

    # ---------------------------------------------------------------- data
    d = c.data = ml_collections.ConfigDict()
    d.source = "synthetic"  # or vhap (then data.vhap_folders)
    d.vhap_folders = ""  # comma-separated VHAP export folders
    d.num_identities = 1000  # training ids [0, N): the scaling-law knob
    d.num_heldout = 8
    d.synthetic = ml_collections.ConfigDict(dict(seed=0, uv_resolution=256, frames_per_clip=48,
                                                 clips_per_identity=4, shape_scale=0.8, background="white",
                                                 event_rate=0.012, **FEATURE_MIX))
    d.min_inputs = 1
    d.max_inputs = 4
    d.input_count_weights = ()  # relative weights of min..max inputs per example; () = uniform
    d.num_targets = 4
    d.reconstruction_prob = 0.3
    d.examples_per_identity = 64
    d.balance = ml_collections.ConfigDict(dict(enabled=True, top_k=4, strength=8.0, min_similarity=0.3))
    d.worker_count = 0
    d.memoize_examples = 0  # >0: keep up to this many examples in memory (data read from disk; 0 = off)
    d.cache_dir = ""  # non-empty: keep rendered synthetic examples and eval sets on disk there (studies)

    # ---------------------------------------------------------------- losses
    lo = c.loss = ml_collections.ConfigDict()
    lo.l1 = _term(1.0)
    lo.dssim = _term(0.2)
    lo.perceptual = _term(0.1)
    lo.perceptual_weights = ""  # converted LPIPS-VGG .npz; "" disables the term (with a warning)
    lo.mouth = _term(0.5)
    lo.alpha = _term(0.5)
    lo.tv3d = _term(0.01, start=0, ramp=0)
    lo.offset = _term(0.1)
    lo.position_deviation = _term(1.0)
    lo.scale_deviation = _term(0.01)
    lo.shape = _term(0.1)
    lo.lowres = _term(0.0)  # low-resolution auxiliary branch (renders at half size)
    lo.view_pose = _term(0.1)  # input-camera directions, when model.lifter.view_pose predicts them

    # ---------------------------------------------------------------- optimisation
    t = c.train = ml_collections.ConfigDict()
    t.steps = 200_000
    t.batch_size = 8  # global
    t.grad_accum = 1
    t.lr = 2e-4
    t.warmup_steps = 2_000
    t.weight_decay = 0.05
    t.grad_clip = 1.0
    t.ema_decay = 0.0  # 0 = no EMA
    t.log_every = 50
    t.image_every = 1_000
    t.checkpoint_every = 1_000
    t.keep_checkpoints = 3
    t.eval_every = 0
    t.distributed = False  # jax.distributed.initialize() (multi-host)

    # ---------------------------------------------------------------- mesh and sharding
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # -1: the rest of the devices
    # Logical axis -> mesh axes (first match wins; a mesh axis is used at most once per array).
    c.sharding_rules = (
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("tokens", None),
        ("embed_in", None),
        ("uv_h", None),
        ("uv_w", None),
        ("channels", "model"),
        ("channels_in", None),
    )

    # ---------------------------------------------------------------- evaluation / refinement
    c.eval = ml_collections.ConfigDict(dict(num_identities=4, clips=1, views=(1, 4), num_targets=8, batch_size=4,
                                            seed=0, shuffle_control=False, turntable_frames=36))
    c.refine = ml_collections.ConfigDict(dict(steps=20, lr=5e-5, time_budget_s=0.0))

    if arg == "tiny":
        m.image_size = 64
        m.encoder.update(patch_size=8, width=64, depth=2, num_heads=4)
        m.grid = 8
        m.lifter.update(width=64, num_heads=4, global_depth=1, depth=2)
        m.uv_resolution = 64
        m.dense_regions = ml_collections.ConfigDict()
        m.decoder.update(channels=32, id_channels=16)
        m.unet.channels = (16, 32, 64)
        d.num_identities = 24
        d.num_heldout = 4
        d.synthetic.update(uv_resolution=64, frames_per_clip=24, clips_per_identity=1)
        d.num_targets = 2
        # 24 x 100 = 2,400 examples = 600 steps x batch 4: every example of a run is fresh (new frames,
        # cameras and backgrounds; rendered on the device each step, so this costs nothing extra).
        d.examples_per_identity = 100
        lo.perceptual.weight = 0.0
        t.steps = 600
        t.batch_size = 4
        t.lr = 1e-3
        t.warmup_steps = 50
        t.log_every = 25
        t.image_every = 200
        t.checkpoint_every = 200
        c.eval.update(num_identities=4, num_targets=4, batch_size=2)
    elif arg == "large":
        m.encoder.update(patch_size=16, width=768, depth=12, num_heads=12)
        m.grid = 64
        m.lifter.update(width=768, num_heads=12, global_depth=2, depth=6)
        m.uv_resolution = 512
        m.dense_regions = ml_collections.ConfigDict()
        m.decoder.update(channels=96, id_channels=32)
        m.unet.channels = (32, 64, 128, 256)
        m.compute_dtype = "bfloat16"
        t.batch_size = 256
        c.mesh.update(data=-1, fsdp=8, model=1)
    return c
