"""LPIPS perceptual distance (Zhang et al. 2018, VGG16 variant) in Flax Linen.

Forward pass, for images `x, y` in [0, 1] of shape `[*batch, H, W, 3]`:

1. map to [-1, 1] (`2·x − 1`, the range LPIPS was trained on) and apply the LPIPS *scaling layer*
   `(x − shift) / scale` with `shift = (−0.030, −0.088, −0.188)`, `scale = (0.458, 0.448, 0.450)`;
2. VGG16 conv stack (3×3 convs, padding 1, ReLU; 2×2/2 max-pool between blocks), tapped after the
   last ReLU of each block: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
3. unit-normalise every tap along channels, `f / ‖f‖₂`;
4. squared difference of the normalised taps, weighted per channel by the non-negative 1×1 "lin"
   layer of that tap (one output channel, no bias), averaged over space, summed over the 5 taps.

The result is one distance per image, `[*batch]`: 0 for identical images, symmetric, ≥ 0.
The input must be at least 16×16 (four 2×2 pools before the last tap).

Converted weight file (`.npz`, read by `load_lpips`)
----------------------------------------------------
PyTorch cannot be used here, so the weights come as a plain numpy archive that the user converts
once, offline, on a machine that has the official checkpoints. Keys and shapes (float32, with
channel widths `w = (w1, w2, w3, w4, w5)`, VGG16: `(64, 128, 256, 512, 512)`):

* `features.<i>.weight`: conv kernel **HWIO** `[3, 3, C_in, C_out]`, and `features.<i>.bias`:
  `[C_out]`, for the 13 conv indices of torchvision's `vgg16().features` Sequential:

      0, 2          conv1_1, conv1_2   [3,3,3,w1], [3,3,w1,w1]
      5, 7          conv2_1, conv2_2   [3,3,w1,w2], [3,3,w2,w2]
      10, 12, 14    conv3_1 .. conv3_3 [3,3,w2,w3], then [3,3,w3,w3] twice
      17, 19, 21    conv4_1 .. conv4_3 [3,3,w3,w4], then [3,3,w4,w4] twice
      24, 26, 28    conv5_1 .. conv5_3 [3,3,w4,w5], then [3,3,w5,w5] twice

  (The missing indices are the ReLUs and max-pools of that Sequential.)
* `lin<k>.weight`: `[w_{k+1}]` for k = 0..4, the per-channel weights of the k-th 1×1 lin layer,
  all ≥ 0.

Conversion from the official files, described so it can be done anywhere numpy and torch are
available (never imported by this package): take the VGG16 weights from torchvision's
`vgg16(weights=IMAGENET1K_V1).features` state dict (LPIPS uses those unchanged, "v0.1"), and for
every conv index `i` store `weight.numpy().transpose(2, 3, 1, 0)` (OIHW → HWIO) under
`features.<i>.weight` and `bias.numpy()` under `features.<i>.bias`; from the LPIPS package's
`weights/v0.1/vgg.pth` take `lin<k>.model.1.weight` (shape `[1, C, 1, 1]`, after a dropout at
`model.0`) and store `.reshape(-1)` under `lin<k>.weight`; then `np.savez(path, **arrays)`.

`load_lpips` checks every key, shape and value (finite; lin weights non-negative) and raises a
ValueError naming the first bad, missing or unexpected key. Without weights the perceptual loss is
disabled (`perceptual_loss_fn(None)` returns None and warns once); training still runs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

VGG16_WIDTHS = (64, 128, 256, 512, 512)
# 3×3 convs per VGG16 block; the last ReLU of each block is the LPIPS tap.
VGG16_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
TAP_NAMES = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# LPIPS ScalingLayer constants (input already in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# LPIPS normalises with f / (‖f‖ + 1e-10); we use f / sqrt(‖f‖² + 1e-20), equal to within 1e-10
# relative, whose gradient stays finite where a ReLU tap is all zero (sqrt'(0) = inf → NaN).
NORM_EPS_SQ = 1e-20
MIN_SIZE = 2 ** (len(VGG16_WIDTHS) - 1)


def vgg16_conv_indices() -> tuple[tuple[int, ...], ...]:
    """Per block, the indices of its convs in torchvision's `vgg16().features` Sequential.

    Each conv is followed by a ReLU (2 entries), each block after the first starts with a max-pool
    (1 entry): ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))."""
    blocks, index = [], 0
    for b, count in enumerate(VGG16_CONVS_PER_BLOCK):
        if b > 0:
            index += 1
        block = []
        for _ in range(count):
            block.append(index)
            index += 2
        blocks.append(tuple(block))
    return tuple(blocks)


def expected_shapes(widths: tuple[int, ...] = VGG16_WIDTHS) -> dict[str, tuple[int, ...]]:
    """Every key of the converted `.npz` and its shape, in file order (see the module docstring)."""
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for block, c_out in zip(vgg16_conv_indices(), widths):
        for i in block:
            shapes[f"features.{i}.weight"] = (3, 3, c_in, c_out)
            shapes[f"features.{i}.bias"] = (c_out,)
            c_in = c_out
    for k, c in enumerate(widths):
        shapes[f"lin{k}.weight"] = (c,)
    return shapes


def _check_widths(widths: tuple[int, ...]) -> None:
    if len(widths) != len(VGG16_WIDTHS) or any(int(w) < 1 for w in widths):
        raise ValueError(f"LPIPS widths must be 5 positive channel counts, got {widths}")


def _nonnegative_init(key, shape, dtype=jnp.float32):
    # Stand-in for untrained use (shape planning, tests); real weights come from load_lpips.
    del key
    return jnp.full(shape, 1.0 / shape[0], dtype)


class LPIPS(nn.Module):
    """LPIPS-VGG distance between two image batches. `widths`: VGG channel widths per block.

    Params: `features_<i>` (`kernel` HWIO, `bias`) for each torchvision conv index `i`, and
    `lin<k>` (`[w_k]`) — `load_lpips` builds this tree from the `.npz`."""

    widths: tuple[int, ...] = VGG16_WIDTHS

    def taps(self, x: Float[Array, "n h w 3"]) -> list[Array]:
        """The 5 VGG ReLU taps of images already mapped to [-1, 1]: `[n, h/2^k, w/2^k, w_k]`."""
        shift = jnp.asarray(LPIPS_SHIFT, x.dtype)
        scale = jnp.asarray(LPIPS_SCALE, x.dtype)
        x = (x - shift) / scale
        taps = []
        for b, block in enumerate(vgg16_conv_indices()):
            if b > 0:
                # VGG's 2×2/2 max-pool floors odd sizes (torch MaxPool2d without ceil_mode).
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for i in block:
                x = nn.Conv(self.widths[b], (3, 3), padding=((1, 1), (1, 1)), name=f"features_{i}")(x)
                x = nn.relu(x)
            taps.append(x)
        return taps

    @nn.compact
    def __call__(
        self, pred: Float[Array, "*batch h w 3"], target: Float[Array, "*batch h w 3"]
    ) -> Float[Array, "*batch"]:
        _check_widths(self.widths)
        if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-1] != 3:
            raise ValueError(
                f"LPIPS: expected two [..., H, W, 3] images of one shape, got {pred.shape} and {target.shape}"
            )
        h, w = pred.shape[-3:-1]
        if h < MIN_SIZE or w < MIN_SIZE:
            raise ValueError(f"LPIPS: images must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
        batch = pred.shape[:-3]
        both = jnp.concatenate([pred.reshape(-1, h, w, 3), target.reshape(-1, h, w, 3)], axis=0)
        both = 2.0 * both.astype(jnp.float32) - 1.0
        n = both.shape[0] // 2
        distance = jnp.zeros((n,), jnp.float32)
        for k, tap in enumerate(self.taps(both)):
            lin = self.param(f"lin{k}", _nonnegative_init, (self.widths[k],))
            unit = tap * jax.lax.rsqrt(jnp.sum(tap * tap, axis=-1, keepdims=True) + NORM_EPS_SQ)
            diff = jnp.square(unit[:n] - unit[n:])
            distance = distance + jnp.mean(jnp.einsum("nhwc,c->nhw", diff, lin), axis=(1, 2))
        return distance.reshape(batch)


def params_from_arrays(arrays: dict[str, np.ndarray], widths: tuple[int, ...]) -> dict:
    """The Flax variables `{'params': ...}` of `LPIPS(widths)` from validated `.npz` arrays."""
    params = {}
    for block in vgg16_conv_indices():
        for i in block:
            params[f"features_{i}"] = {
                "kernel": jnp.asarray(arrays[f"features.{i}.weight"], jnp.float32),
                "bias": jnp.asarray(arrays[f"features.{i}.bias"], jnp.float32),
            }
    for k in range(len(widths)):
        params[f"lin{k}"] = jnp.asarray(arrays[f"lin{k}.weight"], jnp.float32)
    return {"params": params}


def infer_widths(arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Channel widths of a converted archive, by majority over every shape that states them.

    Each block's width appears in its conv kernels (out, and in for all but the first conv), its
    biases, the next block's first kernel (in) and its lin layer; voting lets a single mis-shaped
    array be reported by its own name instead of corrupting the expectation for all others."""
    blocks = vgg16_conv_indices()
    widths = []
    for b, block in enumerate(blocks):
        votes = []

        def vote(key, axis, ndim):
            value = arrays.get(key)
            if value is not None and np.ndim(value) == ndim:
                votes.append(int(np.shape(value)[axis]))

        for j, i in enumerate(block):
            vote(f"features.{i}.weight", -1, 4)
            vote(f"features.{i}.bias", 0, 1)
            if j > 0:
                vote(f"features.{i}.weight", -2, 4)
        if b + 1 < len(blocks):
            vote(f"features.{blocks[b + 1][0]}.weight", -2, 4)
        vote(f"lin{b}.weight", 0, 1)
        if not votes:
            raise ValueError(f"missing key {f'features.{block[0]}.weight'!r} (no array states block {b + 1}'s width)")
        widths.append(max(set(votes), key=lambda w: (votes.count(w), -votes.index(w))))
    return tuple(widths)


