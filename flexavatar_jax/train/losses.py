"""Training loss terms: small pure jnp functions, each returning a scalar unless stated otherwise.

Images are `[*batch, H, W, C]` in [0, 1]; masks and alpha images `[*batch, H, W, 1]`. Terms are
unweighted: the train step multiplies each by `scheduled_weight(config_term, step)`.

* photometric: `l1`, `dssim` (= (1 − SSIM)/2, the SSIM of `metrics.ssim`), `alpha_loss`;
* mouth region (FlexAvatar): `mouth_vertex_mask`, `mouth_mask`, `mouth_boxes`, `mouth_loss`;
* geometry (FHAvatar): `tv3d_loss`, the 3D total variation of the rendered surface position;
* regularisers: `offset_regularizer`, `deviation_regularizer`;
* `downsample` for the low-resolution auxiliary branch; `scheduled_weight` for warm-up schedules.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Shaped

from flexavatar_jax.head import HeadParams, lbs
from flexavatar_jax.head.model import HeadModel
from flexavatar_jax.render.camera import project_points
from flexavatar_jax.train.metrics import check_image_pair, masked_mean, ssim

MOUTH_REGIONS = ("lips", "mouth_interior", "teeth", "tongue")


def l1(
    pred: Float[Array, "*batch h w c"],
    target: Float[Array, "*batch h w c"],
    mask: Shaped[Array, "*#batch h w #c"] | None = None,
) -> Float[Array, ""]:
    """Mean absolute error over all values, or over the masked values only.

    `mask` (bool or float weights) broadcasts against the images, e.g. `[*batch, H, W, 1]`; the
    mean counts every masked value (pixel × channel). An empty mask gives 0."""
    check_image_pair(pred, target, "l1")
    return masked_mean(jnp.abs(pred - target), mask)


def dssim(pred: Float[Array, "*batch h w c"], target: Float[Array, "*batch h w c"]) -> Float[Array, ""]:
    """Structural dissimilarity `(1 − SSIM) / 2` in [0, 1], averaged over the batch.

    Convention: the classic DSSIM, half of the `1 − SSIM` that 3DGS-family code calls "D-SSIM";
    a weight λ taken from such a paper becomes 2λ here. Needs H, W ≥ 11 ('valid' SSIM windows)."""
    return jnp.mean((1.0 - ssim(pred, target)) / 2.0)


def alpha_loss(
    pred_alpha: Float[Array, "*batch h w 1"], target_alpha: Float[Array, "*batch h w 1"]
) -> Float[Array, ""]:
    """L1 between the rendered opacity `1 − T` and the target foreground matte."""
    check_image_pair(pred_alpha, target_alpha, "alpha_loss")
    return jnp.mean(jnp.abs(pred_alpha - target_alpha))


# ----------------------------------------------------------------------------------------------
# Mouth region


def mouth_vertex_mask(head: HeadModel, regions: Sequence[str] = MOUTH_REGIONS) -> np.ndarray:
    """Boolean `[V]` (host numpy) mask of the head model's mouth vertices: lips, mouth interior,
    teeth and tongue by default. A model without some of these regions (FLAME has no teeth) simply
    contributes no vertices for them."""
    return head.vertex_mask(*regions)


def mouth_mask(
    points2d: Float[Array, "*batch v 2"],
    valid: Bool[Array, "*batch v"],
    image_size: tuple[int, int],
    margin: float = 4.0,
) -> Float[Array, "*batch h w 1"]:
    """Box mask `[*batch, H, W, 1]` (0/1 float) around the projected mouth of the driving mesh.

    `points2d`: pixel positions `(x, y)` of the posed mesh's vertices (OpenCV pixels, pixel
    `(row, col)` has its centre at `(col + 0.5, row + 0.5)`); `valid`: which of them count — the
    mouth vertices (`mouth_vertex_mask`) that project in front of the camera. The box spans the
    valid points' min/max grown by `margin` pixels on every side; a pixel is inside when its
    centre is. No valid point gives an empty mask (the mouth loss then vanishes).

    The box is a selection, not a quantity to optimise: the points pass through stop_gradient."""
    height, width = image_size
    if points2d.ndim < 2 or points2d.shape[-1] != 2:
        raise ValueError(f"mouth_mask: points2d must be [..., V, 2], got shape {tuple(points2d.shape)}")
    if valid.shape != points2d.shape[:-1]:
        raise ValueError(f"mouth_mask: valid shape {tuple(valid.shape)} != points2d shape {tuple(points2d.shape[:-1])}")
    if height < 1 or width < 1:
        raise ValueError(f"mouth_mask: image_size must be positive, got {image_size}")
    points2d = jax.lax.stop_gradient(points2d)
    x, y = points2d[..., 0], points2d[..., 1]
    lo_x = jnp.min(jnp.where(valid, x, jnp.inf), axis=-1) - margin
    hi_x = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-1) + margin
    lo_y = jnp.min(jnp.where(valid, y, jnp.inf), axis=-1) - margin
    hi_y = jnp.max(jnp.where(valid, y, -jnp.inf), axis=-1) + margin
    cols = jnp.arange(width, dtype=points2d.dtype) + 0.5
    rows = jnp.arange(height, dtype=points2d.dtype) + 0.5
    in_x = (cols >= lo_x[..., None]) & (cols <= hi_x[..., None])  # [*batch, W]
    in_y = (rows >= lo_y[..., None]) & (rows <= hi_y[..., None])  # [*batch, H]
    # With no valid point lo = +inf, hi = -inf: both tests fail everywhere, the mask is empty.
    return (in_y[..., :, None] & in_x[..., None, :])[..., None].astype(points2d.dtype)


def mouth_boxes(head: HeadModel, params: HeadParams, viewmats: Float[Array, "b t 4 4"],
                Ks: Float[Array, "b t 3 3"], size: int) -> Float[Array, "b t h w 1"]:
    """`mouth_mask` of every target: the box around the mouth vertices of the mesh posed by
    `params` (leaves with leading [B,T]) as each camera sees it (vertices in front of it)."""
    idx = jnp.asarray(mouth_vertex_mask(head).nonzero()[0])

    def one(p: HeadParams, viewmat, K):
        pts = lbs(head, p).vertices[idx]
        uv, z = project_points(pts, viewmat, K)
        return mouth_mask(uv, z > 1e-3, (size, size))

    return jax.vmap(jax.vmap(one))(params, viewmats, Ks)


def mouth_loss(
    pred: Float[Array, "*batch h w c"],
    target: Float[Array, "*batch h w c"],
    mask: Shaped[Array, "*#batch h w 1"],
    perceptual: Callable[[Array, Array], Array] | None = None,
    perceptual_weight: float = 1.0,
) -> Float[Array, ""]:
    """FlexAvatar's mouth term: L1 over the masked pixels, plus (when a perceptual fn such as
    `perceptual.LPIPSLoss` is given) `perceptual_weight ·` its batch mean on the masked images
    `pred·mask`, `target·mask` — outside the box both are 0, so only the mouth is compared."""
    loss = l1(pred, target, mask)
    if perceptual is not None:
        m = jnp.asarray(mask, pred.dtype)
        loss = loss + perceptual_weight * jnp.mean(perceptual(pred * m, target * m))
    return loss


# ----------------------------------------------------------------------------------------------
# FHAvatar 3D total variation


def normalized_position_image(
    position_image: Float[Array, "*batch h w 3"], alpha: Float[Array, "*batch h w 1"], eps: float = 1e-4
) -> Float[Array, "*batch h w 3"]:
    """Expected surface position per pixel, `P = (I_3d − (1 − I_α)) / I_α`.

    `position_image` is the splatted image with colour := Gaussian world position (metres) over a
    background of 1, i.e. `I_3d = Σ wᵢ pᵢ + (1 − I_α)·1` with `Σ wᵢ = I_α`; removing the
    background and dividing by the accumulated opacity gives the opacity-weighted mean position.
    The division is floored at `eps`; only meaningful where `I_α` is well above 0."""
    return (position_image - (1.0 - alpha)) / jnp.maximum(alpha, eps)


def tv3d_loss(
    position_image: Float[Array, "*batch h w 3"],
    alpha: Float[Array, "*batch h w 1"],
    alpha_threshold: float = 0.5,
    eps: float = 1e-4,
) -> Float[Array, ""]:
    """FHAvatar's 3D total variation: L1 of neighbour differences of the normalised position `P`.

    Returns `mean_h ‖P[r, c+1] − P[r, c]‖₁ + mean_v ‖P[r+1, c] − P[r, c]‖₁` (metres per pixel),
    each mean over the neighbour pairs whose two pixels both have `alpha > alpha_threshold`
    (0 when there are none). Why the threshold: `P` divides by `I_α`, so on the background and at
    the silhouette's soft edge (`I_α → 0`) it is noise amplified by `1/I_α` — the TV would be
    dominated by those pixels and push opacity instead of smoothing the surface. Background pixels
    also get a safe denominator so no inf/NaN enters the gradient."""
    if position_image.ndim < 3 or position_image.shape[-1] != 3:
        raise ValueError(f"tv3d_loss: position_image must be [..., H, W, 3], got {tuple(position_image.shape)}")
    if alpha.shape != position_image.shape[:-1] + (1,):
        raise ValueError(
            f"tv3d_loss: alpha shape {tuple(alpha.shape)} must be {tuple(position_image.shape[:-1]) + (1,)}"
        )
    foreground = alpha > alpha_threshold
    # Double-where: excluded pixels divide by 1, so their (discarded) values and gradients stay finite.
    safe_alpha = jnp.where(foreground, alpha, 1.0)
    surface = normalized_position_image(position_image, safe_alpha, eps)

    def mean_abs_difference(axis: int) -> Array:
        n = surface.shape[axis]
        a = jax.lax.slice_in_dim(surface, 1, n, axis=axis)
        b = jax.lax.slice_in_dim(surface, 0, n - 1, axis=axis)
        both = jax.lax.slice_in_dim(foreground, 1, n, axis=axis) & jax.lax.slice_in_dim(foreground, 0, n - 1, axis=axis)
        l1_norm = jnp.sum(jnp.abs(jnp.where(both, a - b, 0.0)), axis=-1)
        count = jnp.sum(both)
        return jnp.where(count > 0, jnp.sum(l1_norm) / jnp.maximum(count, 1), 0.0)

    return mean_abs_difference(-2) + mean_abs_difference(-3)


# ----------------------------------------------------------------------------------------------
# Regularisers


def offset_regularizer(offsets: Float[Array, "*n d"]) -> Float[Array, ""]:
    """Mean squared norm of offset vectors (e.g. UV position offsets `[..., 3]`, metres²)."""
    return jnp.mean(jnp.sum(jnp.square(offsets), axis=-1))


def deviation_regularizer(values: Float[Array, "*n"], initial: Float[Array, "*n"]) -> Float[Array, ""]:
    """Mean squared difference to a reference (positions, log-scales, ...), elementwise mean.

    `initial` is a fixed anchor (stop_gradient): the term pulls `values` back, never the anchor."""
    if values.shape != initial.shape:
        raise ValueError(f"deviation_regularizer: shapes {tuple(values.shape)} and {tuple(initial.shape)} differ")
    return jnp.mean(jnp.square(values - jax.lax.stop_gradient(initial)))


# ----------------------------------------------------------------------------------------------
# Resolution and schedules


def view_pose_loss(predicted: Float[Array, "b v 3"], true: Float[Array, "b v 3"],
                   mask: Bool[Array, "b v"]) -> Float[Array, ""]:
    """Mean of 1 − cos(predicted, true) over the real views (`mask`) of unit direction vectors:
    0 when every predicted input-camera direction is right, 2 when every one is opposite."""
    if predicted.shape != true.shape or predicted.shape[:2] != mask.shape:
        raise ValueError(f"view_pose_loss: predicted {predicted.shape}, true {true.shape} and mask {mask.shape} "
                         "must be [b, v, 3], [b, v, 3] and [b, v]")
    cos = jnp.sum(predicted * true, axis=-1)
    return masked_mean(1.0 - cos, mask)


def downsample(images: Float[Array, "*batch h w c"], factor: int) -> Float[Array, "*batch h2 w2 c"]:
    """Box (area) average over `factor × factor` blocks: `[*batch, H/factor, W/factor, C]`.

    Raises ValueError unless `factor` is a positive integer dividing H and W (no silent crop)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"downsample: factor must be a positive integer, got {factor}")
    factor = int(factor)
    if images.ndim < 3:
        raise ValueError(f"downsample: expected [..., H, W, C] images, got shape {tuple(images.shape)}")
    *batch, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"downsample: H={h} and W={w} must both be divisible by factor {factor}")
    blocks = images.reshape(*batch, h // factor, factor, w // factor, factor, c)
    return jnp.mean(blocks, axis=(-4, -2))


def _term_field(term: Any, name: str, default=None):
    value = term.get(name, default) if hasattr(term, "get") else getattr(term, name, default)
    if value is None:
        raise ValueError(f"loss schedule term {term!r} has no field {name!r}")
    return value


def scheduled_weight(term: Any, step: int | Array) -> Float[Array, ""]:
    """Weight of a loss term at `step` (int or traced int array).

    `term`: a ConfigDict / mapping with `weight`, `start` (default 0) and `ramp` (default 0):
    0 before `start`; from `start` a linear ramp reaching `weight` at `start + ramp`; `weight`
    afterwards. `ramp = 0` switches on at once at `start`."""
    weight = float(_term_field(term, "weight"))
    start = int(_term_field(term, "start", 0))
    ramp = int(_term_field(term, "ramp", 0))
    if start < 0 or ramp < 0:
        raise ValueError(f"loss schedule: start ({start}) and ramp ({ramp}) must be >= 0")
    step = jnp.asarray(step, jnp.float32)
    if ramp == 0:
        return jnp.where(step >= start, weight, 0.0).astype(jnp.float32)
    return weight * jnp.clip((step - start) / ramp, 0.0, 1.0)


__all__ = [
    "MOUTH_REGIONS", "alpha_loss", "deviation_regularizer", "downsample", "dssim", "l1", "mouth_loss",
    "mouth_boxes", "mouth_mask", "mouth_vertex_mask", "normalized_position_image", "offset_regularizer",
    "scheduled_weight", "tv3d_loss",
]
