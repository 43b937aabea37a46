"""FlexAvatar's deformation UNet: concat(F_id, P_driving) -> expression-dependent attribute deltas.

A light UV-space UNet (one conv pair per level, average-pool down, nearest up + skip) so that
animation stays real-time; its output (raw-attribute deltas, see `uv_decoder.ATTRIBUTE_SLICES`)
is confined to the dynamic-region UV mask by the avatar, not here.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from flexavatar_jax.models.attention import Dtype
from flexavatar_jax.models.uv_decoder import NUM_ATTRIBUTES, conv

_UV = ("batch", "uv_h", "uv_w", "channels")


class DeformationUNet(nn.Module):
    channels: tuple[int, ...] = (32, 64, 128)
    out_channels: int = NUM_ATTRIBUTES
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, identity_features: Float[Array, "b k k c"],
                 driving: Float[Array, "b k k e"]) -> Float[Array, "b k k o"]:
        k = identity_features.shape[1]
        levels = len(self.channels)
        if k % (2 ** (levels - 1)):
            raise ValueError(f"UV resolution {k} must be divisible by 2^{levels - 1} for a {levels}-level UNet")
        x = jnp.concatenate([identity_features, driving.astype(identity_features.dtype)], axis=-1)
        skips = []
        for i, c in enumerate(self.channels):
            if i:
                x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.gelu(conv(c, 3, self.dtype, f"down_{i}a")(x))
            x = nn.gelu(conv(c, 3, self.dtype, f"down_{i}b")(x))
            x = nn.with_logical_constraint(x, _UV)
            skips.append(x)
        for i in reversed(range(levels - 1)):
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
            x = jnp.concatenate([x, skips[i]], axis=-1)
            x = nn.gelu(conv(self.channels[i], 3, self.dtype, f"up_{i}a")(x))
            x = nn.gelu(conv(self.channels[i], 3, self.dtype, f"up_{i}b")(x))
            x = nn.with_logical_constraint(x, _UV)
        # Small output init: the avatar starts as its static maps and the UNet learns the deltas.
        out = conv(self.out_channels, 1, self.dtype, "out", scale=1e-2)(x)
        return nn.with_logical_constraint(out.astype(jnp.float32), _UV)