def validate_arrays(arrays: dict[str, np.ndarray], source: str = "LPIPS weights") -> tuple[int, ...]:
    """Checks a converted LPIPS archive; returns its channel widths.

    Raises ValueError naming the first missing, mis-shaped, non-floating, non-finite, (for lin
    layers) negative, or unexpected key."""
    try:
        widths = infer_widths(arrays)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    _check_widths(widths)
    expected = expected_shapes(widths)
    for key, shape in expected.items():
        if key not in arrays:
            raise ValueError(f"{source}: missing key {key!r} (expected shape {list(shape)})")
        value = np.asarray(arrays[key])
        if value.shape != shape:
            raise ValueError(f"{source}: key {key!r} has shape {list(value.shape)}, expected {list(shape)}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{source}: key {key!r} has dtype {value.dtype}, expected floating point")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: key {key!r} has non-finite values")
        if key.startswith("lin") and np.any(value < 0):
            raise ValueError(f"{source}: key {key!r} has negative weights (LPIPS lin layers are non-negative)")
    unexpected = sorted(set(arrays) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all)")
    return widths


def load_lpips(path: str | os.PathLike | None) -> tuple[LPIPS, dict] | None:
    """Loads converted LPIPS-VGG weights (`.npz`, layout in the module docstring).

    Returns `(module, variables)` for `module.apply(variables, pred, target)`, or None when `path`
    is None. Raises FileNotFoundError for a missing file and ValueError for a corrupt one."""
    if path is None:
        return None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"LPIPS weights not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:  # not a zip / not an npz
        raise ValueError(f"LPIPS weights {path}: not a readable .npz archive ({error})") from error
    widths = validate_arrays(arrays, source=f"LPIPS weights {path}")
    return LPIPS(widths=widths), params_from_arrays(arrays, widths)


