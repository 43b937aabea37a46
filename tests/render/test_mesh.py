"""Mesh z-buffer against closed forms."""

import numpy as np
import pytest

from flexavatar_jax.render import camera
from flexavatar_jax.render.mesh import rasterize_mesh


def _cube(half=0.5):
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    faces = np.array(faces)
    # Orient every face outwards (CCW from outside).
    tri = v[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.sum(n * tri.mean(1), 1) < 0
    faces[flip] = faces[flip][:, ::-1]
    return v, faces


def test_cube_front_face_depth_is_closed_form():
    v, f = _cube()
    size = 64
    dist = 3.0
    view = np.asarray(camera.look_at(np.array([0.0, 0.0, dist]), np.zeros(3)))
    K = np.asarray(camera.intrinsics_from_fov(30.0, size, size))
    r = rasterize_mesh(v, f, view, K, size, size)
    fx = K[0, 0]
    # The front face z=+0.5 sits at camera depth dist-0.5 and spans |x| <= 0.5 -> pixels.
    half_px = 0.5 * fx / (dist - 0.5)
    c = np.arange(size) + 0.5 - size / 2
    inside = (np.abs(c)[None, :] < half_px - 0.5) & (np.abs(c)[:, None] < half_px - 0.5)
    np.testing.assert_allclose(r.depth[inside], dist - 0.5, atol=1e-9)
    outside = (np.abs(c)[None, :] > half_px + 0.5) | (np.abs(c)[:, None] > half_px + 0.5)
    assert np.all(r.face_id[outside] == -1) and np.all(np.isinf(r.depth[outside]))


def test_tilted_plane_depth_and_barycentrics():
    # Plane z = 0.3 x + 0.1 y in front of a camera at the origin looking down +z (identity view).
    verts = np.array([[-1, -1, 2.0], [1, -1, 2.0], [1, 1, 2.0], [-1, 1, 2.0]])
    verts[:, 2] += 0.3 * verts[:, 0] + 0.1 * verts[:, 1]
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    K = np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]])
    r = rasterize_mesh(verts, faces, np.eye(4), K, 64, 48)
    ys, xs = np.nonzero(r.mask)
    assert len(ys) > 1000
    # Each pixel's 3D point from the barycentrics projects to its centre and lies on the plane.
    pts = np.einsum("nc,ncd->nd", r.barycentrics[ys, xs], verts[faces[r.face_id[ys, xs]]])
    np.testing.assert_allclose(pts[:, 2], r.depth[ys, xs], atol=1e-9)
    np.testing.assert_allclose(pts[:, 2], 2.0 + 0.3 * pts[:, 0] + 0.1 * pts[:, 1], atol=1e-9)
    proj = pts @ K.T
    np.testing.assert_allclose(proj[:, 0] / proj[:, 2], xs + 0.5, atol=1e-7)
    np.testing.assert_allclose(proj[:, 1] / proj[:, 2], ys + 0.5, atol=1e-7)


def test_nearest_surface_wins_and_backface_culling():
    v, f = _cube()
    view = np.asarray(camera.look_at(np.array([0.0, 0.0, 3.0]), np.zeros(3)))
    K = np.asarray(camera.intrinsics_from_fov(30.0, 32, 32))
    both = rasterize_mesh(v, f, view, K, 32, 32)
    culled = rasterize_mesh(v, f, view, K, 32, 32, cull_backfaces=True)
    np.testing.assert_array_equal(both.face_id, culled.face_id)  # closed mesh: front faces win anyway
    # A single back-facing triangle disappears with culling.
    tri = np.array([[-0.5, -0.5, 0.0], [0.0, 0.5, 0.0], [0.5, -0.5, 0.0]])  # CW seen from +z
    assert rasterize_mesh(tri, np.array([[0, 1, 2]]), view, K, 32, 32).mask.sum() > 20
    assert rasterize_mesh(tri, np.array([[0, 1, 2]]), view, K, 32, 32, cull_backfaces=True).mask.sum() == 0
    assert rasterize_mesh(tri, np.array([[0, 2, 1]]), view, K, 32, 32, cull_backfaces=True).mask.sum() > 20


def test_near_plane_triangles_are_counted():
    tri = np.array([[-0.5, -0.5, -1.0], [0.0, 0.5, 2.0], [0.5, -0.5, 2.0]])
    r = rasterize_mesh(tri, np.array([[0, 1, 2]]), np.eye(4), np.array([[20.0, 0, 16], [0, 20, 16], [0, 0, 1]]), 32, 32)
    assert r.num_near_dropped == 1 and r.mask.sum() == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(vertices=np.zeros((3, 2))), "vertices"),
    (dict(faces=np.array([[0, 1, 5]])), "index"),
    (dict(faces=np.zeros((1, 3), np.float32)), "faces"),
    (dict(width=0), "size"),
    (dict(vertices=np.full((3, 3), np.nan)), "NaN"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(vertices=np.eye(3), faces=np.array([[0, 1, 2]]), viewmat=np.eye(4), K=np.eye(3), width=8, height=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rasterize_mesh(**args)
