"""Structured Head Queries: FlexAvatar's default lifter (no camera, pose or view index).

G×G learnable query tokens laid out on the head model's UV grid. Each token = a learned
embedding + a Fourier embedding of the canonical template point at its texel centre; texels outside
the UV charts get a learned "empty" embedding instead of the Fourier term. The patch tokens of all
1–4 views are concatenated (absent views masked out) and mixed by global self-attention; the
queries then cross-attend to them. Nothing in the token stream says which view a token came from,
so the output is invariant to the order of the views and needs no cameras.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.head import HeadModel
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models.attention import (CrossAttentionBlock, SelfAttentionBlock, constrain_tokens,
                                              dense, fourier_features, layer_norm)
from flexavatar_jax.models.views import InputViews, Lifter

# Template points are divided by this (metres) before the Fourier embedding: the head spans ~±0.15 m.
TEMPLATE_EXTENT = 0.15


def template_points(head: HeadModel, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical template point at every texel centre of the G×G UV grid, and the valid mask."""
    # Host numpy on purpose: this is a constant of the module, not part of the traced computation.
    table = uvt.texel_table(head, grid)
    corners = np.asarray(head.faces)[np.maximum(table.face, 0)]  # [G,G,3]
    points = np.einsum("hwc,hwcd->hwd", table.bary, np.asarray(head.v_template, np.float64)[corners])
    return np.where(table.valid[..., None], points, 0.0).astype(np.float32), np.asarray(table.valid)


class StructuredHeadQueries(Lifter):
    """`depth` cross-attention blocks from the queries to the image tokens, after `global_depth`
    self-attention blocks over the image tokens of all views."""

    global_depth: int = 2

    @nn.compact
    def __call__(self, patch_tokens: Float[Array, "b v hp wp d"], views: InputViews,
                 train: bool = False) -> Float[Array, "b g g w"]:
        b, v, hp, wp, d_in = patch_tokens.shape
        width = self.width or d_in
        tokens = dense(width, ("embed_in", "embed"), self.dtype, "token_proj")(patch_tokens)
        tokens = constrain_tokens(tokens.reshape(b, v * hp * wp, width))
        token_mask = jnp.repeat(views.mask, hp * wp, axis=1)
        for i in range(self.global_depth):
            tokens = SelfAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"global_{i}")(tokens, token_mask)
        tokens = layer_norm(self.dtype, "tokens_norm")(tokens)

        g = self.grid
        points, valid = template_points(self.head, g)
        fourier = fourier_features(jnp.asarray(points.reshape(g * g, 3) / TEMPLATE_EXTENT), self.fourier_frequencies)
        fourier = dense(width, (None, "embed"), self.dtype, "fourier_proj")(fourier)
        empty = self.param("empty_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                           (width,))
        learned = self.param("query_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("tokens", "embed")),
                             (g * g, width))
        queries = learned + jnp.where(jnp.asarray(valid.reshape(g * g, 1)), fourier, empty)
        queries = constrain_tokens(jnp.broadcast_to(queries.astype(self.dtype), (b, g * g, width)))
        for i in range(self.depth):
            queries = CrossAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"cross_{i}")(
                queries, tokens, token_mask)
        queries = layer_norm(self.dtype, "out_norm")(queries)
        return nn.with_logical_constraint(queries.reshape(b, g, g, width), ("batch", "uv_h", "uv_w", "embed"))
