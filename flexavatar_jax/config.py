"""Typed, frozen run configuration: the one form in which configs reach library code.

Config *files* (`configs/flexavatar.py`, `configs/synthetic_data.py`) build an
`ml_collections.ConfigDict`, because that is what absl's `--config.a.b=value` overrides act on.
At the boundary (the CLI, a notebook, a study runner) it is converted once, like flax's lm1b turns
its ConfigDict into a `TransformerConfig`:

    from configs import flexavatar
    from flexavatar_jax.config import Config
    config = Config.from_dict(flexavatar.get_config("tiny"))     # strict: unknown keys raise
    config.model.encoder.width, config.loss.l1.weight             # plain frozen dataclasses
    config.to_dict()                                               # JSON-able (checkpoints, avatars)

Every field is documented here, once. The classes are frozen and hashable (a `ModelConfig` is a
static Linen field and a jit-cache key). The data layer's option types are used as they are, not
copied: `DataConfig` extends `ExampleConfig` (with its `BalanceConfig`), `data.synthetic` is a
`SyntheticConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from flax.core import FrozenDict

from flexavatar_jax.data.pipeline import ExampleConfig
from flexavatar_jax.data.synthetic import SyntheticConfig

T = TypeVar("T")

frozen = dataclasses.dataclass(frozen=True)


# ---------------------------------------------------------------------------------------------- model
@frozen
class EncoderConfig:
    """ViT encoder: `patch_size` pixels per patch side, `width` token width, `depth` blocks,
    `num_heads`; `pretrained`: a converted ViT `.npz` (format in `models/encoder.py`), "" = none."""

    patch_size: int = 16
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    pretrained: str = ""


@frozen
class LifterConfig:
    """Options of every lifter (image tokens -> G×G UV tokens; `models/lifters.py`).

    `width` of the UV tokens, `num_heads`, `fourier_frequencies` of the positional embeddings, and
    `depth`, the number of blocks in the lifter's main stack: cross-attention blocks from the
    queries to the image tokens (`queries`), MAE in-fill transformer blocks (`dual_uv`), or
    (global cross-attention + symmetric window) block pairs (`symmetric`).
    Lifter-specific: `global_depth` self-attention blocks over the image tokens before the queries
    read them, `view_gate` a learned per-query choice of input views before each cross-attention
    block, `view_pose` a pose head that predicts where each input camera stands from its pixels
    and steers every query to the views that face its surface point (trained by `loss.view_pose`;
    both `models/head_queries.py`, `queries` only) and `view_pose_oracle` (a diagnostic: the
    weighting uses the true input-camera directions, so the lifter needs input cameras and
    tracked parameters like the projection lifters); `window` the odd w of the w×w symmetric UV
    windows (`symmetric` only)."""

    width: int = 384
    num_heads: int = 6
    depth: int = 4
    fourier_frequencies: int = 6
    global_depth: int = 2
    view_gate: bool = False
    view_pose: bool = False
    view_pose_oracle: bool = False
    window: int = 7


@frozen
class DecoderConfig:
    """UV decoder: `channels` of the upsampling convolutions, `id_channels` of F_id."""

    channels: int = 64
    id_channels: int = 32


@frozen
class UNetConfig:
    """Deformation UNet (`enabled=False`: static avatar, FlexAvatar's ablation); `channels` per level."""

    enabled: bool = True
    channels: tuple[int, ...] = (32, 64, 128, 128)


@frozen
class ModelConfig:
    """The FlexAvatar system.

    `image_size` of the square inputs; `compute_dtype` float32 | bfloat16 (params stay float32);
    `lifter_type` queries | dual_uv | symmetric; `grid` G of the UV query grid; `uv_resolution` K of
    the attribute maps and the Gaussian grid; `dense_regions` region -> samples per texel side
    (e.g. {"scalp": 2}); `driving` position_map | expression_code (the UNet's driving signal);
    `subtract_neutral` removes the identity's neutral map from a position-map signal;
    `driving_scale` metres per unit of the driving map; `shape_head` regresses shape coefficients;
    `init_opacity`, `init_scale` (relative to one texel) and `offset_scale` (metres per raw offset
    unit) set the attribute activations."""

    image_size: int = 512
    compute_dtype: str = "float32"
    encoder: EncoderConfig = EncoderConfig()
    lifter_type: str = "queries"
    grid: int = 32
    lifter: LifterConfig = LifterConfig()
    uv_resolution: int = 256
    dense_regions: FrozenDict = FrozenDict({"scalp": 2})
    decoder: DecoderConfig = DecoderConfig()
    unet: UNetConfig = UNetConfig()
    driving: str = "position_map"
    subtract_neutral: bool = True
    driving_scale: float = 0.01
    shape_head: bool = True
    init_opacity: float = 0.7
    init_scale: float = 0.7
    offset_scale: float = 0.01

    def __post_init__(self):
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
        if self.driving not in ("position_map", "expression_code"):
            raise ValueError(f"model.driving must be position_map or expression_code, got {self.driving!r}")


# ---------------------------------------------------------------------------------------------- data
@frozen
class DataConfig(ExampleConfig):
    """Training data: what `data.pipeline.ExampleSource` reads (the `ExampleConfig` fields: per
    example `min_inputs`..`max_inputs` input views (drawn with `input_count_weights`, uniform when
    empty) and `num_targets` targets, `reconstruction_prob`
    of targets being the input frames themselves, `examples_per_identity` per epoch, `balance`
    expression balancing, `input_annotations` input cameras and tracked parameters, switched on
    anyway for a lifter that reads them) plus: `source` synthetic | vhap (then `vhap_folders`,
    comma-separated); `num_identities` training ids [0, N) (the scaling-law knob); `num_heldout`
    held-out ids; `synthetic` the synthetic world (its `image_size` is `model.image_size`);
    `worker_count` grain workers; `memoize_examples` > 0 keeps up to that many examples in memory
    (for data read from disk; synthetic examples are a few numbers each, their images are rendered
    on the device inside the step, `data.ground_truth`); `cache_dir` (non-empty) keeps the held-out
    eval sets on disk there (`data.cache`), shared by every run whose data are the same (a study's
    points), so each is rendered once."""

    source: str = "synthetic"
    vhap_folders: str = ""
    num_identities: int = 1000
    num_heldout: int = 8
    synthetic: SyntheticConfig = SyntheticConfig()
    worker_count: int = 0
    memoize_examples: int = 0
    cache_dir: str = ""

    def example_config(self, needs_cameras: bool) -> ExampleConfig:
        """The `ExampleConfig` part, with input annotations when the lifter `needs_cameras`."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ExampleConfig)}
        return ExampleConfig(**dict(fields, input_annotations=self.input_annotations or needs_cameras))


# ---------------------------------------------------------------------------------------------- losses
@frozen
class LossTerm:
    """A loss term: `weight`, switched on at step `start`, ramped linearly over `ramp` steps."""

    weight: float = 0.0
    start: int = 0
    ramp: int = 0


@frozen
class LossConfig:
    """Loss weights (`train/losses.py`); `perceptual_weights`: converted LPIPS-VGG `.npz` ("" disables
    the perceptual and the mouth-perceptual terms, with a warning). `lowres` is the half-resolution
    auxiliary branch. `view_pose`: 1 − cosine between the input-camera directions the lifter
    predicts (`model.lifter.view_pose`) and the true ones (`data.motion.view_directions`); off
    where the lifter predicts none, and in test-time refinement (photos carry no camera label)."""

    l1: LossTerm = LossTerm(1.0)
    dssim: LossTerm = LossTerm(0.2)
    perceptual: LossTerm = LossTerm(0.1)
    perceptual_weights: str = ""
    mouth: LossTerm = LossTerm(0.5)
    alpha: LossTerm = LossTerm(0.5)
    tv3d: LossTerm = LossTerm(0.01)
    offset: LossTerm = LossTerm(0.1)
    position_deviation: LossTerm = LossTerm(1.0)
    scale_deviation: LossTerm = LossTerm(0.01)
    shape: LossTerm = LossTerm(0.1)
    lowres: LossTerm = LossTerm(0.0)
    view_pose: LossTerm = LossTerm(0.1)

    def terms(self) -> dict[str, LossTerm]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.type in ("LossTerm", LossTerm)}


# ---------------------------------------------------------------------------------------------- optimisation
@frozen
class TrainConfig:
    """`steps`, global `batch_size`, `grad_accum` micro-steps, AdamW `lr` (linear `warmup_steps`,
    cosine decay to 1%), `weight_decay` (matrices only), `grad_clip` global norm, `ema_decay` (0 =
    no EMA); every-N-steps `log_every`, `image_every`, `checkpoint_every`, `eval_every`;
    `keep_checkpoints`; `distributed` calls `jax.distributed.initialize()` (multi-host)."""

    steps: int = 200_000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 2_000
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    log_every: int = 50
    image_every: int = 1_000
    checkpoint_every: int = 1_000
    keep_checkpoints: int = 3
    eval_every: int = 0
    distributed: bool = False


@frozen
class MeshConfig:
    """Device mesh axis sizes; one may be -1 (= the remaining devices)."""

    data: int = -1
    fsdp: int = 1
    model: int = 1


@frozen
class EvalConfig:
    """Held-out evaluation: `num_identities`, `clips`, input-view counts `views`, `num_targets` per
    identity, `batch_size` of the predictor; `seed` of the eval-set draws (independent of the run's
    seed, so runs with different seeds are scored on the same targets); `shuffle_control` also
    predicts every target from another held-out identity's inputs (the *identity gain* = own −
    shuffled separates learning the person from learning an average head). `train.eval_every`
    scores the self-reenactment set from `max(views)` inputs (with the control) during training;
    `turntable_frames` of the held-out turntable GIF the main job writes (0 = none)."""

    num_identities: int = 4
    clips: int = 1
    views: tuple[int, ...] = (1, 4)
    num_targets: int = 8
    batch_size: int = 4
    seed: int = 0
    shuffle_control: bool = False
    turntable_frames: int = 36


@frozen
class RefineConfig:
    """Per-identity refinement: `steps`, Adam `lr`, `time_budget_s` (> 0 stops early)."""

    steps: int = 20
    lr: float = 5e-5
    time_budget_s: float = 0.0


@frozen
class Config:
    """A whole run: `variant` name, `seed`, `head` ("" = the built-in procedural head, else a FLAME
    `.pkl` / converted `.npz`), and the sections. `sharding_rules`: logical axis -> mesh axes (first
    match wins; a mesh axis is used at most once per array)."""

    variant: str = ""
    seed: int = 0
    head: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    sharding_rules: tuple[tuple[str, Any], ...] = ()
    eval: EvalConfig = EvalConfig()
    refine: RefineConfig = RefineConfig()

    @classmethod
    def from_dict(cls, mapping: Mapping) -> "Config":
        """From a ConfigDict / dict (strict: an unknown key raises ValueError naming it). The
        synthetic world renders at `model.image_size` (set there when absent; a different value
        raises)."""
        mapping = _plain(mapping)
        model_size = mapping.get("model", {}).get("image_size", ModelConfig.image_size)
        synthetic = mapping.setdefault("data", {}).setdefault("synthetic", {})
        if synthetic.setdefault("image_size", model_size) != model_size:
            raise ValueError(f"data.synthetic.image_size={synthetic['image_size']} differs from model.image_size="
                             f"{model_size}: the world must render what the model reads (leave it unset)")
        return from_dict(cls, mapping)

    def to_dict(self) -> dict:
        return to_dict(self)


@frozen
class DatasetConfig:
    """`make-dataset` / `preview-data`: the `synthetic` world, `num_identities` to write, `split`
    train | heldout (which id range), `cameras_per_frame`, `frame_stride` (every k-th frame),
    `val_fraction` of timesteps written to transforms_val.json (and as many to _test)."""

    variant: str = ""
    synthetic: SyntheticConfig = SyntheticConfig()
    num_identities: int = 1000
    split: str = "train"
    cameras_per_frame: int = 4
    frame_stride: int = 1
    val_fraction: float = 0.1

    @classmethod
    def from_dict(cls, mapping: Mapping) -> "DatasetConfig":
        return from_dict(cls, _plain(mapping))

    def to_dict(self) -> dict:
        return to_dict(self)


# ---------------------------------------------------------------------------------------------- conversion
def _plain(mapping: Any) -> Any:
    """ConfigDict / FrozenDict / dict trees -> plain dicts (lists stay lists)."""
    if hasattr(mapping, "to_dict"):
        mapping = mapping.to_dict()
    if isinstance(mapping, Mapping):
        return {k: _plain(v) for k, v in mapping.items()}
    return mapping


def _convert(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"config {where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if tp is FrozenDict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config {where} must be a mapping, got {value!r}")
        return FrozenDict(value)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"config {where} must be a sequence, got {value!r}")
        return _deep_tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, bool, str) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ValueError(f"config {where} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _deep_tuple(value: Any) -> Any:
    return tuple(_deep_tuple(v) for v in value) if isinstance(value, (tuple, list)) else value


def from_dict(cls: type[T], mapping: Mapping, where: str = "") -> T:
    """`cls` (a config dataclass) from a mapping; fields not given keep their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(f"unknown config field(s) {[prefix + u for u in unknown]} for {cls.__name__}; "
                         f"valid: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in mapping.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> Any:
    """A config dataclass -> JSON-able nested dicts (tuples become lists, as after a JSON round trip)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    return config


def as_config(config: Any) -> Config:
    """A `Config` as is; a ConfigDict / mapping converted (`Config.from_dict`)."""
    return config if isinstance(config, Config) else Config.from_dict(config)


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=1)
