"""Image metrics: SSIM, PSNR, alpha IoU. Pure jnp, jit-able, differentiable where it makes sense.

Images are `[*batch, H, W, C]` with values in [0, 1] (the peak value 1 enters PSNR and the SSIM
constants). Every metric returns one value per image, shape `[*batch]`; callers average.

SSIM is the one implementation shared by the D-SSIM training loss (`losses.dssim`) and the SSIM
evaluation metric, so a reported SSIM is exactly what the loss optimised. It follows Wang et al.
2004 ("Image quality assessment: from error visibility to structural similarity", eq. 13) with
the customary constants: an 11×11 Gaussian window with σ = 1.5, C1 = (0.01·L)², C2 = (0.03·L)²,
L = 1, per channel, averaged over channels.

Border handling: **'valid'** windows only. The SSIM map is `[*batch, H-10, W-10, C]`: every value
comes from a full 11×11 window, so there is no zero/reflect padding bias at the image border (the
zero-padded variant used by 3DGS code reports a lower SSIM near the border of a perfect
reconstruction of a non-zero image). Images must therefore be at least 11 pixels in H and W.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Shaped

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def check_image_pair(pred: Array, target: Array, name: str = "images") -> None:
    """Raises ValueError unless `pred` and `target` are `[*batch, H, W, C]` of the same shape."""
    if pred.ndim < 3:
        raise ValueError(f"{name}: expected [..., H, W, C] images, got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1D Gaussian taps `[size]` centred on the middle tap (float64, host)."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _filter_valid(x: Array, taps: np.ndarray) -> Array:
    """Separable 'valid' Gaussian filter over the H and W axes of `[..., H, W, C]`.

    A sum of `len(taps)` shifted slices per axis: O(11·H·W), fuses under jit, and works for any
    number of leading axes (no reshape to NCHW for a conv primitive)."""
    k = len(taps)
    taps = taps.astype(x.dtype)  # numpy float64 scalars would promote float32 images under x64
    h, w = x.shape[-3], x.shape[-2]
    rows = sum(taps[i] * x[..., i : h - k + 1 + i, :, :] for i in range(k))
    return sum(taps[i] * rows[..., :, i : w - k + 1 + i, :] for i in range(k))


def ssim_map(
    pred: Float[Array, "*batch h w c"], target: Float[Array, "*batch h w c"]
) -> Float[Array, "*batch hv wv c"]:
    """Per-pixel, per-channel SSIM, 'valid' windows: `[*batch, H-10, W-10, C]`, values in [-1, 1].

    Raises ValueError for mismatched shapes or images smaller than 11×11."""
    check_image_pair(pred, target, "ssim")
    if pred.shape[-3] < SSIM_WINDOW or pred.shape[-2] < SSIM_WINDOW:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} ('valid' windows), "
            f"got H={pred.shape[-3]}, W={pred.shape[-2]}"
        )
    taps = gaussian_window_1d()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x = _filter_valid(pred, taps)
    mu_y = _filter_valid(target, taps)
    # Windowed (co)variances as E[xy] - E[x]E[y] (Wang et al. eqs. 14-16 with Gaussian weights).
    var_x = _filter_valid(pred * pred, taps) - mu_x * mu_x
    var_y = _filter_valid(target * target, taps) - mu_y * mu_y
    cov_xy = _filter_valid(pred * target, taps) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim(pred: Float[Array, "*batch h w c"], target: Float[Array, "*batch h w c"]) -> Float[Array, "*batch"]:
    """Mean SSIM per image (over the valid map and channels): `[*batch]`; 1 for identical images."""
    return jnp.mean(ssim_map(pred, target), axis=(-3, -2, -1))


def masked_mean(
    values: Float[Array, "*batch h w c"], mask: Shaped[Array, "*#batch h w #c"] | None, axis=None
) -> Array:
    """Mean of `values` over `axis` counting only masked entries (mask broadcast to `values`).

    The denominator counts every masked *value* (pixel × channel), so a `[..., H, W, 1]` mask over
    an RGB image averages the 3 channels of the masked pixels. An empty mask gives 0, not NaN, so
    a loss on a region that is not visible in a frame (e.g. a closed mouth) simply vanishes."""
    if mask is None:
        return jnp.mean(values, axis=axis)
    weights = jnp.broadcast_to(jnp.asarray(mask, values.dtype), values.shape)
    total = jnp.sum(values * weights, axis=axis)
    count = jnp.sum(weights, axis=axis)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def psnr(
    pred: Float[Array, "*batch h w c"],
    target: Float[Array, "*batch h w c"],
    mask: Shaped[Array, "*#batch h w #c"] | None = None,
) -> Float[Array, "*batch"]:
    """PSNR in dB per image, peak value 1: `-10·log10(MSE)`, `[*batch]`.

    With `mask` ([..., H, W, 1] or [..., H, W, C], bool or float weights) the MSE averages only
    the masked values. Identical images give +inf; an empty mask gives +inf as well (MSE := 0)."""
    check_image_pair(pred, target, "psnr")
    mse = masked_mean(jnp.square(pred - target), mask, axis=(-3, -2, -1))
    return -10.0 * jnp.log10(mse)


def alpha_iou(
    pred_alpha: Float[Array, "*batch h w 1"],
    target_alpha: Float[Array, "*batch h w 1"],
    threshold: float = 0.5,
) -> Float[Array, "*batch"]:
    """Intersection over union of the silhouettes `alpha > threshold`, per image: `[*batch]`.

    Both silhouettes empty counts as perfect agreement (IoU 1) rather than 0/0."""
    check_image_pair(pred_alpha, target_alpha, "alpha_iou")
    pred_in = pred_alpha > threshold
    target_in = target_alpha > threshold
    axes = (-3, -2, -1)
    intersection = jnp.sum(pred_in & target_in, axis=axes).astype(jnp.float32)
    union = jnp.sum(pred_in | target_in, axis=axes).astype(jnp.float32)
    return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


__all__ = [
    "SSIM_WINDOW", "SSIM_SIGMA", "alpha_iou", "check_image_pair", "gaussian_window_1d", "masked_mean",
    "psnr", "ssim", "ssim_map",
]
