"""Per-Gaussian EWA projection (the first stage of `rasterize`), gsplat 1.5.3 classic semantics.

For every (camera, Gaussian) pair this computes the image-space mean, camera depth, conic
(inverse 2D covariance), per-axis pixel radii, the tile rectangle the splat touches and whether it
survives culling. Everything is vectorised over `[V, N]`, jit/vmap/grad friendly, and safe for
degenerate input: non-finite parameters, Gaussians outside the near/far range and singular
covariances are culled through the "double where" pattern, so neither the outputs nor the
gradients of the surviving Gaussians see NaN/inf from the culled ones.

Conventions (the project's, everywhere): OpenCV world->camera `viewmats`, pixel intrinsics `Ks` with pixel
centres at +0.5, quaternions wxyz (normalised here), linear scales, opacities in [0, 1].
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

# Bounding-box half-extent in standard deviations (gsplat 1.5: 3.33σ, where exp(-3.33²/2) < 1/255).
MAX_EXTEND = 3.33
# Contributions below this alpha are skipped by the compositor; gsplat's ALPHA_THRESHOLD.
ALPHA_THRESHOLD = 1.0 / 255.0
# The EWA Jacobian is evaluated at the mean with x/z, y/z clamped to the image plus this fraction
# of the half field of view on each side (gsplat `persp_proj`; "1.3x the half-FOV" for a centred
# principal point). Without it, Gaussians far outside the view get enormous 2D footprints.
FRUSTUM_CLAMP_MARGIN = 0.3
# Radii are clipped before the float->int cast so that absurd splats cannot overflow int32.
_MAX_RADIUS = float(2**24)


class Projection(NamedTuple):
    """Projected Gaussians for `V` cameras (leading axis) and `N` Gaussians.

    means2d:  [V,N,2] pixel coordinates of the projected mean (pixel centres at +0.5).
    depths:   [V,N]   camera-space z in world units (differentiable; used for sorting and "D").
    conics:   [V,N,3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]], in 1/pixel².
    radii:    [V,N,2] int32 bounding-box half-extents in pixels (x, y); 0 for culled Gaussians.
    valid:    [V,N]   bool, the Gaussian survives culling for this camera.
    tile_min: [V,N,2] int32 first tile (x, y) the bounding box touches (inclusive).
    tile_max: [V,N,2] int32 last tile (x, y) + 1 (exclusive); tile_max == tile_min when culled.
    """

    means2d: Float[Array, "v n 2"]
    depths: Float[Array, "v n"]
    conics: Float[Array, "v n 3"]
    radii: Int[Array, "v n 2"]
    valid: Bool[Array, "v n"]
    tile_min: Int[Array, "v n 2"]
    tile_max: Int[Array, "v n 2"]


def _all_finite(x: Array) -> Array:
    return jnp.all(jnp.isfinite(x), axis=-1)


def quat_to_rotmat(quats: Float[Array, "*b 4"]) -> Float[Array, "*b 3 3"]:
    """Rotation matrices from wxyz quaternions, normalised here.

    A zero (or non-finite) quaternion maps to the identity with a zero gradient, instead of NaN.
    """
    norm2 = jnp.sum(quats * quats, axis=-1, keepdims=True)
    usable = (norm2 > 1e-24) & jnp.isfinite(norm2)
    identity = jnp.asarray([1.0, 0.0, 0.0, 0.0], quats.dtype)
    q = jnp.where(usable, quats, identity)
    q = q * jnp.where(usable, jnp.reciprocal(jnp.sqrt(jnp.where(usable, norm2, 1.0))), 1.0)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def _matmul(a: Array, b: Array) -> Array:
    """Batched small matrix product as broadcast-multiply-sum: XLA fuses it with the surrounding
    elementwise math, where batched 3×3 dot ops would each become a separate (slow to compile,
    slow to run) library call."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def covariance_3d(quats: Float[Array, "*b 4"], scales: Float[Array, "*b 3"]) -> Float[Array, "*b 3 3"]:
    """World covariance Σ = (R S)(R S)ᵀ with S = diag(scales) (world units²)."""
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R · diag(s): scale the columns
    return _matmul(m, jnp.swapaxes(m, -1, -2))


