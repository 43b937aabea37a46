"""Transformer building blocks shared by the encoder and the UV lifters (pre-LayerNorm).

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`) and activations are
constrained to (`batch`, `tokens`, `embed`), so the sharding rules in a config decide placement;
without a mesh the constraints are no-ops. `dtype` is the compute dtype (e.g. bfloat16), params
stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

Dtype = Any
_DENSE_INIT = nn.initializers.xavier_uniform()


def dense(features: int, names: tuple[str, str], dtype: Dtype, name: str | None = None, use_bias: bool = True,
          kernel_init=_DENSE_INIT) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, use_bias=use_bias, name=name,
                    kernel_init=nn.with_logical_partitioning(kernel_init, names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:]))


def layer_norm(dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(dtype=dtype, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def constrain_tokens(x: Array) -> Array:
    return nn.with_logical_constraint(x, ("batch", "tokens", "embed"))


class MLP(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
        d = x.shape[-1]
        h = dense(self.hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
        h = nn.with_logical_constraint(nn.gelu(h), ("batch", "tokens", "mlp"))
        return dense(d, ("mlp", "embed"), self.dtype, "fc2")(h)


def head_width(width: int, num_heads: int) -> int:
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads={num_heads}")
    return width // num_heads


class HeadProjection(nn.Module):
    """x [..., d] -> [..., heads, head_dim]. Params are created at their full 3-D shape (not
    flattened as DenseGeneral does), so their logical names apply at creation under any mesh."""

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... h k"]:
        init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("embed", "heads", "kv")),
                            (x.shape[-1], self.num_heads, self.head_dim))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "kv")),
                          (self.num_heads, self.head_dim))
        return jnp.einsum("...d,dhk->...hk", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class HeadMerge(nn.Module):
    """[..., heads, head_dim] -> [..., d] (the attention output projection)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... h k"]) -> Float[Array, "... d"]:
        init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, ("heads", "kv", "embed")),
                            (*x.shape[-2:], self.features))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                          (self.features,))
        return jnp.einsum("...hk,hkd->...d", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Attention(nn.Module):
    """Multi-head attention from `queries [b,s,d]` to `keys_values [b,t,d]`; `kv_mask [b,t]`
    (True = attend) hides padding tokens (e.g. absent input views); `bias [b,s,t]` is added to
    every head's logits."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Float[Array, "b s d"], keys_values: Float[Array, "b t d"],
                 kv_mask: Bool[Array, "b t"] | None = None,
                 bias: Float[Array, "b s t"] | None = None) -> Float[Array, "b s d"]:
        d = queries.shape[-1]
        head_dim = head_width(d, self.num_heads)

        def proj(name, x):
            return HeadProjection(self.num_heads, head_dim, self.dtype, name=name)(x)

        q, k, v = proj("query", queries), proj("key", keys_values), proj("value", keys_values)
        mask = None if kv_mask is None else kv_mask[:, None, None, :]
        bias = None if bias is None else bias[:, None].astype(self.dtype)  # the same for every head
        if self.is_mutable_collection("intermediates"):
            # Probes (`models.probes`) read the attention weights [b, heads, s, t]; computed only
            # when the caller asks for intermediates, so training and inference never pay for them.
            self.sow("intermediates", "weights",
                     nn.dot_product_attention_weights(q, k, bias=bias, mask=mask, dtype=jnp.float32))
        out = nn.dot_product_attention(q, k, v, bias=bias, mask=mask, dtype=self.dtype)
        return HeadMerge(d, self.dtype, name="out")(out)


class SelfAttentionBlock(nn.Module):
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "b t d"], mask: Bool[Array, "b t"] | None = None) -> Float[Array, "b t d"]:
        h = layer_norm(self.dtype, "norm1")(x)
        x = constrain_tokens(x + Attention(self.num_heads, self.dtype, name="attn")(h, h, mask))
        h = layer_norm(self.dtype, "norm2")(x)
        return constrain_tokens(x + MLP(int(x.shape[-1] * self.mlp_ratio), self.dtype, name="mlp")(h))


class CrossAttentionBlock(nn.Module):
    """Queries read the context (cross-attention), then mix among themselves (self-attention)."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: Float[Array, "b s d"], context: Float[Array, "b t d"],
                 context_mask: Bool[Array, "b t"] | None = None,
                 bias: Float[Array, "b s t"] | None = None) -> Float[Array, "b s d"]:
        c = layer_norm(self.dtype, "norm_context")(context)
        h = layer_norm(self.dtype, "norm_cross")(queries)
        x = constrain_tokens(queries + Attention(self.num_heads, self.dtype, name="cross_attn")(h, c, context_mask,
                                                                                               bias))
        return SelfAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name="self")(x)


def fourier_features(x: Float[Array, "... c"], num_frequencies: int, scale: float = 1.0) -> Float[Array, "... f"]:
    """[x, sin(2^k π x / scale), cos(2^k π x / scale)] for k < num_frequencies (NeRF-style)."""
    freqs = (2.0 ** jnp.arange(num_frequencies)) * jnp.pi / scale
    angles = x[..., None, :] * freqs[:, None]
    angles = angles.reshape(*x.shape[:-1], -1)
    return jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=-1)
