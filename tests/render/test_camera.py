"""Camera helpers: OpenCV conventions, orbits, OpenGL<->OpenCV."""

import numpy as np
import pytest

from flexavatar_jax.render import camera


def test_look_at_is_a_rigid_opencv_camera():
    eye = np.array([0.3, 0.2, 1.5], np.float32)
    target = np.array([0.0, 0.05, 0.0], np.float32)
    vm = np.asarray(camera.look_at(eye, target))
    rot = vm[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(np.asarray(camera.camera_center(vm)), eye, atol=1e-6)
    K = np.asarray(camera.intrinsics_from_fov(40.0, 200, 100))
    uv, z = camera.project_points(np.stack([target, target + [0, 0.1, 0], target + [0.1, 0, 0]]), vm, K)
    uv = np.asarray(uv)
    np.testing.assert_allclose(uv[0], [100.0, 50.0], atol=1e-3)  # target at the image centre
    assert uv[1, 1] < uv[0, 1]  # world up is image up (OpenCV y points down)
    assert float(z[0]) == pytest.approx(np.linalg.norm(eye - target), rel=1e-6)


def test_frontal_camera_sees_subjects_left_on_image_right():
    vm = np.asarray(camera.look_at(np.array([0, 0, 1.0]), np.zeros(3)))
    K = np.asarray(camera.intrinsics_from_fov(30.0, 64, 64))
    uv, _ = camera.project_points(np.array([[0.1, 0, 0.0]]), vm, K)
    assert float(uv[0, 0]) > 32


def test_intrinsics_fov_edge_projects_to_border():
    K = np.asarray(camera.intrinsics_from_fov(60.0, 128, 96))
    y = np.tan(np.deg2rad(30.0))
    uv, _ = camera.project_points(np.array([[0.0, y, 1.0]]), np.eye(4), K)
    assert float(uv[0, 1]) == pytest.approx(96.0, abs=1e-4)


def test_orbit_covers_360_degrees():
    views = np.asarray(camera.orbit(8, 2.0, target=(0, 0.1, 0), elevation_deg=10.0))
    centres = np.asarray(camera.camera_center(views))
    np.testing.assert_allclose(np.linalg.norm(centres - [0, 0.1, 0], axis=1), 2.0, atol=1e-5)
    az = np.rad2deg(np.arctan2(centres[:, 0], centres[:, 2])) % 360
    np.testing.assert_allclose(np.sort(az), np.arange(8) * 45.0, atol=1e-3)
    assert np.isclose(az, 180.0, atol=1e-3).any()  # a back view


def test_opengl_opencv_round_trip():
    vm = np.asarray(camera.look_at(np.array([0.4, -0.2, 1.2]), np.zeros(3)))
    c2w_gl = np.asarray(camera.opencv_to_opengl(vm))
    np.testing.assert_allclose(np.asarray(camera.opengl_to_opencv(c2w_gl)), vm, atol=1e-5)
    # The OpenGL camera looks down its -z: a point there has positive OpenCV depth.
    p = c2w_gl @ np.array([0, 0, -1.0, 1.0])
    assert (vm @ p)[2] == pytest.approx(1.0, abs=1e-5)


def test_look_at_rejects_coincident_points():
    with pytest.raises(ValueError, match="coincide"):
        camera.look_at(np.zeros(3), np.zeros(3))
