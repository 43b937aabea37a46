"""ViT image encoder: one image -> a map of patch tokens. Trained from scratch by default; loads
pretrained weights (e.g. a DINOv2 ViT converted offline) from a `.npz`.

Checkpoint format (`load_encoder_npz`): one array per parameter, keyed by the '/'-joined path of
the encoder's parameter tree as `flax` names it, e.g.

    patch_embed/kernel [p, p, 3, d]      patch_embed/bias [d]      pos_embed [hp*wp, d]
    block_0/norm1/scale [d]              block_0/attn/query/kernel [d, heads, d/heads]
    block_0/attn/out/kernel [heads, d/heads, d]   block_0/mlp/fc1/kernel [d, mlp] ...   norm/scale [d]

(`flexavatar-jax summary --config ... --print_param_paths` lists them). A DINOv2/timm checkpoint
maps onto this one-to-one: split `qkv` into query/key/value and reshape to (d, heads, d/heads),
transpose linear weights (out, in) -> (in, out) and conv weights OIHW -> HWIO, drop the class
token (its position embedding row too). A position embedding for another patch grid is resized
bilinearly. Every other shape mismatch, a missing key, or an unexpected key is an error.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jaxtyping import Array, Float

from flexavatar_jax.models.attention import Dtype, SelfAttentionBlock, layer_norm

# DINOv2/ImageNet input normalisation, so converted pretrained weights see what they were trained on.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


class ViTEncoder(nn.Module):
    """Images [..., H, W, 3] in [0,1] -> patch tokens [..., H/p, W/p, width]. Each image is encoded
    on its own (no view index, no camera): view mixing happens in the lifter."""

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Float[Array, "... h w 3"]) -> Float[Array, "... hp wp d"]:
        *lead, h, w, _ = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = (images.reshape(-1, h, w, 3) - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed",
                    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, None, "embed")),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))(x)
        hp, wp = h // p, w // p
        pos = self.param("pos_embed", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("tokens", "embed")),
                         (hp * wp, self.width))
        x = x.reshape(-1, hp * wp, self.width) + pos.astype(self.dtype)
        for i in range(self.depth):
            x = SelfAttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(x)
        x = layer_norm(self.dtype, "norm")(x)
        return x.reshape(*lead, hp, wp, self.width)


def _resize_pos_embed(table: np.ndarray, num_tokens: int) -> np.ndarray:
    src = int(round(np.sqrt(table.shape[0])))
    dst = int(round(np.sqrt(num_tokens)))
    if src * src != table.shape[0] or dst * dst != num_tokens:
        raise ValueError(f"pos_embed: cannot resize {table.shape[0]} tokens to {num_tokens} (square grids only)")
    grid = jnp.asarray(table.reshape(src, src, -1))
    return np.asarray(jax.image.resize(grid, (dst, dst, table.shape[1]), "bilinear")).reshape(num_tokens, -1)


def load_encoder_npz(path: str | os.PathLike, encoder_params: dict) -> dict:
    """Return `encoder_params` (a plain or logically-partitioned param tree of `ViTEncoder`) with
    every leaf replaced by the checkpoint's array (same dtype as before). See the module docstring
    for the format."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained encoder checkpoint not found: {path}")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # a corrupt file: say which
        raise ValueError(f"cannot read encoder checkpoint {path}: {e}") from e
    unboxed = nn.meta.unbox(encoder_params)
    flat = traverse_util.flatten_dict(unboxed, sep="/")
    missing = sorted(set(flat) - set(data))
    unexpected = sorted(set(data) - set(flat))
    if missing or unexpected:
        raise ValueError(f"encoder checkpoint {path} does not match the encoder: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    loaded = {}
    for key, ref in flat.items():
        arr = data[key]
        if key == "pos_embed" and arr.shape != ref.shape and arr.ndim == 2 and arr.shape[1] == ref.shape[1]:
            arr = _resize_pos_embed(arr, ref.shape[0])
        if arr.shape != tuple(ref.shape):
            raise ValueError(f"encoder checkpoint {path}: {key} has shape {arr.shape}, the encoder expects {tuple(ref.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"encoder checkpoint {path}: {key} has non-finite values")
        loaded[key] = jnp.asarray(arr, ref.dtype)
    new = traverse_util.unflatten_dict(loaded, sep="/")
    # Re-box with the original logical names so sharding annotations survive.
    return jax.tree.map(lambda box, value: box.replace_boxed(value) if isinstance(box, nn.meta.AxisMetadata) else value,
                        encoder_params, new, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def save_encoder_npz(path: str | os.PathLike, encoder_params: dict) -> None:
    """Write encoder params in the `load_encoder_npz` format (to share converted weights)."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(encoder_params), sep="/")
    np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})
