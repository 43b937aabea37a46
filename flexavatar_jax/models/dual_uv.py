"""Dual-UV lifter ("Bringing Your Portrait to 3D Presence"): closed-form projection + MAE in-fill.

The patch tokens of every view are lifted into the head model's UV grid in closed form
(`uv_projection.lift_views`): Core-UV on the surface at G×G, Shell-UV from points extruded along
the normal at (G/2)×(G/2) for off-surface context (hair, silhouette), both blended linearly over
the views. Per texel the lifted features and their coverages are projected to the model width and
get a positional embedding of the UV grid (Fourier features of the texel's (u, v) plus a learned
per-texel embedding). Texels whose Core-UV coverage is below `coverage_threshold` (occluded or
unseen) are replaced by a learned MAE mask token, and a shallow transformer over the G² texels
fills them from the visible ones. Padding views have zero coverage, so they cannot change anything.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from flexavatar_jax.models import uv_projection as uvp
from flexavatar_jax.models.attention import SelfAttentionBlock, constrain_tokens, dense, layer_norm
from flexavatar_jax.models.views import InputViews, require

_UV_AXES = ("batch", "uv_h", "uv_w", "embed")


class DualUVLifter(uvp.ProjectionLifter):
    """`(patch_tokens [b,v,hp,wp,d_in], views, train) -> uv_tokens [b,G,G,width]`; `depth` MAE in-fill
    transformer blocks over the G² texels; texels with a Core-UV coverage below `coverage_threshold`
    are mask tokens.

    Needs `views.viewmats`, `views.Ks` and `views.params` (raises ValueError naming the missing).
    Its own projection knobs: `shell_offset` (metres) and `shell_grid` (default G//2, at least 1)."""

    shell_offset: float = uvp.DEFAULT_SHELL_OFFSET
    shell_grid: int | None = None

    @nn.compact
    def __call__(self, patch_tokens: Float[Array, "b v hp wp d"], views: InputViews,
                 train: bool = False) -> Float[Array, "b g g w"]:
        require(views, "dual_uv", "viewmats", "Ks", "params")
        b = patch_tokens.shape[0]
        g = self.grid
        width = self.width or patch_tokens.shape[-1]
        shell_grid = self.shell_grid or max(1, g // 2)
        core_table = uvp.splat_table(self.head, g, self.oversample, self.kernel_radius)
        shell_table = uvp.splat_table(self.head, shell_grid, self.oversample, self.kernel_radius)
        lifted = uvp.lift_views(self.head, patch_tokens.astype(jnp.float32), views, core_table, shell_table,
                                shell_offset=self.shell_offset, depth_tolerance=self.depth_tolerance,
                                zbuffer_cells_per_patch=self.zbuffer_cells_per_patch)
        shell = uvp.upsample_to(lifted.shell, g)
        shell_coverage = uvp.upsample_to(lifted.shell_coverage[..., None], g)
        # Coverage enters as a feature too: it says how much evidence (views × visibility) a texel has.
        per_texel = jnp.concatenate([lifted.core, shell, lifted.core_coverage[..., None], shell_coverage], -1)
        x = dense(width, ("embed_in", "embed"), self.dtype, "lift_proj")(per_texel.astype(self.dtype))
        x = x.reshape(b, g * g, width)

        mask_token = self.param("mask_token", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
                                (width,))
        seen = (lifted.core_coverage >= self.coverage_threshold).reshape(b, g * g, 1)
        # MAE: occluded/unseen texels carry no image evidence, only the shared mask token (+ position).
        x = jnp.where(seen, x, mask_token.astype(self.dtype))

        fourier = jnp.asarray(uvp.texel_fourier_features(g, self.fourier_frequencies))
        pos = dense(width, (None, "embed"), self.dtype, "fourier_proj")(fourier)
        learned = self.param("texel_embedding", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                             ("tokens", "embed")),
                             (g * g, width))
        x = constrain_tokens(x + (pos + learned).astype(self.dtype)[None])
        for i in range(self.depth):
            x = SelfAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"fill_{i}")(x)
        x = layer_norm(self.dtype, "out_norm")(x)
        return nn.with_logical_constraint(x.reshape(b, g, g, width), _UV_AXES)
