"""What a lifter sees (the input views of one batch, padded to a fixed count) and what every lifter is.

Every lifter (`head_queries.StructuredHeadQueries`, `dual_uv.DualUVLifter`,
`symmetric.SymmetricUVLifter`; registered by name in `lifters.LIFTERS`) is a `Lifter`: a Linen
module with the shared options below and the same call:

    lifter(patch_tokens: [b, v, hp, wp, d], views: InputViews, train: bool) -> uv_tokens [b, G, G, d]

`patch_tokens[:, i]` is the encoder's feature map of view i (token (r, c) covers pixels
[r·p, (r+1)·p) × [c·p, (c+1)·p) with p = H / hp, its value sits at the patch centre). Views whose
`mask` is False are padding and must not influence the output. The default lifter reads only
`patch_tokens` and `mask` (FlexAvatar needs no camera); the projection lifters also read the
cameras and the tracked head parameters, and raise a ValueError naming what is missing.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from flexavatar_jax.data.pipeline import MAX_INPUTS
from flexavatar_jax.head import HeadModel, HeadParams
from flexavatar_jax.models.attention import Dtype

__all__ = ["MAX_INPUTS", "InputViews", "Lifter", "require"]


class InputViews(NamedTuple):
    """`images [b,v,H,W,3]` in [0,1]; `mask [b,v]` True for real views (at least one per row);
    optional `viewmats [b,v,4,4]` (OpenCV world->camera), `Ks [b,v,3,3]` (pixels) and the tracked
    head parameters `params` (HeadParams with leading [b,v])."""

    images: Float[Array, "b v h w 3"]
    mask: Bool[Array, "b v"]
    viewmats: Float[Array, "b v 4 4"] | None = None
    Ks: Float[Array, "b v 3 3"] | None = None
    params: HeadParams | None = None

    @property
    def num_views(self) -> int:
        return self.images.shape[1]


def require(views: InputViews, lifter: str, *fields: str) -> None:
    """ValueError naming the lifter and the missing annotations (cameras / tracked params)."""
    missing = [f for f in fields if getattr(views, f) is None]
    if missing:
        raise ValueError(f"the {lifter!r} lifter needs input {', '.join(missing)} (it projects image features "
                         f"through the cameras and the tracked head mesh); the default 'queries' lifter needs none")


class Lifter(nn.Module):
    """Base of every lifter: `head` model, UV grid `grid` (G), token `width` (None: the patch-token
    width), `num_heads`, `depth` blocks of the lifter's main stack (what a block is differs per
    lifter: see `config.LifterConfig`), `fourier_frequencies` of the positional embeddings,
    `mlp_ratio` of the transformer MLPs, compute `dtype`. Subclasses add their own options."""

    head: HeadModel
    grid: int
    num_heads: int
    width: int | None = None
    depth: int = 2
    fourier_frequencies: int = 6
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    def __call__(self, patch_tokens: Float[Array, "b v hp wp d"], views: InputViews,
                 train: bool = False) -> Float[Array, "b g g w"]:
        raise NotImplementedError
