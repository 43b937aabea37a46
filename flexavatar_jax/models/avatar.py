"""The avatar API: reconstruct once, animate many times, render from anywhere.

    system = FlexAvatar(config.model, head)           # static: network, sampling layout, masks
    params = system.init(key)                         # boxed param pytree (nn.meta.unbox -> plain)
    avatar = system.reconstruct(params, images)       # 1–4 views [v,H,W,3] -> Avatar (a pytree)
    gaussians = system.animate(params, avatar, frame) # frame: HeadParams of one driving frame
    rgb, alpha = system.render(gaussians, viewmats, Ks)

Each of the three is a pure function of its arguments (jit them separately: `jax.jit(system.animate)`).
The network's parameters split by top-level key into the reconstruction network (`encoder`,
`lifter`, `decoder`, `shape_head`) and the deformation `unet`, so refinement can freeze the UNet.

Driving signal (`model.driving`): `position_map` = the UV position map of the head model under the
driving shape + expression with the global and neck rotations and the translation removed
(jaw and eyes stay: in FLAME they are expression, and the mouth interior needs them), optionally minus
the identity's neutral map; `expression_code` = the expression, jaw and eye parameters tiled over UV
(FlexAvatar's ablation).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.config import ModelConfig
from flexavatar_jax.head import HeadModel, HeadParams, lbs
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models import gaussians as gauss
from flexavatar_jax.models.attention import MLP, Dtype, dense
from flexavatar_jax.models.encoder import ViTEncoder
from flexavatar_jax.models.lifters import NEEDS_CAMERAS, check_lifter_type, make_lifter
from flexavatar_jax.models.unet import DeformationUNet
from flexavatar_jax.models.uv_decoder import NUM_ATTRIBUTES, AttributeActivation, UVDecoder
from flexavatar_jax.models.views import MAX_INPUTS, InputViews
from flexavatar_jax.render import rasterize

RECONSTRUCTION_KEYS = ("encoder", "lifter", "decoder", "shape_head")


@dataclasses.dataclass(frozen=True)
class Avatar:
    """A reconstructed identity (any leading batch shape `...`): `raw_maps [...,K,K,14]` (static
    Gaussian attributes before activation, see `uv_decoder`), `identity_features [...,K,K,C]`
    (F_id, the UNet's identity input), `shape_coeffs [...,S]` (the head model's shape coefficients)."""

    raw_maps: Float[Array, f"*b k k {NUM_ATTRIBUTES}"]
    identity_features: Float[Array, "*b k k c"]
    shape_coeffs: Float[Array, "*b s"]


jax.tree_util.register_dataclass(Avatar, data_fields=["raw_maps", "identity_features", "shape_coeffs"],
                                 meta_fields=[])


def _dtype(name: str) -> Dtype:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


class FlexAvatarNet(nn.Module):
    """The trainable network. `reconstruct` and `deform` are its two entry points (`method=`)."""

    cfg: ModelConfig
    head: HeadModel

    def setup(self):
        cfg = self.cfg
        dtype = _dtype(cfg.compute_dtype)
        e = cfg.encoder
        self.encoder = ViTEncoder(e.patch_size, e.width, e.depth, e.num_heads, dtype=dtype)
        self.lifter = make_lifter(cfg.lifter_type, cfg.lifter, self.head, cfg.grid, dtype)
        self.decoder = UVDecoder(cfg.uv_resolution, cfg.decoder.channels, cfg.decoder.id_channels,
                                 activation=activation_of(cfg), dtype=dtype)
        if cfg.shape_head:
            self.shape_head = ShapeHead(self.head.num_shape, dtype=dtype)
        if cfg.unet.enabled:
            self.unet = DeformationUNet(tuple(cfg.unet.channels), dtype=dtype)

    def reconstruct(self, views: InputViews, train: bool = False):
        """-> (identity_features [b,K,K,C], raw_maps [b,K,K,14], predicted shape [b,S] or None)."""
        tokens = self.encoder(views.images)
        uv_tokens = self.lifter(tokens, views, train)
        identity, raw = self.decoder(uv_tokens)
        shape = self.shape_head(uv_tokens) if self.cfg.shape_head else None
        return identity, raw, shape

    def deform(self, identity_features: Array, driving: Array) -> Array:
        if not self.cfg.unet.enabled:
            return jnp.zeros((*identity_features.shape[:-1], NUM_ATTRIBUTES), jnp.float32)
        return self.unet(identity_features, driving)

    def __call__(self, views: InputViews, driving: Array, train: bool = False):
        identity, raw, shape = self.reconstruct(views, train)
        return identity, raw, shape, self.deform(identity, driving)


class ShapeHead(nn.Module):
    """Optional regression of the identity's shape coefficients from the pooled UV tokens."""

    num_shape: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, uv_tokens: Float[Array, "b g g d"]) -> Float[Array, "b s"]:
        pooled = jnp.mean(uv_tokens, axis=(1, 2))[:, None]
        h = MLP(2 * pooled.shape[-1], self.dtype, name="mlp")(pooled)
        return dense(self.num_shape, ("embed", None), self.dtype, "out")(h)[:, 0].astype(jnp.float32)


