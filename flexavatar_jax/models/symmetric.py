"""FHAvatar's symmetric UV fusion as a lifter ("Generalizable and Animatable 3D Full-Head Gaussian
Avatar from a Single Image", Sec. 3, Eqs. 3-5 as reconstructed here).

Two kinds of UV features meet:

* **Global UV tokens** F_g: G² learned UV queries (+ a Fourier embedding of the texel's (u, v))
  that cross-attend to all image tokens of all views (`CrossAttentionBlock`). FHAvatar takes its
  global full-head features from a 3D-GAN prior; learned queries are this repository's stand-in.
* **Local UV features** F_l with visibility mask M (Eq. 3): the closed-form projection of the
  patch tokens into UV (`uv_projection.lift_views`, Core-UV only),
  `F_l(t) = Σ_i m_i k(Δuv_i,t) f_i / (Σ_i m_i k + ε)`, `M(t) = [coverage(t) ≥ coverage_threshold]`.

**Flip-and-fill** (Eq. 4). Faces are nearly symmetric, so an occluded texel t borrows the local
feature of its mirrored texel t* = `head.uv.uv_mirror_map(head, G)[t]` (a (row, col) gather; FLAME's
layout is not a column flip) when that one is visible:
`F̂_l(t) = M(t) F_l(t) + (1 − M(t)) M(t*) F_l(t*)`, `M̂(t) = M(t) ∨ M(t*)`.

**Symmetric windowed cross-attention** (Eq. 5). Each global token attends to the filled local
features of the w×w window around its own texel *and* the w×w window around its mirrored texel,
with the occlusion mask on the keys:
`F_g(t) ← F_g(t) + softmax(q_t K_Sᵀ/√d_h + log M̂_S) V_S`, `S = W(t) ∪ W(t*)`,
followed by an MLP. Keys off the grid, of texels without a mirror, or with M̂ = 0 are masked; a
query whose keys are all masked gets no update. A learned key bias per window slot tells the
attention where a key sits (the mirror window is read with its columns reversed, which is exactly
the mirrored neighbourhood for a left-right symmetric layout and an approximation otherwise).

The layers alternate global cross-attention and symmetric windowed attention, `depth` times each.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from flexavatar_jax.head import HeadModel
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models import uv_projection as uvp
from flexavatar_jax.models.attention import (MLP, CrossAttentionBlock, Dtype, HeadMerge, HeadProjection, constrain_tokens,
                                              dense, head_width, layer_norm)
from flexavatar_jax.models.views import InputViews, require

_UV_AXES = ("batch", "uv_h", "uv_w", "embed")


def mirror_indices(head: HeadModel, grid: int) -> tuple[Int[np.ndarray, " gg"], Bool[np.ndarray, " gg"]]:
    """Flattened index (row·G + col) of every texel's mirror texel (itself where it has none) and
    whether it has one (valid texels only), from `head.uv.uv_mirror_map`."""
    mirror = uvt.uv_mirror_map(head, grid).reshape(grid * grid, 2)
    has = mirror[:, 0] >= 0
    flat = np.where(has, mirror[:, 0] * grid + mirror[:, 1], np.arange(grid * grid))
    return flat.astype(np.int32), has


def symmetric_windows(head: HeadModel, grid: int,
                      window: int) -> tuple[Int[np.ndarray, "gg s"], Bool[np.ndarray, "gg s"]]:
    """Key texels of every query texel t: the w×w window around t, then the w×w window around its
    mirror t* (columns reversed), as flattened indices [G², 2w²] and an in-grid / has-mirror mask."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of texels, got {window}")
    half = window // 2
    dy, dx = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    mirror, has_mirror = mirror_indices(head, grid)
    m_rows, m_cols = np.divmod(mirror, grid)

    def window_at(r, c, sign):
        rr, cc = r[:, None] + dy[None, :], c[:, None] + sign * dx[None, :]
        inside = (rr >= 0) & (rr < grid) & (cc >= 0) & (cc < grid)
        return np.clip(rr, 0, grid - 1) * grid + np.clip(cc, 0, grid - 1), inside

    own, own_ok = window_at(rows, cols, 1)
    mir, mir_ok = window_at(m_rows, m_cols, -1)
    mir_ok &= has_mirror[:, None]
    return (np.concatenate([own, mir], 1).astype(np.int32), np.concatenate([own_ok, mir_ok], 1))


def flip_and_fill(
    local: Float[Array, "b t d"], visible: Bool[Array, "b t"], mirror: Int[Array, " t"], has_mirror: Bool[Array, " t"]
) -> tuple[Float[Array, "b t d"], Bool[Array, "b t"]]:
    """Eq. 4: occluded texels take their mirror texel's local feature when the mirror is visible."""
    mirrored_visible = visible[:, mirror] & has_mirror[None]
    filled = jnp.where(visible[..., None], local, jnp.where(mirrored_visible[..., None], local[:, mirror], 0.0))
    return filled, visible | mirrored_visible


