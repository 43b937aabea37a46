"""Per-Gaussian EWA projection (the first stage of `rasterize`), gsplat 1.5.3 classic semantics.

For every (camera, Gaussian) pair this computes the image-space mean, camera depth, conic
(inverse 2D covariance), per-axis pixel radii, the tile rectangle the splat touches and whether it
survives culling. Everything is vectorised over `[V, N]`, jit/vmap/grad friendly, and safe for
degenerate input: non-finite parameters, Gaussians outside the near/far range, singular
covariances and anything that overflows are culled, in one pass that keeps every intermediate the
backward pass multiplies by finite, so neither the outputs nor the gradients see NaN/inf.

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


def _rotation_entries(quats: Float[Array, "*b 4"]) -> tuple[tuple[Array, ...], ...]:
    """The 3×3 rotation of wxyz quaternions (normalised here) as nested tuples of [*b] arrays.

    The projection works on such per-entry arrays (structure of arrays) rather than [..., 3, 3]
    blocks: XLA:CPU runs the elementwise math and, above all, its autodiff transpose several
    times faster on contiguous [V, N] arrays than on tiny trailing matrix axes."""
    norm2 = jnp.sum(quats * quats, axis=-1)
    usable = (norm2 > 1e-24) & jnp.isfinite(norm2)
    inv = jnp.where(usable, jnp.reciprocal(jnp.sqrt(jnp.where(usable, norm2, 1.0))), 1.0)
    w, x, y, z = (jnp.where(usable, quats[..., i], float(i == 0)) * inv for i in range(4))
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )


def quat_to_rotmat(quats: Float[Array, "*b 4"]) -> Float[Array, "*b 3 3"]:
    """Rotation matrices from wxyz quaternions, normalised here.

    A zero (or non-finite) quaternion maps to the identity with a zero gradient, instead of NaN.
    """
    return jnp.stack([jnp.stack(row, axis=-1) for row in _rotation_entries(quats)], axis=-2)


def _covariance_entries(quats: Float[Array, "*b 4"], scales: Float[Array, "*b 3"]) -> dict[tuple[int, int], Array]:
    """Σ = (R S)(R S)ᵀ, S = diag(scales): its entries (i, j), i ≤ j, as [*b] arrays."""
    rot = _rotation_entries(quats)
    m = [[rot[i][k] * scales[..., k] for k in range(3)] for i in range(3)]  # R · diag(s)
    return {(i, j): m[i][0] * m[j][0] + m[i][1] * m[j][1] + m[i][2] * m[j][2] for i in range(3) for j in range(i, 3)}


def covariance_3d(quats: Float[Array, "*b 4"], scales: Float[Array, "*b 3"]) -> Float[Array, "*b 3 3"]:
    """World covariance Σ = (R S)(R S)ᵀ with S = diag(scales) (world units²)."""
    c = _covariance_entries(quats, scales)
    return jnp.stack([jnp.stack([c[min(i, j), max(i, j)] for j in range(3)], axis=-1) for i in range(3)], axis=-2)


def _finite_or(x: Array, valid: Array, stand_in: float = 0.0) -> tuple[Array, Array]:
    """(x where it is finite, `stand_in` elsewhere; `valid` & finite over the trailing `x.ndim -
    valid.ndim` axes). Every intermediate passes through here before anything multiplies or
    divides by it, so no value the backward pass multiplies by is inf/NaN (see `_project`)."""
    extra = tuple(range(valid.ndim, x.ndim))
    ok = jnp.isfinite(x)
    valid = valid & (ok.all(extra) if extra else ok)
    return jnp.where(ok, x, stand_in), valid


def _project(allowed, means, quats, scales, opacities, viewmats, Ks, width, height, near_plane, far_plane,
             eps2d, tile_size):
    """The projection of finite per-Gaussian inputs (`means [N,3]` ...) into finite cameras
    (`viewmats [V,4,4]`, `Ks [V,3,3]`); only `allowed [V,N]` pairs can be valid.

    One pass, and gradient-safe: reverse mode multiplies each cotangent by local derivatives,
    which are the values of the other factors (products), 1/z and 1/det (divisions). So every
    intermediate that a later product uses is replaced by 0 where it overflowed (`finite`, which
    also culls the pair), depths and determinants outside their valid range are replaced by 1
    before dividing, and the outputs of culled pairs are zeroed: culled pairs then get exactly
    zero gradient and valid ones the plain derivative (their values are untouched). Entries are
    [V,N] arrays (see `_rotation_entries`)."""
    valid = allowed
    # World covariance (entries [N]); one that overflows culls its Gaussian in every view.
    sym = _covariance_entries(quats, scales)
    cov_ok = functools.reduce(jnp.logical_and, [jnp.isfinite(v) for v in sym.values()])
    sym = {k: jnp.where(cov_ok, v, 0.0) for k, v in sym.items()}
    valid = valid & cov_ok[None, :]

    def finite(x):  # x where finite, else 0; non-finite culls the pair
        nonlocal valid
        x, valid = _finite_or(x, valid)
        return x

    # Camera rotation / translation entries [V,1], broadcast against the Gaussians' [N].
    w = [[viewmats[:, i, j][:, None] for j in range(3)] for i in range(3)]
    t = [viewmats[:, i, 3][:, None] for i in range(3)]
    mean = [means[:, i] for i in range(3)]
    means_cam = [finite(w[i][0] * mean[0] + w[i][1] * mean[1] + w[i][2] * mean[2] + t[i]) for i in range(3)]
    # Camera covariance C = W Σ Wᵀ (entries [V,N]).
    cov = lambda i, j: sym[min(i, j), max(i, j)]  # noqa: E731
    ws = [[finite(w[i][0] * cov(0, k) + w[i][1] * cov(1, k) + w[i][2] * cov(2, k)) for k in range(3)]
          for i in range(3)]
    cam = {(i, j): finite(ws[i][0] * w[j][0] + ws[i][1] * w[j][1] + ws[i][2] * w[j][2])
           for i in range(3) for j in range(i, 3)}
    c = lambda i, j: cam[min(i, j), max(i, j)]  # noqa: E731
    z = means_cam[2]
    valid = valid & (z > near_plane) & (z < far_plane)
    # Out-of-range depths (behind the camera, straddling the near plane) compute at z = 1.
    x, y = means_cam[0], means_cam[1]
    z = jnp.where(valid, z, 1.0)

    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + FRUSTUM_CLAMP_MARGIN * tan_fovx
    lim_x_neg = cx / fx + FRUSTUM_CLAMP_MARGIN * tan_fovx
    lim_y_pos = (height - cy) / fy + FRUSTUM_CLAMP_MARGIN * tan_fovy
    lim_y_neg = cy / fy + FRUSTUM_CLAMP_MARGIN * tan_fovy
    rz = 1.0 / z
    u, v = finite(x * rz), finite(y * rz)  # normalised image coordinates
    # The EWA Jacobian [[j00, 0, j02], [0, j11, j12]] at the frustum-clamped direction.
    j00, j11 = finite(fx * rz), finite(fy * rz)
    j02 = finite(-j00 * jnp.clip(u, -lim_x_neg, lim_x_pos))
    j12 = finite(-j11 * jnp.clip(v, -lim_y_neg, lim_y_pos))
    # Σ2d = (J C) Jᵀ.
    jc00, jc01, jc02 = (finite(j00 * c(0, k) + j02 * c(2, k)) for k in range(3))
    jc11, jc12 = (finite(j11 * c(1, k) + j12 * c(2, k)) for k in (1, 2))
    cov_a = finite(jc00 * j00 + jc02 * j02) + eps2d
    cov_b = finite(jc01 * j11 + jc02 * j12)
    cov_c = finite(jc11 * j11 + jc12 * j12) + eps2d
    det = finite(cov_a * cov_c - cov_b * cov_b)
    means2d = jnp.stack([finite(fx * u) + cx, finite(fy * v) + cy], axis=-1)
    valid = valid & (det > 0)
    det_s = jnp.where(valid, det, 1.0)
    conics = jnp.stack([finite(cov_c / det_s), finite(-cov_b / det_s), finite(cov_a / det_s)], axis=-1)
    means2d = finite(means2d)

    # Bounding box (non-differentiable, as in gsplat).
    extend = jnp.minimum(MAX_EXTEND, jnp.sqrt(2.0 * jnp.log(jnp.maximum(opacities / ALPHA_THRESHOLD, 1.0))))
    radius_x = jnp.ceil(extend * jnp.sqrt(jnp.maximum(cov_a, 0.0)))
    radius_y = jnp.ceil(extend * jnp.sqrt(jnp.maximum(cov_c, 0.0)))
    valid = valid & jnp.isfinite(radius_x) & jnp.isfinite(radius_y)
    mx, my = means2d[..., 0], means2d[..., 1]
    valid = valid & (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
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
    depths = jnp.where(valid, means_cam[2], 0.0)
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

    One pass, gradient-safe (see `_project`): outputs and gradients are finite for any input, and
    culled pairs get zero gradient.
    """
    dtype = means.dtype
    finite = _all_finite(means) & _all_finite(quats) & _all_finite(scales) & jnp.isfinite(opacities)
    finite = finite & (opacities >= ALPHA_THRESHOLD)
    if extra_valid is not None:
        finite = finite & extra_valid
    # Gaussians with a non-finite parameter compute on a harmless stand-in (culled)...
    stand_in = lambda x, value: jnp.where(finite.reshape(-1, *([1] * (x.ndim - 1))), x, value)  # noqa: E731
    means = stand_in(means, jnp.zeros((3,), dtype))
    quats = stand_in(quats, jnp.asarray([1.0, 0.0, 0.0, 0.0], dtype))
    scales = stand_in(scales, jnp.zeros((3,), dtype))
    opacities = stand_in(opacities, jnp.ones((), dtype))
    # ...and a non-finite camera culls all its Gaussians; it computes as the identity camera.
    view_ok = _all_finite(viewmats.reshape(-1, 16)) & _all_finite(Ks.reshape(-1, 9))
    viewmats = jnp.where(view_ok[:, None, None], viewmats, jnp.eye(4, dtype=dtype))
    Ks = jnp.where(view_ok[:, None, None], Ks, jnp.eye(3, dtype=dtype))
    return _project(finite[None, :] & view_ok[:, None], means, quats, scales, opacities, viewmats, Ks, width,
                    height, near_plane, far_plane, eps2d, tile_size)
