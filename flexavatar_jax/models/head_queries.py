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

`view_pose` (also an addition, for the same finding: a content-only gate learned from zero did
not move in the tiny budget): a pose head predicts, from each view's own patch tokens, the unit
direction from the head to that view's camera in the head's frame (`ViewPose`; trained against
the data engine's label by `loss.view_pose`, so no camera is needed at inference). Before each
cross-attention block every query then weighs the views by how squarely they face its surface
point, log softmax over views of `κ·(n·d)` (n the query's outward direction, d a view's predicted
direction, κ a learned per-block sharpness starting at `VIEW_POSE_SHARPNESS`), added to the
attention logits of the view's tokens like the gate's. The directions enter the gate through a
stop-gradient: the pose head is trained by its label only, the gate is a geometric prior. Queries
outside the UV charts have n = 0 and weigh all views equally. Both terms add when both are on.
`view_pose_oracle` (a diagnostic) weighs with the true directions of the input cameras instead
(`views.viewmats` and the tracked poses: it needs them, like the projection lifters); the pose
head is still trained and its predictions still reported.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from flexavatar_jax.data import motion
from flexavatar_jax.head import HeadModel
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models.attention import (CrossAttentionBlock, Dtype, SelfAttentionBlock, constrain_tokens,
                                              dense, fourier_features, layer_norm)
from flexavatar_jax.models.views import InputViews, Lifter, require

# Template points are divided by this (metres) before the Fourier embedding: the head spans ~±0.15 m.
TEMPLATE_EXTENT = 0.15
# Initial κ of the view-pose weighting: a view facing the point (n·d = 1) against one at 90° gets
# e² ≈ 7× the mass, against the opposite one e⁴ ≈ 55×.
VIEW_POSE_SHARPNESS = 2.0
# Channels each patch token keeps for the pose head (it reads the whole token map: a mean over
# tokens could not tell a left profile from a right one).
VIEW_POSE_CHANNELS = 8


def template_points(head: HeadModel, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical template point at every texel centre of the G×G UV grid, and the valid mask."""
    # Host numpy on purpose: this is a constant of the module, not part of the traced computation.
    table = uvt.texel_table(head, grid)
    corners = np.asarray(head.faces)[np.maximum(table.face, 0)]  # [G,G,3]
    points = np.einsum("hwc,hwcd->hwd", table.bary, np.asarray(head.v_template, np.float64)[corners])
    return np.where(table.valid[..., None], points, 0.0).astype(np.float32), np.asarray(table.valid)


def query_directions(head: HeadModel, grid: int) -> np.ndarray:
    """[G·G, 3] unit outward direction of each query's template point from the centre of the valid
    points (a head is nearly star-shaped about it), 0 for queries outside the UV charts."""
    points, valid = template_points(head, grid)
    points, valid = points.reshape(-1, 3), valid.reshape(-1)
    rel = points - points[valid].mean(axis=0)
    norm = np.linalg.norm(rel, axis=-1, keepdims=True)
    return np.where(valid[:, None] & (norm > 0), rel / np.maximum(norm, 1e-9), 0.0).astype(np.float32)


class ViewPose(nn.Module):
    """Patch tokens of each view [b, v, hp, wp, d] -> unit direction [b, v, 3] from the head to the
    view's camera, in the head's frame (`data.motion.view_directions`), from that view alone."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, patch_tokens: Float[Array, "b v hp wp d"]) -> Float[Array, "b v 3"]:
        b, v = patch_tokens.shape[:2]
        x = dense(VIEW_POSE_CHANNELS, ("embed_in", None), self.dtype, "reduce")(layer_norm(self.dtype, "norm")(patch_tokens))
        x = dense(self.hidden, (None, "mlp"), self.dtype, "hidden")(x.reshape(b, v, -1))
        x = dense(3, ("mlp", None), self.dtype, "out")(nn.gelu(x)).astype(jnp.float32)
        return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class ViewGate(nn.Module):
    """A scaled query·view-summary score [b, s, v] (the logits of the gate's choice among the
    views); the scale starts at 0."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Float[Array, "b s d"], summary: Float[Array, "b v d"]) -> Float[Array, "b s v"]:
        width = queries.shape[-1]
        q = dense(width, ("embed", "mlp"), self.dtype, "query")(layer_norm(self.dtype, "norm_query")(queries))
        k = dense(width, ("embed", "mlp"), self.dtype, "key")(layer_norm(self.dtype, "norm_summary")(summary))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.zeros_init(), ()), ())
        return scale * jnp.einsum("bsd,bvd->bsv", q, k).astype(jnp.float32) / np.sqrt(width)


def view_log_weights(logits: Float[Array, "b s v"], mask: Bool[Array, "b v"]) -> Float[Array, "b s v"]:
    """log softmax of `logits` over the real views (0 for padded views, which the attention mask
    hides anyway)."""
    logits = jnp.where(mask[:, None, :], logits, -1e30)
    return jnp.where(mask[:, None, :], jax.nn.log_softmax(logits, axis=-1), 0.0)


class StructuredHeadQueries(Lifter):
    """`depth` cross-attention blocks from the queries to the image tokens, after `global_depth`
    self-attention blocks over the image tokens of all views."""

    global_depth: int = 2
    view_gate: bool = False
    view_pose: bool = False
    view_pose_oracle: bool = False

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
        summary = facing = None
        if self.view_gate:  # the mean token of each view [b, v, width]
            summary = tokens.reshape(b, v, hp * wp, width).mean(axis=2)
        if self.view_pose:
            directions = ViewPose(width, self.dtype, name="view_pose")(patch_tokens)  # [b, v, 3]
            self.sow("aux", "view_directions", directions)
            normals = jnp.asarray(query_directions(self.head, g))
            if self.view_pose_oracle:
                require(views, "queries (view_pose_oracle)", "viewmats", "params")
                p = views.params
                directions = motion.view_directions(views.viewmats, p.global_pose, p.neck_pose, p.translation)
            facing = jnp.einsum("sc,bvc->bsv", normals, jax.lax.stop_gradient(directions))
        for i in range(self.depth):
            bias = None
            if self.view_gate or self.view_pose:
                logits = jnp.zeros((b, g * g, v), jnp.float32)
                if self.view_gate:
                    logits += ViewGate(self.dtype, name=f"view_gate_{i}")(queries, summary)
                if self.view_pose:
                    sharpness = self.param(f"view_pose_sharpness_{i}", nn.with_logical_partitioning(
                        nn.initializers.constant(VIEW_POSE_SHARPNESS), ()), ())
                    logits += sharpness * facing
                bias = jnp.repeat(view_log_weights(logits, views.mask), hp * wp, axis=-1)  # [b, g², v·hp·wp]
            queries = CrossAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"cross_{i}")(
                queries, tokens, token_mask, bias)
        queries = layer_norm(self.dtype, "out_norm")(queries)
        return nn.with_logical_constraint(queries.reshape(b, g, g, width), ("batch", "uv_h", "uv_w", "embed"))
