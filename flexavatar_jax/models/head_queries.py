"""Structured Head Queries: FlexAvatar's default lifter (no camera, pose or view index).

G×G learnable query tokens laid out on the head model's UV grid. Each token = a learned
embedding + a Fourier embedding of the canonical template point at its texel centre; texels outside
the UV charts get a learned "empty" embedding instead of the Fourier term. The patch tokens of all
1–4 views are concatenated (absent views masked out) and mixed by global self-attention; the
queries then cross-attend to them. Nothing in the token stream says which view a token came from,
so the output is invariant to the order of the views and needs no cameras.

`view_gate` (an addition to FlexAvatar, for issue 17's finding that the queries attend to the
views blindly): before each cross-attention block, every query scores every input view against
a summary of it (the mean of its tokens) and the log of that softmax over views is added to the
attention logits of all the view's tokens, so a query's attention mass per view is the gate's
choice times its attention within the view. The score's scale starts at 0 (a uniform gate: the
plain lifter), the gate is symmetric in the views (still order-invariant) and needs no cameras.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from flexavatar_jax.head import HeadModel
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models.attention import (CrossAttentionBlock, Dtype, SelfAttentionBlock, constrain_tokens,
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


class ViewGate(nn.Module):
    """log softmax over the real views of a scaled query·view-summary score [b, s, v] (0 for
    padded views, which the attention mask hides anyway); the scale starts at 0."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Float[Array, "b s d"], summary: Float[Array, "b v d"],
                 mask: Bool[Array, "b v"]) -> Float[Array, "b s v"]:
        width = queries.shape[-1]
        q = dense(width, ("embed", "mlp"), self.dtype, "query")(layer_norm(self.dtype, "norm_query")(queries))
        k = dense(width, ("embed", "mlp"), self.dtype, "key")(layer_norm(self.dtype, "norm_summary")(summary))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()), ())
        logits = scale * jnp.einsum("bsd,bvd->bsv", q, k).astype(jnp.float32) / np.sqrt(width)
        logits = jnp.where(mask[:, None, :], logits, -1e30)
        return jnp.where(mask[:, None, :], jax.nn.log_softmax(logits, axis=-1), 0.0)


class StructuredHeadQueries(Lifter):
    """`depth` cross-attention blocks from the queries to the image tokens, after `global_depth`
    self-attention blocks over the image tokens of all views."""

    global_depth: int = 2
    view_gate: bool = False

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
        summary = None
        if self.view_gate:  # the mean token of each view [b, v, width]
            summary = tokens.reshape(b, v, hp * wp, width).mean(axis=2)
        for i in range(self.depth):
            bias = None
            if self.view_gate:
                gate = ViewGate(self.dtype, name=f"view_gate_{i}")(queries, summary, views.mask)  # [b, g², v]
                bias = jnp.repeat(gate, hp * wp, axis=-1)
            queries = CrossAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"cross_{i}")(
                queries, tokens, token_mask, bias)
        queries = layer_norm(self.dtype, "out_norm")(queries)
        return nn.with_logical_constraint(queries.reshape(b, g, g, width), ("batch", "uv_h", "uv_w", "embed"))
