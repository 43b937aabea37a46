"""Small host-side (numpy) triangle-mesh utilities shared by head models and renderers."""

from __future__ import annotations

import numpy as np
from absl import logging
from jaxtyping import Float, Int


def face_normals(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"]) -> np.ndarray:
    """Unnormalised face normals (length = twice the area), outward for CCW faces."""
    tri = np.asarray(vertices, np.float64)[faces]
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def vertex_normals(vertices: Float[np.ndarray, "V 3"], faces: Int[np.ndarray, "F 3"]) -> np.ndarray:
    """Area-weighted unit vertex normals (outward for CCW faces); zero-area vertices get 0."""
    fn = face_normals(vertices, faces)
    n = np.zeros((len(vertices), 3))
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _nearest(queries: np.ndarray, points: np.ndarray, use_kdtree: bool = True,
             chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of the nearest `points` row for each `queries` row."""
    if use_kdtree:
        try:
            from scipy.spatial import cKDTree
        except ImportError:
            use_kdtree = False
    if use_kdtree:
        dist, idx = cKDTree(points).query(queries, k=1)
        return np.asarray(dist, np.float64), np.asarray(idx, np.int64)
    dist = np.empty(len(queries), np.float64)
    idx = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), chunk):
        d2 = np.sum((queries[s:s + chunk, None, :] - points[None, :, :]) ** 2, axis=-1)
        idx[s:s + chunk] = np.argmin(d2, axis=1)
        dist[s:s + chunk] = np.sqrt(d2[np.arange(len(d2)), idx[s:s + chunk]])
    return dist, idx


def mirror_vertex_table(vertices: np.ndarray, plane_x: float | None = None,
                        use_kdtree: bool = True) -> np.ndarray:
    """Involution `m [V]` pairing each vertex with its nearest neighbour across the plane
    x = `plane_x` (default: the mean x of the vertices). Vertices on the plane map to themselves.

    The reflected distance d(i,j) = |reflect(p_i) - p_j| is symmetric in (i,j), so the closest
    remaining pair is always mutual (up to ties): repeatedly keeping mutual nearest pairs among the
    unpaired vertices terminates and is deterministic.
    """
    v = np.asarray(vertices, np.float64)
    plane_x = float(v[:, 0].mean()) if plane_x is None else float(plane_x)
    reflected = v.copy()
    reflected[:, 0] = 2.0 * plane_x - v[:, 0]
    table = np.full(len(v), -1, np.int64)
    first_nn = None
    todo = np.arange(len(v))
    while todo.size:
        dist, j = _nearest(reflected[todo], v[todo], use_kdtree)
        nn = todo[j]
        if first_nn is None:
            first_nn = nn
        nn_of = np.full(len(v), -1, np.int64)
        nn_of[todo] = nn
        mutual = nn_of[nn] == todo
        if mutual.any():
            table[todo[mutual]] = nn[mutual]
        else:  # ties only: pair the closest remaining pair explicitly
            a = int(np.argmin(dist))
            table[todo[a]], table[nn[a]] = nn[a], todo[a]
        todo = np.flatnonzero(table < 0)
    residual = np.linalg.norm(reflected - v[table], axis=1) if len(v) else np.zeros(0)
    non_mutual = int(np.sum(table != first_nn)) if first_nn is not None else 0
    if non_mutual:
        logging.warning("mirror_vertex: %d of %d vertices had a non-mutual nearest mirrored "
                        "neighbour and were re-paired", non_mutual, len(v))
    if len(v):
        logging.info("mirror_vertex: plane x=%.6g, residual max %.3g / median %.3g (model units)",
                     plane_x, residual.max(), np.median(residual))
    return table


def mirror_faces(faces: Int[np.ndarray, "F 3"], mirror_vertex: Int[np.ndarray, " V"],
                 vertices: Float[np.ndarray, "V 3"] | None = None, use_kdtree: bool = True) -> np.ndarray:
    """Face mirror table: face f -> the face whose corners are the mirrored corners of f.

    For an exactly symmetric mesh every face has such a twin. For an approximately symmetric one
    (FLAME), pass `vertices`: faces without an exact twin map to the face whose centroid is nearest
    the centroid of the mirrored corners (counted and logged). Without `vertices`, a missing twin
    raises ValueError.
    """
    faces = np.asarray(faces, np.int64)
    index = {}
    for i, key in enumerate(map(tuple, np.sort(faces, axis=1).tolist())):
        index.setdefault(key, i)
    mirrored = np.sort(np.asarray(mirror_vertex)[faces], axis=1)
    table = np.array([index.get(k, -1) for k in map(tuple, mirrored.tolist())], np.int64)
    unmatched = np.flatnonzero(table < 0)
    if unmatched.size:
        if vertices is None:
            raise ValueError(f"mirror_faces: {unmatched.size} faces (first: {unmatched[0]}) have no mirrored counterpart")
        v = np.asarray(vertices, np.float64)
        centroids = v[faces].mean(axis=1)
        targets = v[mirrored[unmatched]].mean(axis=1)
        table[unmatched] = _nearest(targets, centroids, use_kdtree)[1]
        logging.warning("mirror_faces: %d of %d faces have no exactly mirrored face; mapped to the "
                        "nearest face centroid", unmatched.size, len(faces))
    return table


_CHUNK_CANDIDATES = 1 << 22


def triangle_coverage(points: Float[np.ndarray, "F 3 2"], keep: np.ndarray, width: int, height: int):
    """Yields, chunk by chunk, every (pixel, triangle) pair whose pixel centre (x+0.5, y+0.5) lies
    inside the 2D triangle (edges inclusive), with its barycentric coordinates.

    The work is vectorised over all (triangle, pixel-in-bounding-box) candidates, in chunks of
    about 4M candidates, so there is no per-triangle Python loop. Yields
    `(pixel [n] = y*width + x, triangle [n], bary [n,3], signed_area2 [n])`.
    """
    p = np.asarray(points, np.float64)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (
        p[:, 1, 1] - p[:, 0, 1]
    )
    keep = keep & (area != 0) & np.all(np.isfinite(p.reshape(len(p), -1)), axis=1)
    x0 = np.clip(np.ceil(p[..., 0].min(1) - 0.5), 0, width).astype(np.int64)
    x1 = np.clip(np.floor(p[..., 0].max(1) - 0.5), -1, width - 1).astype(np.int64)
    y0 = np.clip(np.ceil(p[..., 1].min(1) - 0.5), 0, height).astype(np.int64)
    y1 = np.clip(np.floor(p[..., 1].max(1) - 0.5), -1, height - 1).astype(np.int64)
    bw = np.maximum(x1 - x0 + 1, 0)
    counts = np.where(keep, bw * np.maximum(y1 - y0 + 1, 0), 0)
    tri_ids = np.nonzero(counts)[0]
    cum = np.cumsum(counts[tri_ids])
    start = 0
    while start < len(tri_ids):
        base = cum[start - 1] if start else 0
        stop = max(int(np.searchsorted(cum, base + _CHUNK_CANDIDATES, side="right")), start + 1)
        ids = tri_ids[start:stop]
        n = counts[ids]
        tri = np.repeat(ids, n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        px = x0[tri] + local % bw[tri]
        py = y0[tri] + local // bw[tri]
        cx, cy = px + 0.5, py + 0.5
        q = p[tri]
        w0 = (q[:, 1, 0] - cx) * (q[:, 2, 1] - cy) - (q[:, 2, 0] - cx) * (q[:, 1, 1] - cy)
        w1 = (q[:, 2, 0] - cx) * (q[:, 0, 1] - cy) - (q[:, 0, 0] - cx) * (q[:, 2, 1] - cy)
        w2 = (q[:, 0, 0] - cx) * (q[:, 1, 1] - cy) - (q[:, 1, 0] - cx) * (q[:, 0, 1] - cy)
        a = area[tri]
        bary = np.stack([w0, w1, w2], 1) / a[:, None]
        inside = np.all(bary >= 0, axis=1)
        yield (py * width + px)[inside], tri[inside], bary[inside], a[inside]
        start = stop
