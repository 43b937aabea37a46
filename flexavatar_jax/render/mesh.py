"""Triangle-mesh z-buffer rasterizer (host-side numpy, exact, non-differentiable).

Used for visibility when lifting image features into UV (Dual-UV's Core-UV), for masks, and for
shaded previews. Every pixel centre (x + 0.5, y + 0.5) inside a triangle is a candidate; the
nearest candidate per pixel wins. The work is vectorised over all (triangle, pixel-in-bbox)
candidates in chunks (`head.mesh_ops.triangle_coverage`, shared with UV rasterisation).

Conventions: OpenCV cameras (see `render/camera.py`); faces counter-clockwise seen from outside.
Triangles with a vertex at or behind `near_plane` are not clipped but dropped, and their count is
returned (`num_near_dropped`) so the caller can tell.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float, Int

from flexavatar_jax.head.mesh_ops import triangle_coverage


@dataclasses.dataclass(frozen=True)
class MeshRaster:
    """`depth [H,W]` camera z (inf where empty); `face_id [H,W]` (-1 where empty);
    `barycentrics [H,W,3]` perspective-correct, w.r.t. the face's corners in `faces` order;
    `num_near_dropped` triangles skipped because they reach the near plane."""

    depth: Float[np.ndarray, "H W"]
    face_id: Int[np.ndarray, "H W"]
    barycentrics: Float[np.ndarray, "H W 3"]
    num_near_dropped: int

    @property
    def mask(self) -> np.ndarray:
        return self.face_id >= 0


def rasterize_mesh(
    vertices: Float[np.ndarray, "V 3"],
    faces: Int[np.ndarray, "F 3"],
    viewmat: Float[np.ndarray, "4 4"],
    K: Float[np.ndarray, "3 3"],
    width: int,
    height: int,
    *,
    cull_backfaces: bool = False,
    near_plane: float = 1e-3,
) -> MeshRaster:
    """Z-buffer a triangle mesh with one OpenCV camera; see the module docstring."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces)
    viewmat = np.asarray(viewmat, np.float64)
    K = np.asarray(K, np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"rasterize_mesh: vertices must be [V,3], got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"rasterize_mesh: faces must be integer [F,3], got {faces.shape} {faces.dtype}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("rasterize_mesh: faces index outside the vertex array")
    if viewmat.shape != (4, 4) or K.shape != (3, 3):
        raise ValueError(f"rasterize_mesh: viewmat must be [4,4] and K [3,3], got {viewmat.shape}, {K.shape}")
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize_mesh: image size must be positive, got {width}x{height}")
    if not np.all(np.isfinite(vertices)):
        raise ValueError("rasterize_mesh: vertices contain NaN or Inf")

    cam = vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    safe_z = np.where(z > near_plane, z, 1.0)
    pix = (cam @ K.T)[:, :2] / safe_z[:, None]

    tri_z = z[faces]
    near_bad = np.any(tri_z <= near_plane, axis=1)
    keep = ~near_bad
    if cull_backfaces:
        p = pix[faces]
        # Twice the signed area in image coordinates (y down): front faces (CCW from outside in
        # a y-up view) come out negative.
        keep &= (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) < (p[:, 2, 0] - p[:, 0, 0]) * (
            p[:, 1, 1] - p[:, 0, 1]
        )
    best_depth = np.full(height * width, np.inf)
    best_face = np.full(height * width, -1, np.int64)
    best_bary = np.zeros((height * width, 3))
    inv_z = 1.0 / np.where(near_bad[:, None], 1.0, tri_z)
    for pixel, tri, b, _ in triangle_coverage(pix[faces], keep, width, height):
        # Perspective correction: 1/z is affine in screen space.
        bz = b * inv_z[tri]
        denom = bz.sum(1)
        depth = 1.0 / denom
        bary = bz / denom[:, None]
        order = np.lexsort((depth, pixel))
        pixel, depth, tri, bary = pixel[order], depth[order], tri[order], bary[order]
        first = np.ones(len(pixel), bool)
        first[1:] = pixel[1:] != pixel[:-1]
        pixel, depth, tri, bary = pixel[first], depth[first], tri[first], bary[first]
        better = depth < best_depth[pixel]
        sel = pixel[better]
        best_depth[sel] = depth[better]
        best_face[sel] = tri[better]
        best_bary[sel] = bary[better]

    return MeshRaster(
        depth=best_depth.reshape(height, width),
        face_id=best_face.reshape(height, width),
        barycentrics=best_bary.reshape(height, width, 3),
        num_near_dropped=int(near_bad.sum()),
    )
