"""Rotation representations: matrices <-> unit quaternions (wxyz, the project's Gaussian convention)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def quat_to_matrix(quats: Float[Array, "*b 4"]) -> Float[Array, "*b 3 3"]:
    """wxyz quaternion (normalised here) -> rotation matrix."""
    q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return jnp.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(rot: Float[Array, "*b 3 3"]) -> Float[Array, "*b 4"]:
    """Rotation matrix -> unit wxyz quaternion with w >= 0.

    Uses the branch with the largest of (trace, diagonal) as pivot (Shepperd's method), so it is
    accurate for every rotation, including 180° turns; gradients flow through the chosen branch.
    """
    m = rot
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = jnp.stack([
        jnp.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        jnp.stack([m[..., 2, 1] - m[..., 1, 2], 1 + 2 * m[..., 0, 0] - t, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        jnp.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 + 2 * m[..., 1, 1] - t, m[..., 1, 2] + m[..., 2, 1]], -1),
        jnp.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 + 2 * m[..., 2, 2] - t], -1),
    ], -2)  # [...,4,4]: row k is 4·q_k·q (up to sign), largest when q_k is largest
    pivot = jnp.stack([t, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    k = jnp.argmax(pivot, axis=-1)
    q = jnp.take_along_axis(cands, k[..., None, None], axis=-2)[..., 0, :]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return jnp.where(q[..., :1] < 0, -q, q)


def quat_multiply(a: Float[Array, "*b 4"], b: Float[Array, "*b 4"]) -> Float[Array, "*b 4"]:
    """Hamilton product a ⊗ b (wxyz): the rotation b followed by a."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return jnp.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)
