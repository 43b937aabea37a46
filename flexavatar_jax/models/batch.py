"""From a data batch to rendered targets: the one forward path of training, evaluation and refinement.

A batch is the dict `data.pipeline.ExampleSource` (and `data.eval_sets`) yields, leading [B]; every
target is rendered from the avatar reconstructed from the same row's inputs, driven by the target's
tracked parameters (shape included: FlexAvatar drives with tracked FLAME parameters). It goes
through the same `FlexAvatar` methods a user calls (`reconstruct_views`, `animated_maps`,
`gaussians_from_maps`, `render`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array

from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models import gaussians as gauss
from flexavatar_jax.models.avatar import Avatar, FlexAvatar
from flexavatar_jax.models.views import InputViews

Batch = dict[str, Array]


def input_views(system: FlexAvatar, batch: Batch) -> InputViews:
    if not system.needs_cameras():
        return InputViews(batch["input_images"], batch["input_mask"])
    if "input_viewmats" not in batch:
        raise ValueError(f"the {system.cfg.lifter_type!r} lifter needs input cameras and tracked params: build the "
                         "data with input_annotations=True")
    params = HeadParams(**{f: batch[f"input_{f}"] for f in PARAM_FIELDS})
    return InputViews(batch["input_images"], batch["input_mask"], batch["input_viewmats"], batch["input_Ks"], params)


def target_params(batch: Batch) -> HeadParams:
    return HeadParams(**{f: batch[f"target_{f}"] for f in PARAM_FIELDS})


def reconstruct_batch(system: FlexAvatar, params, batch: Batch, train: bool = False
                      ) -> tuple[Avatar, Array | None, dict[str, Array]]:
    """-> (Avatar [B] carrying the targets' tracked shape, the shape head's prediction [B,S] or None,
    the lifter's side predictions (`FlexAvatar.reconstruct_views_aux`))."""
    avatar, aux = system.reconstruct_views_aux(params, input_views(system, batch), train=train)
    predicted = avatar.shape_coeffs if system.cfg.shape_head else None
    return Avatar(avatar.raw_maps, avatar.identity_features, batch["target_shape"][:, 0]), predicted, aux


def render_target(system: FlexAvatar, raw_maps: Array, driving: HeadParams, viewmat: Array, K: Array, size: int,
                  with_positions: bool, with_depth: bool = False):
    """One target -> (rgb [H,W,3], alpha [H,W,1], positions [H,W,3] or None, depth [H,W,1] or None).
    The background is white (1) for colour, and 1 for the position channels as FHAvatar's 3D TV
    normalisation assumes. `depth` is the expected camera-space depth Σ zᵢαᵢTᵢ / alpha (metres, 0
    where nothing is hit: the renderer's "D"), as the synthetic world renders its ground truth."""
    g = system.gaussians_from_maps(raw_maps, driving)
    if with_positions:
        g = dict(g, colors=jnp.concatenate([g["colors"], g["means"]], -1))
    channels = g["colors"].shape[-1]
    out, alpha = system.render(g, viewmat[None], K[None], width=size, height=size,
                               backgrounds=jnp.ones((1, channels), g["colors"].dtype),
                               render_mode="RGB+D" if with_depth else "RGB")
    positions = out[0, ..., 3:channels] if with_positions else None
    depth = out[0, ..., channels:] if with_depth else None
    return out[0, ..., :3], alpha[0], positions, depth


def forward(system: FlexAvatar, params, batch: Batch, *, train: bool, with_positions: bool = False,
            with_depth: bool = False, image_size: int | None = None, scale_K: float = 1.0) -> dict:
    """Reconstruct each row and render its targets -> dict(rgb [B,T,H,W,3], alpha [B,T,H,W,1],
    positions [B,T,H,W,3] or None, depth [B,T,H,W,1] or None, maps [B,T,K,K,14], avatar,
    predicted_shape, view_directions [B,4,3] or None)."""
    avatar, predicted, aux = reconstruct_batch(system, params, batch, train)
    driving = target_params(batch)
    maps = system.animated_maps(params, avatar, driving)
    size = image_size or system.image_size
    Ks = batch["target_Ks"] * jnp.array([scale_K, scale_K, 1.0])[:, None]
    one = functools.partial(render_target, system, size=size, with_positions=with_positions, with_depth=with_depth)
    rgb, alpha, positions, depth = jax.vmap(jax.vmap(one))(maps, driving, batch["target_viewmats"], Ks)
    return dict(rgb=rgb, alpha=alpha, positions=positions, depth=depth, maps=maps, avatar=avatar,
                predicted_shape=predicted, view_directions=aux.get("view_directions"))


def offset_spread(system: FlexAvatar, maps: Array) -> Array:
    """Mean distance (metres) of the Gaussians from their anchor on the head-model surface, per
    map: `maps [..., K,K,14]` -> `[...]` (what FHAvatar's 3D TV and the offset regulariser keep small)."""
    lead = maps.shape[:-3]
    flat = maps.reshape(-1, *maps.shape[-3:])

    def one(m):
        offsets = system.activation(gauss.gather_texels(system.layout, m))["offsets"]
        return jnp.mean(jnp.linalg.norm(offsets.astype(jnp.float32), axis=-1))

    return jax.vmap(one)(flat).reshape(lead)


def predict(system: FlexAvatar, params, batch: Batch, geometry: bool = False):
    """Rendered targets of a batch (evaluation): (rgb [B,T,H,W,3], alpha [B,T,H,W,1]); with
    `geometry` also a dict of `depth [B,T,H,W,1]` (expected depth, see `render_target`) and
    `offset_m [B,T]` (`offset_spread`)."""
    out = forward(system, params, batch, train=False, with_depth=geometry)
    if not geometry:
        return out["rgb"], out["alpha"]
    return out["rgb"], out["alpha"], dict(depth=out["depth"], offset_m=offset_spread(system, out["maps"]))


# The keys `forward` reads (an eval set also carries bookkeeping, e.g. NaN azimuths).
MODEL_INPUT_KEYS = ("input_images", "input_mask", "input_viewmats", "input_Ks", "target_viewmats", "target_Ks",
                    *(f"{side}_{f}" for side in ("input", "target") for f in PARAM_FIELDS))


def model_inputs(batch: dict) -> dict:
    """The entries of `batch` that `forward` reads."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS}