class SymmetricWindowAttention(nn.Module):
    """Eq. 5: each query token t attends to `local` tokens `window_index[t]` (2w² keys), masked by
    `window_valid[t] & local_mask[key]`; K/V are projected once on the grid, then gathered."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Float[Array, "b t d"], local: Float[Array, "b t d"], local_mask: Bool[Array, "b t"],
                 window_index: Int[Array, "t s"], window_valid: Bool[Array, "t s"]) -> Float[Array, "b t d"]:
        d = queries.shape[-1]
        head_dim = head_width(d, self.num_heads)

        def proj(name, x):
            return HeadProjection(self.num_heads, head_dim, self.dtype, name=name)(x)

        q = proj("query", queries)
        k, v = proj("key", local), proj("value", local)
        slots = window_index.shape[1]
        slot_bias = self.param("slot_key_bias", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                             (None, "heads", "kv")),
                               (slots, self.num_heads, head_dim))
        keys = k[:, window_index] + slot_bias.astype(self.dtype)  # [b,t,s,h,k]
        values = v[:, window_index]
        logits = jnp.einsum("bthk,btshk->bths", q, keys) / jnp.sqrt(jnp.asarray(head_dim, self.dtype))
        valid = (window_valid[None] & local_mask[:, window_index])[:, :, None, :]  # [b,t,1,s]
        logits = jnp.where(valid, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1)
        # A fully occluded neighbourhood (both windows) contributes nothing instead of a uniform mix.
        weights = jnp.where(jnp.any(valid, axis=-1, keepdims=True), weights, 0.0).astype(self.dtype)
        out = jnp.einsum("bths,btshk->bthk", weights, values)
        return HeadMerge(d, self.dtype, name="out")(out)


class SymmetricWindowBlock(nn.Module):
    """Pre-LN: windowed symmetric cross-attention to the local UV features, then an MLP."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries, local, local_mask, window_index, window_valid):
        h = layer_norm(self.dtype, "norm_query")(queries)
        c = layer_norm(self.dtype, "norm_local")(local)
        x = constrain_tokens(queries + SymmetricWindowAttention(self.num_heads, self.dtype, name="window_attn")(
            h, c, local_mask, window_index, window_valid))
        h = layer_norm(self.dtype, "norm_mlp")(x)
        return constrain_tokens(x + MLP(int(x.shape[-1] * self.mlp_ratio), self.dtype, name="mlp")(h))


class SymmetricUVLifter(uvp.ProjectionLifter):
    """`(patch_tokens [b,v,hp,wp,d_in], views, train) -> uv_tokens [b,G,G,width]`; `depth` pairs of
    (global cross-attention, symmetric windowed attention) blocks over w×w windows (`window`, odd);
    the visibility mask M is the Core-UV coverage ≥ `coverage_threshold`.

    Needs `views.viewmats`, `views.Ks` and `views.params` (raises ValueError naming the missing)."""

    window: int = 7

    @nn.compact
    def __call__(self, patch_tokens: Float[Array, "b v hp wp d"], views: InputViews,
                 train: bool = False) -> Float[Array, "b g g w"]:
        require(views, "symmetric", "viewmats", "Ks", "params")
        b, v, hp, wp, d_in = patch_tokens.shape
        g = self.grid
        width = self.width or d_in

        # Eq. 3: local UV features and the visibility mask.
        table = uvp.splat_table(self.head, g, self.oversample, self.kernel_radius)
        lifted = uvp.lift_views(self.head, patch_tokens.astype(jnp.float32), views, table,
                                depth_tolerance=self.depth_tolerance,
                                zbuffer_cells_per_patch=self.zbuffer_cells_per_patch)
        visible = (lifted.core_coverage >= self.coverage_threshold).reshape(b, g * g)
        # Eq. 4: flip-and-fill through the UV mirror map.
        mirror, has_mirror = mirror_indices(self.head, g)
        filled, filled_mask = flip_and_fill(lifted.core.reshape(b, g * g, d_in), visible, jnp.asarray(mirror),
                                            jnp.asarray(has_mirror))
        local = constrain_tokens(dense(width, ("embed_in", "embed"), self.dtype, "local_proj")(
            filled.astype(self.dtype)))

        # Global UV tokens read all image tokens of all (real) views.
        real = jnp.where(views.mask[:, :, None, None, None], patch_tokens, 0.0)  # padding content never enters
        tokens = dense(width, ("embed_in", "embed"), self.dtype, "token_proj")(real.astype(self.dtype))
        tokens = constrain_tokens(tokens.reshape(b, v * hp * wp, width))
        token_mask = jnp.repeat(views.mask, hp * wp, axis=1)
        fourier = jnp.asarray(uvp.texel_fourier_features(g, self.fourier_frequencies))
        pos = dense(width, (None, "embed"), self.dtype, "fourier_proj")(fourier)
        learned = self.param("uv_queries", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                        ("tokens", "embed")),
                             (g * g, width))
        x = constrain_tokens(jnp.broadcast_to((learned + pos).astype(self.dtype), (b, g * g, width)))

        window_index, window_valid = symmetric_windows(self.head, g, self.window)
        window_index, window_valid = jnp.asarray(window_index), jnp.asarray(window_valid)
        for i in range(self.depth):
            x = CrossAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"global_{i}")(
                x, tokens, token_mask)
            # Eq. 5: symmetric windowed cross-attention with the occlusion mask.
            x = SymmetricWindowBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"symmetric_{i}")(
                x, local, filled_mask, window_index, window_valid)
        x = layer_norm(self.dtype, "out_norm")(x)
        return nn.with_logical_constraint(x.reshape(b, g, g, width), _UV_AXES)
