"""UV decoder: lifter tokens on the G×G UV grid -> K×K identity features and Gaussian attribute maps.

The 14 raw attribute channels (FHAvatar's `A ∈ R^{K×K×14}`) are kept *before* activation so the
deformation UNet can add its deltas in the same space; `AttributeActivation` turns raw maps into
physical attributes. Initial values (the decoder's last layer starts near zero): offset ≈ 0, colour 0.5,
opacity `init_opacity`, relative scale `init_scale` (1 = one texel wide), identity rotation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.models.attention import Dtype

# Channel layout of the raw attribute maps.
ATTRIBUTE_SLICES = dict(offset=slice(0, 3), color=slice(3, 6), opacity=slice(6, 7), scale=slice(7, 10),
                        rotation=slice(10, 14))
NUM_ATTRIBUTES = ATTRIBUTE_SLICES["rotation"].stop
_UV = ("batch", "uv_h", "uv_w", "channels")


def conv(features: int, kernel: int, dtype: Dtype, name: str | None = None, scale: float = 1.0) -> nn.Conv:
    """'SAME' conv with logically named params; `scale` shrinks the init (for output heads)."""
    init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return nn.Conv(features, (kernel, kernel), padding="SAME", dtype=dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(init, (None, None, "channels_in", "channels")),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("channels",)))


def pixel_shuffle(x: Float[Array, "b h w c"], factor: int) -> Float[Array, "b hf wf cf"]:
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, factor, factor, c // (factor * factor))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * factor, w * factor, c // (factor * factor))


class AttributeActivation(NamedTuple):
    """How raw channels become attributes (config fields `model.init_opacity`, `model.init_scale`, `model.offset_scale`)."""

    init_opacity: float = 0.7
    init_scale: float = 0.7
    offset_scale: float = 0.01  # metres per raw unit: keeps the raw map O(1) for cm offsets

    def bias(self) -> np.ndarray:
        b = np.zeros(NUM_ATTRIBUTES, np.float32)
        b[ATTRIBUTE_SLICES["opacity"]] = math.log(self.init_opacity / (1.0 - self.init_opacity))
        b[ATTRIBUTE_SLICES["scale"]] = math.log(self.init_scale)
        b[ATTRIBUTE_SLICES["rotation"].start] = 1.0
        return b

    def __call__(self, raw: Float[Array, f"... {NUM_ATTRIBUTES}"]) -> dict[str, Array]:
        """offset (local t,b,n frame, metres), colour [0,1], opacity [0,1], relative scale > 0,
        rotation (unit wxyz) from raw channels."""
        s = ATTRIBUTE_SLICES
        rot = raw[..., s["rotation"]]
        return dict(
            offsets=raw[..., s["offset"]] * self.offset_scale,
            colors=nn.sigmoid(raw[..., s["color"]]),
            opacities=nn.sigmoid(raw[..., s["opacity"]])[..., 0],
            relative_scales=jnp.exp(raw[..., s["scale"]]),
            local_quats=rot / jnp.maximum(jnp.linalg.norm(rot, axis=-1, keepdims=True), 1e-8),
        )


class UVDecoder(nn.Module):
    """[b,G,G,d] -> (identity features [b,K,K,id_channels], raw attribute maps [b,K,K,14]) by
    log2(K/G) stages of conv + pixel shuffle (×2 each)."""

    resolution: int
    channels: int
    id_channels: int
    activation: AttributeActivation = AttributeActivation()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, uv_tokens: Float[Array, "b g g d"]) -> tuple[Array, Array]:
        g = uv_tokens.shape[1]
        factor = self.resolution // g
        if factor * g != self.resolution or factor & (factor - 1):
            raise ValueError(f"UV resolution {self.resolution} must be the grid {g} times a power of two")
        x = conv(self.channels, 1, self.dtype, "in_proj")(uv_tokens)
        for i in range(int(math.log2(factor))):
            x = nn.gelu(conv(self.channels * 4, 3, self.dtype, f"up_{i}")(x))
            x = nn.with_logical_constraint(pixel_shuffle(x, 2), _UV)
            x = nn.gelu(conv(self.channels, 3, self.dtype, f"refine_{i}")(x))
        identity = conv(self.id_channels, 1, self.dtype, "identity_head")(x)
        raw = conv(NUM_ATTRIBUTES, 1, self.dtype, "attribute_head", scale=1e-2)(x)
        raw = raw + jnp.asarray(self.activation.bias(), raw.dtype)
        return (nn.with_logical_constraint(identity.astype(jnp.float32), _UV),
                nn.with_logical_constraint(raw.astype(jnp.float32), _UV))