def rbg_key(key: Array) -> Array:
    """An `rbg` PRNG key derived from any JAX key (for fast-compiling parameter init)."""
    if jax.random.key_impl(key) == jax.random.key_impl(jax.random.key(0, impl="rbg")):
        return key
    data = jax.random.key_data(jax.random.split(key, 2)).reshape(-1)
    return jax.random.wrap_key_data(data.astype(jnp.uint32), impl="rbg")


def activation_of(cfg: ModelConfig) -> AttributeActivation:
    return AttributeActivation(init_opacity=cfg.init_opacity, init_scale=cfg.init_scale,
                               offset_scale=cfg.offset_scale)


class FlexAvatar:
    """Static pieces (network definition, Gaussian layout, UV masks) + the pure API functions."""

    def __init__(self, cfg: ModelConfig, head: HeadModel):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"FlexAvatar takes a config.ModelConfig (Config.from_dict(...).model), got "
                            f"{type(cfg).__name__}")
        check_lifter_type(cfg.lifter_type)
        self.cfg = cfg
        self.head = head
        self.net = FlexAvatarNet(cfg, head)
        self.activation = activation_of(cfg)
        dense_regions = {k: int(v) for k, v in cfg.dense_regions.items()}
        self.layout = gauss.make_layout(head, cfg.uv_resolution, dense_regions or None)
        self.dynamic_uv_mask = uvt.uv_region_mask(head, cfg.uv_resolution, *gauss.DYNAMIC_REGIONS)
        self.uv_valid = uvt.texel_table(head, cfg.uv_resolution).valid

    # ------------------------------------------------------------------ shapes and init
    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def num_gaussians(self) -> int:
        return self.layout.num_gaussians

    @property
    def driving_channels(self) -> int:
        if self.cfg.driving == "position_map":
            return 3
        return self.head.num_expression + 9

    def example_views(self, batch: int = 1, num_views: int = MAX_INPUTS, annotated: bool = False) -> InputViews:
        s = self.cfg.image_size
        images = jnp.zeros((batch, num_views, s, s, 3), jnp.float32)
        mask = jnp.ones((batch, num_views), bool)
        if not annotated:
            return InputViews(images, mask)
        eye = jnp.broadcast_to(jnp.eye(4), (batch, num_views, 4, 4)).at[..., 2, 3].set(1.0)
        K = jnp.broadcast_to(jnp.array([[s, 0, s / 2], [0, s, s / 2], [0, 0, 1.0]]), (batch, num_views, 3, 3))
        params = HeadParams.zeros(self.head.num_shape, self.head.num_expression, (batch, num_views))
        return InputViews(images, mask, eye, K, params)

    def needs_cameras(self) -> bool:
        oracle = self.cfg.lifter_type == "queries" and self.cfg.lifter.view_pose and self.cfg.lifter.view_pose_oracle
        return self.cfg.lifter_type in NEEDS_CAMERAS or oracle

    def init(self, key: Array, batch: int = 1) -> dict:
        """Boxed (logically partitioned) params; `nn.meta.unbox` gives the plain pytree.

        Deterministic in `key`. The draws use the `rbg` PRNG seeded from `key`: XLA:CPU compiles a
        threefry draw per parameter shape in ~0.6 s, which made the tiny model's init take 30+ s."""
        key = rbg_key(key)
        k = self.cfg.uv_resolution
        views = self.example_views(batch, MAX_INPUTS, annotated=self.needs_cameras())
        driving = jnp.zeros((batch, k, k, self.driving_channels))
        return jax.jit(self.net.init)(key, views, driving)["params"]

    # ------------------------------------------------------------------ reconstruct
    def check_images(self, images: Array) -> None:
        s = self.cfg.image_size
        if images.ndim < 4 or images.shape[-3:] != (s, s, 3):
            raise ValueError(f"input images must be [..., {s}, {s}, 3] (model.image_size={s}), got {images.shape}")

    def reconstruct_views(self, params: dict, views: InputViews, shape_coeffs: Float[Array, "b s"] | None = None,
                          train: bool = False) -> Avatar:
        """Batched reconstruction from padded views (training, evaluation and `reconstruct`).
        `shape_coeffs`: known shape coefficients, else the shape head's prediction, else 0."""
        return self.reconstruct_views_aux(params, views, shape_coeffs, train)[0]

    def reconstruct_views_aux(self, params: dict, views: InputViews, shape_coeffs: Float[Array, "b s"] | None = None,
                              train: bool = False) -> tuple[Avatar, dict[str, Array]]:
        """`reconstruct_views` and what the lifter predicts on the side: `view_directions [b,v,3]`
        (with `model.lifter.view_pose`: where it thinks each input camera stands, in the head's
        frame; `data.motion.view_directions`), else nothing."""
        self.check_images(views.images)
        (identity, raw, predicted), state = self.net.apply({"params": params}, views, train,
                                                           method=FlexAvatarNet.reconstruct, mutable=["aux"])
        if shape_coeffs is None:
            shape_coeffs = (predicted if predicted is not None
                            else jnp.zeros((raw.shape[0], self.head.num_shape), jnp.float32))
        aux = {name: values[0] for name, values in state.get("aux", {}).get("lifter", {}).items()}
        return Avatar(raw, identity, shape_coeffs), aux

    def reconstruct(self, params: dict, images: Float[Array, "v h w 3"], *, viewmats=None, Ks=None,
                    tracked: HeadParams | None = None, shape_coeffs: Float[Array, " s"] | None = None) -> Avatar:
        """One avatar from 1–4 views `images [v,H,W,3]` in [0,1]. Cameras (`viewmats [v,4,4]`,
        `Ks [v,3,3]`) and tracked head params (leading [v]) are only read by the projection
        lifters. `shape_coeffs`: known shape coefficients (else the shape head's prediction, else 0)."""
        self.check_images(images)
        v = images.shape[0]
        if not 1 <= v <= MAX_INPUTS:
            raise ValueError(f"need 1 to {MAX_INPUTS} input views, got {v}")
        # No padding: the token count follows the view count (one compile per count), so a
        # single-view reconstruction does not pay for four encoder passes.
        add = lambda x: None if x is None else x[None]  # noqa: E731
        views = InputViews(images[None], jnp.ones((1, v), bool), add(viewmats), add(Ks),
                           None if tracked is None else jax.tree.map(add, tracked))
        avatar = self.reconstruct_views(params, views, None if shape_coeffs is None else shape_coeffs[None])
        return jax.tree.map(lambda x: x[0], avatar)

    # ------------------------------------------------------------------ animate
    def neutral_map(self, shape: Float[Array, " s"]) -> Float[Array, "k k 3"]:
        """UV position map of the identity's neutral mesh (shape only): what `subtract_neutral`
        removes from the driving map."""
        neutral = self.head.zero_params().replace(shape=shape)
        return uvt.uv_position_map(self.head, lbs(self.head, neutral).vertices, self.cfg.uv_resolution)

    def driving_signal(self, shape: Float[Array, " s"], driving: HeadParams,
                       neutral: Float[Array, "k k 3"] | None = None) -> Float[Array, "k k e"]:
        """The UNet's driving input for one frame; `neutral` (`neutral_map(shape)`) may be passed
        in when many frames share one identity, so it is computed once."""
        k = self.cfg.uv_resolution
        if self.cfg.driving == "expression_code":
            code = jnp.concatenate([driving.expression, driving.jaw_pose, driving.eyes_pose])
            return jnp.broadcast_to(code, (k, k, code.shape[0])) * jnp.asarray(self.uv_valid[..., None], code.dtype)
        canonical = driving.replace(shape=shape, global_pose=jnp.zeros_like(driving.global_pose),
                                    neck_pose=jnp.zeros_like(driving.neck_pose),
                                    translation=jnp.zeros_like(driving.translation))
        pmap = uvt.uv_position_map(self.head, lbs(self.head, canonical).vertices, k)
        if self.cfg.subtract_neutral:
            pmap = pmap - (self.neutral_map(shape) if neutral is None else neutral)
        return pmap / self.cfg.driving_scale

    def animated_maps(self, params: dict, avatar: Avatar,
                      driving: HeadParams) -> Float[Array, f"b t k k {NUM_ATTRIBUTES}"]:
        """Raw attribute maps of `b` avatars (leaves with leading [b]) under `t` driving frames each
        (`driving` leaves with leading [b, t]; their `shape` is used as given). UNet deltas only
        inside the dynamic-region UV mask."""
        b, t = driving.expression.shape[:2]
        # The neutral map depends on the identity only: once per avatar, not once per frame.
        neutral = (jax.vmap(self.neutral_map)(avatar.shape_coeffs)
                   if self.cfg.driving == "position_map" and self.cfg.subtract_neutral else None)
        signal = jax.vmap(jax.vmap(self.driving_signal, in_axes=(None, 0, None)))(avatar.shape_coeffs, driving,
                                                                                  neutral)
        k = self.cfg.uv_resolution
        ident = jnp.broadcast_to(avatar.identity_features[:, None], (b, t, *avatar.identity_features.shape[1:]))
        deltas = self.net.apply({"params": params}, ident.reshape(b * t, k, k, -1), signal.reshape(b * t, k, k, -1),
                                method=FlexAvatarNet.deform).reshape(b, t, k, k, -1)
        return avatar.raw_maps[:, None] + deltas * jnp.asarray(self.dynamic_uv_mask[..., None], deltas.dtype)

    def gaussians_from_maps(self, raw_maps: Float[Array, f"k k {NUM_ATTRIBUTES}"],
                            driving: HeadParams) -> dict[str, Array]:
        """Posed Gaussians (the arrays `rasterize` takes) of one frame from its raw maps."""
        attrs = self.activation(gauss.gather_texels(self.layout, raw_maps))
        return gauss.assemble(self.layout, self.head, driving, **attrs)

    def animate(self, params: dict, avatar: Avatar, frame: HeadParams) -> dict[str, Array]:
        """Gaussians of `avatar` (unbatched) under one driving `frame` (`HeadParams` without a
        leading axis: expression, jaw/eye pose, global/neck pose, translation in metres). The
        frame's `shape` is ignored: the avatar keeps its own (`driving_frame`)."""
        driving = self.driving_frame(avatar, frame)
        one = lambda x: x[None]  # noqa: E731 - a batch of one avatar driven by one frame
        maps = self.animated_maps(params, jax.tree.map(one, avatar), jax.tree.map(lambda x: x[None, None], driving))
        return self.gaussians_from_maps(maps[0, 0], driving)

    def driving_frame(self, avatar: Avatar, frame: HeadParams) -> HeadParams:
        """`frame` with the avatar's shape coefficients; ValueError for a frame of another head model."""
        e = self.head.num_expression
        if frame.expression.shape[-1:] != (e,):
            raise ValueError(f"the driving frame has {frame.expression.shape[-1:]} expression coefficients, "
                             f"{self.head.name} expects {e}")
        shape = avatar.shape_coeffs
        return frame.replace(shape=jnp.broadcast_to(shape, (*frame.expression.shape[:-1], shape.shape[-1])))

    def check_avatar(self, avatar: Avatar) -> None:
        """ValueError naming every array of an unbatched `avatar` that does not fit this system (UV
        resolution K, identity-feature channels, shape size S)."""
        k, c, s = self.cfg.uv_resolution, self.cfg.decoder.id_channels, self.head.num_shape
        raw, ident, shape = (tuple(np.shape(x)) for x in (avatar.raw_maps, avatar.identity_features,
                                                          avatar.shape_coeffs))
        problems = []
        if raw != (k, k, NUM_ATTRIBUTES):
            problems.append(f"raw_maps is {list(raw)} but the system's UV resolution K (model.uv_resolution) is {k}, "
                            f"expecting {[k, k, NUM_ATTRIBUTES]}")
        if ident != (k, k, c):
            problems.append(f"identity_features is {list(ident)} but the system expects {[k, k, c]} "
                            f"(K={k}, channels model.decoder.id_channels={c})")
        if shape != (s,):
            problems.append(f"shape_coeffs is {list(shape)} but the head model {self.head.name!r} has S={s} shape "
                            "coefficients")
        if problems:
            raise ValueError("avatar does not match the model: " + "; ".join(problems))

    # ------------------------------------------------------------------ render
    def render(self, gaussians: dict[str, Array], viewmats: Float[Array, "v 4 4"], Ks: Float[Array, "v 3 3"],
               width: int | None = None, height: int | None = None, backgrounds: Float[Array, "v 3"] | None = None,
               render_mode: str = "RGB", backend: str = "auto"):
        """`rasterize` of one frame's Gaussians into V cameras -> (colors [V,H,W,C], alphas [V,H,W,1])."""
        size = self.cfg.image_size
        return rasterize(gaussians["means"], gaussians["quats"], gaussians["scales"], gaussians["opacities"],
                         gaussians["colors"], viewmats, Ks, width or size, height or size, backgrounds=backgrounds,
                         render_mode=render_mode, backend=backend)


def parameter_counts(params: dict) -> dict[str, int]:
    """Parameters per top-level module and in total."""
    counts = {k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(v)))) for k, v in params.items()}
    counts["total"] = sum(counts.values())
    return counts

