"""Camera helpers. Convention: OpenCV — `viewmat` is world->camera 4x4 (x right, y down, z
forward), `K` 3x3 pixel intrinsics with pixel centres at +0.5 (pixel (0,0) covers [0,1)²).

All functions work on host or device, batched over leading axes where noted: `intrinsics_from_fov`
and `look_at` compute in numpy when all their inputs are host data and in jnp otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

# OpenGL cameras look down -z with y up; OpenCV cameras look down +z with y down.
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0]).astype(np.float32)


def _array_module(*values):
    """numpy when every value is host data (numbers, lists, numpy arrays: camera sampling in the
    data pipeline, where one jnp dispatch per op costs milliseconds), else jax.numpy (traced or
    device arrays). Both give the same matrices up to float32 rounding."""
    return jnp if any(isinstance(v, jax.Array) for v in values) else np


def intrinsics_from_fov(
    fov_y_deg: float | Float[Array, "*b"], width: int, height: int, fov_x_deg: float | None = None
) -> Float[Array, "*b 3 3"]:
    """Pinhole intrinsics from a vertical field of view in degrees (square pixels unless
    `fov_x_deg` is given); principal point at the image centre."""
    jnp = _array_module(fov_y_deg)
    fov_y = jnp.deg2rad(jnp.asarray(fov_y_deg, jnp.float32))
    fy = 0.5 * height / jnp.tan(0.5 * fov_y)
    fx = fy if fov_x_deg is None else 0.5 * width / jnp.tan(0.5 * jnp.deg2rad(fov_x_deg))
    fx = jnp.broadcast_to(fx, fy.shape)
    zero, one = jnp.zeros_like(fy), jnp.ones_like(fy)
    return jnp.stack(
        [
            jnp.stack([fx, zero, jnp.full_like(fy, width / 2.0)], -1),
            jnp.stack([zero, fy, jnp.full_like(fy, height / 2.0)], -1),
            jnp.stack([zero, zero, one], -1),
        ],
        -2,
    )


def look_at(
    eye: Float[Array, "*b 3"], target: Float[Array, "*b 3"], up: Float[Array, "*b 3"] | None = None
) -> Float[Array, "*b 4 4"]:
    """World->camera (OpenCV) matrix of a camera at `eye` looking at `target`; `up` defaults to +y.

    Raises ValueError (host inputs) when `eye == target`; a view direction parallel to `up`
    falls back to +z as the up hint so the result stays a rotation.
    """
    jnp = _array_module(eye, target, up)
    eye = jnp.asarray(eye, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    up = jnp.broadcast_to(jnp.asarray([0.0, 1.0, 0.0] if up is None else up, jnp.float32), eye.shape)
    fwd = target - eye
    fwd_norm = jnp.linalg.norm(fwd, axis=-1, keepdims=True)
    if not isinstance(fwd_norm, jax.core.Tracer) and np.any(np.asarray(fwd_norm) == 0):
        raise ValueError("look_at: eye and target coincide")
    z = fwd / fwd_norm
    alt = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 1.0], jnp.float32), eye.shape)
    parallel = jnp.abs(jnp.sum(z * up, -1, keepdims=True)) / jnp.linalg.norm(up, axis=-1, keepdims=True) > 0.9999
    up = jnp.where(parallel, alt, up)
    # OpenCV: x right = forward × up; y = z × x then points down in the image.
    x = jnp.cross(z, up)
    x = x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    y = jnp.cross(z, x)
    rot = jnp.stack([x, y, z], axis=-2)  # rows: camera axes in world coordinates
    t = -jnp.einsum("...ij,...j->...i", rot, eye)
    top = jnp.concatenate([rot, t[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], jnp.float32), (*eye.shape[:-1], 1, 4))
    return jnp.concatenate([top, bottom], axis=-2)


def orbit(
    num_views: int,
    radius: float,
    target=(0.0, 0.0, 0.0),
    elevation_deg: float = 0.0,
    start_azimuth_deg: float = 0.0,
    arc_deg: float = 360.0,
) -> Float[Array, "n 4 4"]:
    """Turntable around the +y axis through `target`. Azimuth 0 is in front of the face (+z),
    positive azimuth moves towards +x (the subject's left). `arc_deg=360` gives a full circle
    without repeating the first view."""
    step = arc_deg / num_views if arc_deg >= 360.0 else arc_deg / max(num_views - 1, 1)
    az = np.deg2rad(start_azimuth_deg + step * np.arange(num_views))
    el = np.deg2rad(elevation_deg)
    target = np.asarray(target, np.float32)
    eyes = target + radius * np.stack(
        [np.sin(az) * np.cos(el), np.full_like(az, np.sin(el)), np.cos(az) * np.cos(el)], -1
    )
    return look_at(eyes.astype(np.float32), np.broadcast_to(target, eyes.shape))


def camera_center(viewmat: Float[Array, "*b 4 4"]) -> Float[Array, "*b 3"]:
    """World position of a camera from its world->camera matrix."""
    rot = viewmat[..., :3, :3]
    return -jnp.einsum("...ji,...j->...i", rot, viewmat[..., :3, 3])


def opengl_to_opencv(c2w_gl: Float[Array, "*b 4 4"]) -> Float[Array, "*b 4 4"]:
    """Camera-to-world in OpenGL convention (NeRF/VHAP `transform_matrix`) -> OpenCV world->camera."""
    c2w_cv = c2w_gl @ _GL_TO_CV
    return jnp.linalg.inv(c2w_cv)


def opencv_to_opengl(viewmat: Float[Array, "*b 4 4"]) -> Float[Array, "*b 4 4"]:
    """OpenCV world->camera -> OpenGL camera-to-world (inverse of `opengl_to_opencv`)."""
    return jnp.linalg.inv(viewmat) @ _GL_TO_CV


def project_points(
    points: Float[Array, "n 3"], viewmat: Float[Array, "4 4"], K: Float[Array, "3 3"]
) -> tuple[Float[Array, "n 2"], Float[Array, " n"]]:
    """Pixel coordinates (continuous, pixel centres at +0.5) and camera-space depth z."""
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    uv = (cam @ K.T)[:, :2] / z[:, None]
    return uv, z