@dataclasses.dataclass(frozen=True)
class LPIPSLoss:
    """A perceptual loss callable: `loss(pred, target) -> [*batch]` LPIPS distances.

    A pytree (the params are leaves, the widths static) so a train step can take it as a jit
    argument instead of closing over it: closed-over arrays become ~60 MB of HLO constants for
    full VGG16. The params sit behind stop_gradient: the perceptual network is never trained."""

    widths: tuple[int, ...]
    variables: dict

    def __call__(
        self, pred: Float[Array, "*batch h w 3"], target: Float[Array, "*batch h w 3"]
    ) -> Float[Array, "*batch"]:
        frozen = jax.lax.stop_gradient(self.variables)
        return LPIPS(widths=self.widths).apply(frozen, pred, target)


jax.tree_util.register_dataclass(LPIPSLoss, data_fields=["variables"], meta_fields=["widths"])


def perceptual_loss_fn(path: str | os.PathLike | None) -> Callable[[Array, Array], Array] | None:
    """The LPIPS loss from a converted weight file, or None (with one warning) when `path` is None.

    A missing or corrupt file is an error (FileNotFoundError / ValueError), not a silent disable:
    a user who names a file wants it used."""
    if path is None:
        warnings.warn(
            "No LPIPS weights given: the perceptual loss terms are disabled (see "
            "flexavatar_jax/train/perceptual.py for the converted .npz format).",
            UserWarning,
            stacklevel=2,
        )
        return None
    module, variables = load_lpips(path)
    return LPIPSLoss(widths=module.widths, variables=variables)


__all__ = [
    "LPIPS", "LPIPSLoss", "LPIPS_SCALE", "LPIPS_SHIFT", "TAP_NAMES", "VGG16_WIDTHS", "expected_shapes",
    "infer_widths", "load_lpips", "params_from_arrays", "perceptual_loss_fn", "validate_arrays", "vgg16_conv_indices",
]