def _project(allowed, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
             eps2d, tile_size):
    """One projection pass on per-camera inputs ([V,N,...]); only `allowed` [V,N] can be valid."""
    dtype = means.dtype
    cov_world = covariance_3d(quats, scales)  # [V,N,3,3]
    rot = viewmats[:, None, :3, :3]  # [V,1,3,3]
    means_cam = jnp.sum(rot * means[..., None, :], axis=-1) + viewmats[:, None, :3, 3]
    cov_cam = _matmul(_matmul(rot, cov_world), jnp.swapaxes(rot, -1, -2))
    z = means_cam[..., 2]
    valid = allowed & (z > near_plane) & (z < far_plane)
    # Out-of-range depths (behind the camera, straddling the near plane) compute at z = 1.
    cam_s = jnp.where(valid[..., None], means_cam, jnp.asarray([0.0, 0.0, 1.0], dtype))
    x, y, z = cam_s[..., 0], cam_s[..., 1], cam_s[..., 2]

    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FRUSTUM_CLAMP_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FRUSTUM_CLAMP_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FRUSTUM_CLAMP_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FRUSTUM_CLAMP_MARGIN * tan_fovy
    rz = 1.0 / z
    tx = z * jnp.clip(x * rz, -lim_x_neg, lim_x_pos)
    ty = z * jnp.clip(y * rz, -lim_y_neg, lim_y_pos)
    zero = jnp.zeros_like(z)
    jac = jnp.stack(
        [
            jnp.stack([fx * rz, zero, -fx * tx * rz * rz], axis=-1),
            jnp.stack([zero, fy * rz, -fy * ty * rz * rz], axis=-1),
        ],
        axis=-2,
    )  # [V,N,2,3]
    cov2d = _matmul(_matmul(jac, cov_cam), jnp.swapaxes(jac, -1, -2))
    cov_a = cov2d[..., 0, 0] + eps2d
    cov_b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    cov_c = cov2d[..., 1, 1] + eps2d
    det = cov_a * cov_c - cov_b * cov_b
    means2d = jnp.stack([fx * x * rz + cx, fy * y * rz + cy], axis=-1)
    valid = valid & (det > 0)
    det_s = jnp.where(valid, det, 1.0)
    conics = jnp.stack([cov_c / det_s, -cov_b / det_s, cov_a / det_s], axis=-1)

    # Bounding box (non-differentiable, as in gsplat).
    extend = jnp.minimum(MAX_EXTEND, jnp.sqrt(2.0 * jnp.log(jnp.maximum(opacities / ALPHA_THRESHOLD, 1.0))))
    radius_x = jnp.ceil(extend * jnp.sqrt(jnp.maximum(cov_a, 0.0)))
    radius_y = jnp.ceil(extend * jnp.sqrt(jnp.maximum(cov_c, 0.0)))
    mx, my = means2d[..., 0], means2d[..., 1]
    valid = valid & (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
    # Every intermediate must be finite: the differentiable pass relies on it (see below).
    finite = jnp.isfinite(jnp.stack([z, det, radius_x, radius_y, *jnp.moveaxis(means2d, -1, 0),
                                     *jnp.moveaxis(conics, -1, 0)], axis=-1)).all(-1)
    finite &= jnp.isfinite(cov_cam).all((-1, -2)) & jnp.isfinite(means_cam).all(-1) & jnp.isfinite(jac).all((-1, -2))
    valid = valid & finite
    radius_x = jnp.where(valid, jnp.minimum(radius_x, _MAX_RADIUS), 0.0)
    radius_y = jnp.where(valid, jnp.minimum(radius_y, _MAX_RADIUS), 0.0)
    radii = jnp.stack([radius_x, radius_y], axis=-1).astype(jnp.int32)

    # Tile rectangle [tile_min, tile_max) as in gsplat's tile intersection.
    n_tiles_x = -(-width // tile_size)
    n_tiles_y = -(-height // tile_size)
    mx, my = jnp.where(valid, mx, 0.0), jnp.where(valid, my, 0.0)
    lo_x = jnp.clip(jnp.floor((mx - radius_x) / tile_size), 0, n_tiles_x)
    hi_x = jnp.clip(jnp.ceil((mx + radius_x) / tile_size), 0, n_tiles_x)
    lo_y = jnp.clip(jnp.floor((my - radius_y) / tile_size), 0, n_tiles_y)
    hi_y = jnp.clip(jnp.ceil((my + radius_y) / tile_size), 0, n_tiles_y)
    tile_min = jnp.stack([lo_x, lo_y], axis=-1).astype(jnp.int32)
    tile_max = jnp.where(valid[..., None], jnp.stack([hi_x, hi_y], axis=-1).astype(jnp.int32), tile_min)

    means2d = jnp.where(valid[..., None], means2d, 0.0)
    depths = jnp.where(valid, means_cam[..., 2], 0.0)
    conics = jnp.where(valid[..., None], conics, 0.0)
    return Projection(means2d, depths, conics, radii, valid, tile_min, tile_max)


@functools.partial(jax.jit, static_argnames=("width", "height", "tile_size"))
def project_gaussians(
    means: Float[Array, "n 3"],
    quats: Float[Array, "n 4"],
    scales: Float[Array, "n 3"],
    opacities: Float[Array, " n"],
    viewmats: Float[Array, "v 4 4"],
    Ks: Float[Array, "v 3 3"],
    width: int,
    height: int,
    *,
    near_plane: float | Array = 0.01,
    far_plane: float | Array = 1e10,
    eps2d: float | Array = 0.3,
    tile_size: int = 16,
    extra_valid: Bool[Array, " n"] | None = None,
) -> Projection:
    """EWA-project N Gaussians into V pinhole cameras and cull them (gsplat 1.5.3 classic mode).

    Culled: non-finite inputs, `extra_valid == False`, z ≤ near_plane or z ≥ far_plane,
    det(Σ2d) ≤ 0, opacity < 1/255 (it can never pass the compositor's alpha threshold), bounding
    boxes entirely off-screen, and anything whose projection overflows the float range. The
    bounding box is gsplat 1.5's opacity-aware one: half-extent `ceil(e·sqrt(Σ2d_xx))`,
    `ceil(e·sqrt(Σ2d_yy))` with `e = min(3.33, sqrt(2 ln(255·opacity)))`, i.e. exactly where α
    falls below 1/255, so the tiling never removes a pixel the compositor would have kept.

    Gradient safety is a two-pass double-where: a gradient-free pass decides which (camera,
    Gaussian) pairs are valid, then the differentiable pass runs on per-camera inputs in which
    every invalid Gaussian is replaced by a harmless stand-in, so no inf/NaN intermediate exists
    for autodiff to multiply by zero.
    """
    dtype = means.dtype
    num_views, num_gaussians = viewmats.shape[0], means.shape[0]
    finite = _all_finite(means) & _all_finite(quats) & _all_finite(scales) & jnp.isfinite(opacities)
    finite = finite & (opacities >= ALPHA_THRESHOLD)
    if extra_valid is not None:
        finite = finite & extra_valid
    # A non-finite camera culls all its Gaussians; it computes on the identity camera.
    view_ok = _all_finite(viewmats.reshape(-1, 16)) & _all_finite(Ks.reshape(-1, 9))
    viewmats = jnp.where(view_ok[:, None, None], viewmats, jnp.eye(4, dtype=dtype))
    Ks = jnp.where(view_ok[:, None, None], Ks, jnp.eye(3, dtype=dtype))
    finite = finite[None, :] & view_ok[:, None]  # [V,N]

    def per_view_inputs(ok):
        shape = (num_views, num_gaussians)
        pick = lambda x, stand_in: jnp.where(  # noqa: E731
            ok.reshape(*shape, *([1] * (x.ndim - 1))), jnp.broadcast_to(x, (*shape, *x.shape[1:])), stand_in
        )
        return (
            pick(means, jnp.zeros((3,), dtype)),
            pick(quats, jnp.asarray([1.0, 0.0, 0.0, 0.0], dtype)),
            pick(scales, jnp.zeros((3,), dtype)),
            pick(opacities, jnp.ones((), dtype)),
        )

    args = (viewmats, Ks, width, height, near_plane, far_plane, eps2d, tile_size)
    probe = _project(finite, *jax.lax.stop_gradient((*per_view_inputs(finite), *args[:2])), *args[2:])
    valid = jax.lax.stop_gradient(probe.valid)
    return _project(valid, *per_view_inputs(valid), *args)
