"""Quaternion <-> matrix conversions against scipy's independent implementation."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from flexavatar_jax.head.rotations import matrix_to_quat, quat_multiply, quat_to_matrix


def _random_rotations(n, seed=0):
    r = Rotation.random(n, random_state=seed)
    # Include near-180° turns, where naive trace-based conversions break.
    flips = Rotation.from_rotvec(np.array([[np.pi - 1e-4, 0, 0], [0, np.pi, 0], [0, 0, -np.pi + 1e-6]]))
    return Rotation.concatenate([r, flips])


def test_quat_to_matrix_matches_scipy():
    r = _random_rotations(50)
    xyzw = r.as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1) * 3.0  # unnormalised on purpose
    np.testing.assert_allclose(np.asarray(quat_to_matrix(jnp.asarray(wxyz, jnp.float32))), r.as_matrix(), atol=1e-6)


def test_matrix_to_quat_round_trip_including_half_turns():
    r = _random_rotations(50)
    q = np.asarray(matrix_to_quat(jnp.asarray(r.as_matrix(), jnp.float32)))
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(np.asarray(quat_to_matrix(jnp.asarray(q))), r.as_matrix(), atol=2e-6)
    assert np.all(np.isfinite(np.asarray(jax.jacfwd(matrix_to_quat)(jnp.asarray(r.as_matrix()[0], jnp.float32)))))


def test_quat_multiply_composes_rotations():
    a, b = _random_rotations(10, 1), _random_rotations(10, 2)
    qa = jnp.asarray(np.asarray(matrix_to_quat(jnp.asarray(a.as_matrix(), jnp.float32))))
    qb = jnp.asarray(np.asarray(matrix_to_quat(jnp.asarray(b.as_matrix(), jnp.float32))))
    np.testing.assert_allclose(np.asarray(quat_to_matrix(quat_multiply(qa, qb))), (a * b).as_matrix(), atol=2e-6)
