"""Camera rigs of `data.motion` for rendering avatars: the turntable orbit and the front camera."""

import numpy as np
import pytest

from flexavatar_jax.data import motion
from flexavatar_jax.data.motion import HEAD_CENTER
from flexavatar_jax.render.camera import camera_center


def test_turntable_cameras_orbit_the_head_centre():
    num, radius = 12, 0.9
    viewmats, Ks = motion.turntable_cameras(num, image_size=64, radius=radius, elevation_deg=10.0, fov_deg=20.0)
    assert viewmats.shape == (num, 4, 4) and Ks.shape == (num, 3, 3)
    # The head centre lies on every optical axis (camera x = y = 0), at the orbit radius in front.
    in_camera = viewmats[:, :3, :3] @ HEAD_CENTER + viewmats[:, :3, 3]
    np.testing.assert_allclose(in_camera[:, :2], 0.0, atol=1e-5)
    np.testing.assert_allclose(in_camera[:, 2], radius, atol=1e-5)
    offsets = np.asarray(camera_center(viewmats)) - HEAD_CENTER
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), radius, atol=1e-5)
    azimuth = np.rad2deg(np.arctan2(offsets[:, 0], offsets[:, 2]))
    steps = np.diff(np.unwrap(np.deg2rad(azimuth)))
    np.testing.assert_allclose(np.rad2deg(steps), 360.0 / num, atol=1e-3)  # a full circle in equal steps
    assert azimuth[0] == pytest.approx(0.0, abs=1e-4)  # starts frontal
    np.testing.assert_allclose(Ks[:, :2, 2], 32.0)
    np.testing.assert_allclose(Ks[:, 1, 1], Ks[:, 0, 0])


def test_front_camera_looks_at_the_head_centre_from_the_front():
    viewmat, K = motion.front_camera(48)
    assert viewmat.shape == (4, 4) and K.shape == (3, 3)
    in_camera = viewmat[:3, :3] @ HEAD_CENTER + viewmat[:3, 3]
    np.testing.assert_allclose(in_camera, [0.0, 0.0, motion.FRONT_DISTANCE_M], atol=1e-5)
    np.testing.assert_allclose(np.asarray(camera_center(viewmat)) - HEAD_CENTER, [0.0, 0.0, motion.FRONT_DISTANCE_M],
                               atol=1e-5)
    # The subject's left (+x) is on the image's right; the field of view is FRONT_FOV_DEG.
    assert (viewmat[:3, :3] @ np.array([1.0, 0.0, 0.0]))[0] > 0.99
    np.testing.assert_allclose(K[1, 1], 24.0 / np.tan(np.deg2rad(motion.FRONT_FOV_DEG / 2)), rtol=1e-5)
    np.testing.assert_allclose(K[:2, 2], 24.0)


def test_turntable_rejects_bad_requests():
    with pytest.raises(ValueError, match="num_frames"):
        motion.turntable_cameras(0, 32)
    with pytest.raises(ValueError, match="radius"):
        motion.turntable_cameras(4, 32, radius=0.0)
