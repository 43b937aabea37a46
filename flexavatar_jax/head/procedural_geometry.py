"""Geometry, UV atlas, regions, joints and skinning of the built-in procedural head.

Everything is numpy float64 and deterministic. How it is built is described in
`flexavatar_jax/head/README.md`; in short:

1. The skin (skull, face, neck) is an implicit surface: a smooth union of ellipsoids and capsules
   (cranium, face, jaw, chin, cheeks, brow ridge, nose, lips, neck) minus eye sockets, eye openings
   and a lip crease. Features come in mirrored pairs, so the implicit function is even in x.
2. A capsule-shaped latitude/longitude grid is shrink-wrapped onto it: rows below the capsule's
   cap are horizontal rays from the vertical axis, rows on the cap are rays from the cap centre;
   each vertex sits on the outermost crossing of its ray. Rows are re-spaced by arc length, with
   extra density on the face. Longitudes are odd-symmetric around the face (φ=0), so column j
   mirrors to column n-j, which makes the mirror table exact.
3. The lip-contact row is cut open between the mouth corners (lower-lip vertices are duplicated)
   so the jaw opens a real mouth. Behind it: an open mouth-cavity bag, upper/lower teeth arches and
   a tongue. Eyeballs are separate spheres behind eye openings; ears are separate thin shells.
4. Left-side parts (eye, ear) are built once and mirrored (x -> -x, u -> 1-u, winding reversed).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flexavatar_jax.head.model import REGION_NAMES

# --- anatomical landmarks (metres; +y up, +z forward, subject's left = +x) -------------------
MOUTH_Y = -0.047  # lip-contact line
MOUTH_HALF_WIDTH = 0.024
EYE_CENTER = np.array([0.0315, 0.028, 0.058])  # left eyeball centre
EYE_RADIUS = 0.0122
JAW_JOINT = np.array([0.0, -0.012, 0.005])  # TMJ axis midpoint
NECK_JOINT = np.array([0.0, -0.045, -0.025])
NECK_BOTTOM_Y = -0.20
CAP_CENTER_Y = 0.0  # rows above this are rays from (0, CAP_CENTER_Y, AXIS_Z)
AXIS_Z = -0.008


def _bit(name: str) -> int:
    return 1 << REGION_NAMES.index(name)


# --- implicit skin ---------------------------------------------------------------------------
def _sd_ellipsoid(p, c, r):
    q = (p - c) / r
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / r, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _sd_capsule(p, a, b, r):
    pa, ba = p - a, b - a
    h = np.clip(np.sum(pa * ba, -1) / np.dot(ba, ba), 0.0, 1.0)
    return np.linalg.norm(pa - h[..., None] * ba, axis=-1) - r


def _smin(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def skin_sdf(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance of the skin surface (negative inside). Even in x."""
    p = np.asarray(p, np.float64)
    pm = np.concatenate([np.abs(p[..., :1]), p[..., 1:]], -1)  # mirrored-pair features use |x|
    d = _sd_ellipsoid(p, np.array([0.0, 0.040, -0.018]), np.array([0.074, 0.092, 0.098]))  # cranium
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, 0.002, 0.030]), np.array([0.064, 0.074, 0.070])), 0.02)
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, -0.058, 0.030]), np.array([0.054, 0.044, 0.058])), 0.02)  # jaw
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, -0.087, 0.066]), np.array([0.024, 0.019, 0.018])), 0.016)  # chin
    d = _smin(d, _sd_ellipsoid(pm, np.array([0.040, -0.012, 0.052]), np.array([0.026, 0.030, 0.026])), 0.03)  # cheeks
    d = _smin(d, _sd_ellipsoid(pm, np.array([0.050, 0.012, 0.044]), np.array([0.020, 0.013, 0.022])), 0.02)  # zygoma
    d = _smin(d, _sd_ellipsoid(pm, np.array([0.030, 0.048, 0.074]), np.array([0.024, 0.009, 0.012])), 0.012)  # brow
    d = _smin(d, _sd_capsule(p, np.array([0.0, 0.040, 0.084]), np.array([0.0, -0.002, 0.106]), 0.0075), 0.008)  # bridge
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, -0.008, 0.104]), np.array([0.012, 0.011, 0.012])), 0.008)  # tip
    d = _smin(d, _sd_ellipsoid(pm, np.array([0.012, -0.014, 0.094]), np.array([0.009, 0.007, 0.009])), 0.006)  # alae
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, MOUTH_Y + 0.006, 0.080]), np.array([0.024, 0.0075, 0.012])), 0.010)
    d = _smin(d, _sd_ellipsoid(p, np.array([0.0, MOUTH_Y - 0.0065, 0.078]), np.array([0.022, 0.0085, 0.012])), 0.010)
    d = _smin(d, _sd_capsule(p, np.array([0.0, -0.26, -0.012]), np.array([0.0, -0.03, -0.020]), 0.056), 0.03)  # neck
    # Eye sockets, then the palpebral openings that let the eyeball show.
    d = _smax(d, -_sd_ellipsoid(pm, EYE_CENTER + [0.0, 0.001, 0.024], np.array([0.022, 0.015, 0.014])), 0.008)
    d = _smax(d, -_sd_ellipsoid(pm, EYE_CENTER + [0.0, 0.0, 0.017], np.array([0.0135, 0.0058, 0.011])), 0.002)
    # Lip crease: a thin slab that rolls the lips inwards at the contact line.
    crease = _sd_ellipsoid(p, np.array([0.0, MOUTH_Y, 0.095]), np.array([MOUTH_HALF_WIDTH, 0.0016, 0.012]))
    d = _smax(d, -crease, 0.002)
    return d


def _march(origins, dirs, r_max=0.30, steps=256):
    """Outermost root of `skin_sdf` along each ray origin + r*dir, r in (0, r_max]."""
    r = np.linspace(r_max, 0.0, steps)
    vals = skin_sdf(origins[:, None, :] + r[None, :, None] * dirs[:, None, :])  # [n, steps]
    inside = vals < 0
    first = np.argmax(inside, axis=1)
    if not np.all(inside.any(axis=1)):
        raise RuntimeError("procedural head: a ray missed the skin surface")
    lo, hi = r[first], r[np.maximum(first - 1, 0)]  # lo inside, hi outside
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        ins = skin_sdf(origins + mid[:, None] * dirs) < 0
        lo = np.where(ins, mid, lo)
        hi = np.where(ins, hi, mid)
    return origins + (0.5 * (lo + hi))[:, None] * dirs


def _profile_rays(t, phi):
    """Rays of the capsule parameterisation. t in [0, 1]: 0 = neck bottom, t_cap = cap start,
    1 = crown; phi longitude (0 = front, +pi/2 = subject's left)."""
    cyl_len = CAP_CENTER_Y - NECK_BOTTOM_Y
    cap_len = 0.5 * np.pi * 0.1
    s = t * (cyl_len + cap_len)
    y = np.minimum(NECK_BOTTOM_Y + s, CAP_CENTER_Y)
    lam = np.maximum(s - cyl_len, 0.0) / 0.1  # latitude on the cap
    origin = np.stack([np.zeros_like(s), y, np.full_like(s, AXIS_Z)], -1)
    d = np.stack([np.sin(phi) * np.cos(lam), np.sin(lam), np.cos(phi) * np.cos(lam)], -1)
    return origin, d


def _grid_faces(rows, cols, idx, periodic=True, split=None):
    """Triangulate a rows x cols vertex grid `idx[r, c]`; quads on the left half (c < split) use
    one diagonal and the right half the mirrored one, so the triangulation is mirror-symmetric."""
    faces = []
    ncq = cols if periodic else cols - 1
    split = ncq // 2 if split is None else split
    for r in range(rows - 1):
        for c in range(ncq):
            c1 = (c + 1) % cols
            a, b, cc, d = idx[r][c], idx[r][c1], idx[r + 1][c1], idx[r + 1][c]
            if c < split:
                faces += [(a, b, cc), (a, cc, d)]
            else:
                faces += [(a, b, d), (b, cc, d)]
    return np.asarray(faces, np.int64)


# --- skin ------------------------------------------------------------------------------------
N_COLS = 128
N_ROWS = 96
FACE_BAND = (-0.115, 0.075)  # heights that get extra row density


def _columns():
    s = 2.0 * np.arange(N_COLS) / N_COLS - 1.0  # [-1, 1), column 0 at the back seam
    a = 0.5  # odd warp: the face (s ~ 0) gets 3x the angular resolution of the back
    return np.pi * (s - a * np.sin(np.pi * s) / np.pi)


def build_skin():
    phi = _columns()
    # Dense profile to re-space rows by arc length (averaged over longitudes).
    t_dense = np.linspace(0.0, 1.0, 1200)[:-1]
    probe_phi = np.array([0.0, 0.5, 1.2, 2.0, np.pi])
    pts = []
    for ph in probe_phi:
        o, d = _profile_rays(t_dense, np.full_like(t_dense, ph))
        pts.append(_march(o, d))
    pts = np.stack(pts)  # [5, n, 3]
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1).mean(0)
    ymid = 0.5 * (pts[2, 1:, 1] + pts[2, :-1, 1])
    weight = 1.0 + 1.5 * ((ymid > FACE_BAND[0]) & (ymid < FACE_BAND[1]))
    arc = np.concatenate([[0.0], np.cumsum(seg * weight)])
    targets = np.linspace(0.0, arc[-1], N_ROWS + 1)[:-1]  # last target would be the pole
    t_rows = np.interp(targets, arc, t_dense)
    # Snap the row nearest the mouth line onto it: rows below the cap are horizontal rings.
    cyl_len = CAP_CENTER_Y - NECK_BOTTOM_Y
    t_mouth = (MOUTH_Y - NECK_BOTTOM_Y) / (cyl_len + 0.5 * np.pi * 0.1)
    mouth_row = int(np.argmin(np.abs(t_rows - t_mouth)))
    t_rows[mouth_row] = t_mouth

    tt, pp = np.meshgrid(t_rows, phi, indexing="ij")
    o, d = _profile_rays(tt.ravel(), pp.ravel())
    grid = _march(o, d).reshape(N_ROWS, N_COLS, 3)
    o, d = _profile_rays(np.array([1.0]), np.array([0.0]))
    pole = _march(o, d)

    verts = [grid.reshape(-1, 3), pole]
    idx = np.arange(N_ROWS * N_COLS).reshape(N_ROWS, N_COLS)
    pole_id = N_ROWS * N_COLS
    # Mouth slit: interior columns of the lip-contact row get a lower-lip twin.
    xs = grid[mouth_row, :, 0]
    front = np.abs(phi) < 0.5 * np.pi
    slit_cols = np.nonzero(front & (np.abs(xs) < MOUTH_HALF_WIDTH))[0]
    # The two corner vertices stay shared; only strictly interior columns are cut.
    slit_cols = slit_cols[(np.abs(xs[slit_cols]) < np.abs(xs[slit_cols]).max() - 1e-9)]
    twin = {}
    next_id = pole_id + 1
    lip_twins = []
    for c in slit_cols:
        twin[c] = next_id
        lip_twins.append(grid[mouth_row, c])
        next_id += 1
    verts.append(np.asarray(lip_twins).reshape(-1, 3))
    below = idx.copy()
    for c, t in twin.items():
        below[mouth_row, c] = t
    # Quads between mouth_row-1 and mouth_row use the twins on their top edge.
    rows_lists = [list(idx[r]) for r in range(N_ROWS)]
    faces = []
    for r in range(N_ROWS - 1):
        top = [below[r + 1][c] if r + 1 == mouth_row else idx[r + 1][c] for c in range(N_COLS)]
        sub = _grid_faces(2, N_COLS, [rows_lists[r], top], periodic=True)
        faces.append(sub)
    # Cap: triangles to the pole.
    cap = [(idx[-1][c], idx[-1][(c + 1) % N_COLS], pole_id) for c in range(N_COLS)]
    faces.append(np.asarray(cap))
    faces = np.concatenate(faces)

    # UV: u = column / N_COLS (seam at the back: column N_COLS duplicates column 0), v by row.
    v_lo, v_hi = 0.30, 1.0
    v_rows = v_lo + (v_hi - v_lo) * targets / arc[-1]
    uv = np.stack(np.meshgrid(np.arange(N_COLS + 1) / N_COLS, v_rows, indexing="xy"), -1).reshape(-1, 2)
    uv_idx = np.arange(N_ROWS * (N_COLS + 1)).reshape(N_ROWS, N_COLS + 1)
    pole_uv0 = len(uv)
    uv = np.concatenate([uv, np.stack([(np.arange(N_COLS) + 0.5) / N_COLS, np.full(N_COLS, v_hi)], -1)])
    faces_uv = []
    for r in range(N_ROWS - 1):
        sub = _grid_faces(2, N_COLS + 1, [list(uv_idx[r]), list(uv_idx[r + 1])], periodic=False,
                          split=N_COLS // 2)
        faces_uv.append(sub)
    faces_uv.append(np.asarray([(uv_idx[-1][c], uv_idx[-1][c + 1], pole_uv0 + c) for c in range(N_COLS)]))
    faces_uv = np.concatenate(faces_uv)

    vertices = np.concatenate(verts)
    # Mirror: column c <-> (N_COLS - c) % N_COLS; the pole and twins map accordingly.
    mirror = np.empty(len(vertices), np.int64)
    rr, cc = np.meshgrid(np.arange(N_ROWS), np.arange(N_COLS), indexing="ij")
    mirror[idx.ravel()] = idx[rr, (N_COLS - cc) % N_COLS].ravel()
    mirror[pole_id] = pole_id
    for c, t in twin.items():
        mirror[t] = twin[(N_COLS - c) % N_COLS]
    info = dict(twin_ids=np.array(list(twin.values())), grid_idx=idx)
    return vertices, faces, uv, faces_uv, mirror, info


# --- small parts -----------------------------------------------------------------------------
def _sphere_grid(n_lat, n_lon):
    """Unit-sphere lat-long grid around +z: polar angle theta from the +z pole (front), azimuth
    alpha measured in the x-y plane. Returns vertices [n_lat*n_lon + 2, 3] with both poles."""
    theta = np.linspace(0.0, np.pi, n_lat + 2)[1:-1]
    alpha = 2.0 * np.pi * np.arange(n_lon) / n_lon
    th, al = np.meshgrid(theta, alpha, indexing="ij")
    ring = np.stack([np.sin(th) * np.cos(al), np.sin(th) * np.sin(al), np.cos(th)], -1).reshape(-1, 3)
    return np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]]), theta, alpha


def _sphere_faces(n_lat, n_lon):
    idx = (1 + np.arange(n_lat * n_lon)).reshape(n_lat, n_lon)
    # Azimuth increases counter-clockwise seen from +z (the front pole), so rows walk away from it.
    body = _grid_faces(n_lat, n_lon, [list(r) for r in idx], periodic=True, split=n_lon)
    body = body[:, ::-1]  # rows go from front to back: flip to keep outward winding
    last = 1 + n_lat * n_lon
    front = [(0, idx[0][c], idx[0][(c + 1) % n_lon]) for c in range(n_lon)]
    back = [(last, idx[-1][(c + 1) % n_lon], idx[-1][c]) for c in range(n_lon)]
    return np.concatenate([np.asarray(front), body, np.asarray(back)]), idx


def _disc_uv(theta, alpha, center, radius, n_lat, n_lon):
    """Azimuthal-equidistant chart of a sphere grid: the front pole at the chart centre."""
    rho = radius * theta / np.pi
    uv = [center]
    for t in rho:
        uv += list(center + t * np.stack([np.cos(alpha), np.sin(alpha)], -1))
    back = center + radius * np.stack([np.cos(alpha + np.pi / n_lon), np.sin(alpha + np.pi / n_lon)], -1)
    return np.concatenate([np.asarray(uv), back])


def _sphere_with_disc_chart(n_lat, n_lon, center, radius):
    """Unit sphere grid (front pole at +z) with an azimuthal disc UV chart around `center`; the
    back pole gets one UV vertex per azimuth on the chart rim (its triangles are the last n_lon
    faces, in azimuth order)."""
    unit, theta, alpha = _sphere_grid(n_lat, n_lon)
    faces, _ = _sphere_faces(n_lat, n_lon)
    uv = _disc_uv(theta, alpha, np.asarray(center), radius, n_lat, n_lon)
    faces_uv = faces.copy()
    last = 1 + n_lat * n_lon
    faces_uv[len(faces) - n_lon:, 0] = last + np.arange(n_lon)
    return unit, faces, uv, faces_uv


def build_left_eye():
    unit, faces, uv, faces_uv = _sphere_with_disc_chart(14, 24, (0.70, 0.135), 0.07)
    verts = EYE_CENTER + EYE_RADIUS * unit
    regions = np.full(len(verts), _bit("left_eye"))
    return verts, faces, uv, faces_uv, regions


def build_left_ear(skin_vertices):
    """A thin cupped shell standing out of the side of the head."""
    unit, faces, uv, faces_uv = _sphere_with_disc_chart(10, 20, (0.89, 0.135), 0.085)
    # Local frame: +z of the unit sphere points out of the head (+x world).
    half_h, half_w, thick = 0.031, 0.018, 0.0045
    local = unit * np.array([half_w, half_h, thick])
    rho2 = (unit[:, 0] ** 2 + unit[:, 1] ** 2)
    # Concha: the outer face is pushed in at the middle; the helix rim stays proud.
    outer = unit[:, 2] > 0
    local[:, 2] -= np.where(outer, 0.0065 * np.exp(-rho2 / 0.35) * unit[:, 2], 0.0)
    # Place: rotate so local +z -> world +x (with a backward tilt), at the side of the head.
    tilt = np.deg2rad(-12.0)  # top of the ear leans back
    rot = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    rt = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(tilt), -np.sin(tilt)], [0.0, np.sin(tilt), np.cos(tilt)]])
    ear_y, ear_z = 0.012, -0.012
    side = skin_vertices[(np.abs(skin_vertices[:, 1] - ear_y) < 0.006) & (np.abs(skin_vertices[:, 2] - ear_z) < 0.008)]
    x_side = side[:, 0].max() if len(side) else 0.075
    verts = (local @ rot.T) @ rt.T + np.array([x_side + 0.005, ear_y, ear_z])
    regions = np.full(len(verts), _bit("ears"))
    return verts, faces, uv, faces_uv, regions


def _symmetric_sheet(xs, ys_fn, n_rows, uv_box, inward=False):
    """A grid sheet over columns `xs` (symmetric about 0) and rows 0..n_rows-1, with the position
    given by `ys_fn(row_t, x) -> [.., 3]`; UV laid out in `uv_box = (u0, u1, v0, v1)` with u
    symmetric about 0.5 when (u0 + u1) / 2 = 0.5."""
    n_cols = len(xs)
    tr = np.linspace(0.0, 1.0, n_rows)
    tt, xx = np.meshgrid(tr, xs, indexing="ij")
    verts = ys_fn(tt, xx).reshape(-1, 3)
    idx = np.arange(n_rows * n_cols).reshape(n_rows, n_cols)
    faces = _grid_faces(n_rows, n_cols, [list(r) for r in idx], periodic=False, split=(n_cols - 1) // 2)
    if inward:
        faces = faces[:, ::-1]
    u0, u1, v0, v1 = uv_box
    uu = u0 + (u1 - u0) * (xs - xs.min()) / (xs.max() - xs.min())
    uv = np.stack(np.meshgrid(uu, v0 + (v1 - v0) * tr, indexing="xy"), -1).reshape(-1, 2)
    mirror = idx[:, ::-1].ravel()
    return verts, faces, uv, faces.copy(), mirror


def build_mouth_parts():
    """Cavity (open bag seen from inside), upper/lower teeth arches, tongue."""
    parts = []
    # Cavity: rows go from the lip opening (front rim) to the back of the throat.
    n = 17
    az = np.linspace(-np.pi, np.pi, n)  # around the forward axis; x = sin(az)

    def cavity(t, a):
        # Polar angle from the back pole: 0.85*pi is the open rim behind the lips, ~0 the throat.
        ang = np.pi * (0.85 - 0.83 * t)
        rx, ry, rz = 0.023, 0.015, 0.032
        c = np.array([0.0, MOUTH_Y - 0.002, 0.046])
        x = rx * np.sin(ang) * np.sin(a)
        y = ry * np.sin(ang) * -np.cos(a)
        z = rz * -np.cos(ang)
        return np.stack([x, y, z], -1) + c

    # az from -pi..pi with the seam at the top (a = +-pi -> y up)
    v, f, uv, fuv, mir = _symmetric_sheet(az, cavity, 9, (0.41, 0.59, 0.16, 0.27),
                                          inward=True)
    parts.append(("cavity", v, f, uv, fuv, mir, _bit("mouth_interior")))

    def arch(t, s, upper):
        # s in [-1, 1] along the arch, t in [0,1] around a flat tube cross-section.
        ang = s * 0.5 * np.pi * 0.95
        half_w, depth = 0.021, 0.026
        front_z = 0.077 if upper else 0.074
        x = half_w * np.sin(ang)
        z = front_z - depth * (1.0 - np.cos(ang))
        h0, h1 = (MOUTH_Y + 0.0005, MOUTH_Y + 0.0095) if upper else (MOUTH_Y - 0.0095, MOUTH_Y - 0.0005)
        # Cross-section: a closed rectangle traversed by t (front face, bottom/top, back face...).
        k = 4.0 * t
        thick = 0.0035
        fy = np.where(k < 1, h0 + (h1 - h0) * k, np.where(k < 2, h1, np.where(k < 3, h1 - (h1 - h0) * (k - 2), h0)))
        off = np.where(k < 1, 0.0, np.where(k < 2, thick * (k - 1), np.where(k < 3, thick, thick * (4 - k))))
        nx, nz = np.sin(ang), np.cos(ang)
        return np.stack([x - off * nx, fy, z - off * nz], -1)

    xs = np.linspace(-1.0, 1.0, 21)
    for upper, box in ((True, (0.40, 0.60, 0.085, 0.115)), (False, (0.40, 0.60, 0.118, 0.148))):
        v, f, uv, fuv, mir = _symmetric_sheet(xs, lambda t, s, u=upper: arch(t, s, u), 9, box)
        parts.append(("upper_teeth" if upper else "lower_teeth", v, f, uv, fuv, mir, _bit("teeth")))

    def tongue(t, s):
        x = 0.016 * s
        z = 0.066 - 0.045 * t
        y = MOUTH_Y - 0.0105 + 0.005 * (1.0 - s ** 2) * np.sin(np.pi * np.clip(t * 1.2, 0, 1)) ** 0.5
        return np.stack([x, y, z], -1)

    v, f, uv, fuv, mir = _symmetric_sheet(np.linspace(-1, 1, 11), tongue, 9, (0.43, 0.57, 0.02, 0.08))
    parts.append(("tongue", v, f, uv, fuv, mir, _bit("tongue") | _bit("mouth_interior")))
    return parts


def _mirror_part(v, f, uv, fuv):
    return v * np.array([-1.0, 1.0, 1.0]), f[:, ::-1].copy(), uv * np.array([-1.0, 1.0]) + np.array([1.0, 0.0]), fuv[:, ::-1].copy()


@dataclasses.dataclass
class Geometry:
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    vertex_regions: np.ndarray
    mirror_vertex: np.ndarray
    part_of_vertex: np.ndarray  # [V] index into part_names
    part_names: tuple
    skin_info: dict


PART_NAMES = ("skin", "left_eyeball", "right_eyeball", "left_ear", "right_ear", "cavity", "upper_teeth",
              "lower_teeth", "tongue")


def build_geometry() -> Geometry:
    v_all, f_all, uv_all, fuv_all, reg_all, mir_all, part_all = [], [], [], [], [], [], []
    n_v = n_t = 0

    def add(part_id, v, f, uv, fuv, regions, mirror_local_to_global):
        nonlocal n_v, n_t
        v_all.append(v)
        f_all.append(f + n_v)
        uv_all.append(uv)
        fuv_all.append(fuv + n_t)
        reg_all.append(regions)
        part_all.append(np.full(len(v), part_id))
        base = n_v
        n_v += len(v)
        n_t += len(uv)
        mir_all.append(mirror_local_to_global(base))

    sv, sf, suv, sfuv, smir, info = build_skin()
    add(0, sv, sf, suv, sfuv, np.zeros(len(sv), np.int64), lambda b: smir + b)
    ev, ef, euv, efuv, ereg = build_left_eye()
    ne = len(ev)
    add(1, ev, ef, euv, efuv, ereg, lambda b: np.arange(ne) + b + ne)
    mv, mf, muv, mfuv = _mirror_part(ev, ef, euv, efuv)
    add(2, mv, mf, muv, mfuv, np.full(ne, _bit("right_eye")), lambda b: np.arange(ne) + b - ne)
    av, af, auv, afuv, areg = build_left_ear(sv)
    na = len(av)
    add(3, av, af, auv, afuv, areg, lambda b: np.arange(na) + b + na)
    mv, mf, muv, mfuv = _mirror_part(av, af, auv, afuv)
    add(4, mv, mf, muv, mfuv, areg, lambda b: np.arange(na) + b - na)
    for k, (name, v, f, uv, fuv, mir, bits) in enumerate(build_mouth_parts()):
        add(5 + k, v, f, uv, fuv, np.full(len(v), bits), lambda b, m=mir: m + b)

    g = Geometry(
        vertices=np.concatenate(v_all),
        faces=np.concatenate(f_all),
        uv=np.concatenate(uv_all),
        faces_uv=np.concatenate(fuv_all),
        vertex_regions=np.concatenate(reg_all).astype(np.int64),
        mirror_vertex=np.concatenate(mir_all),
        part_of_vertex=np.concatenate(part_all),
        part_names=PART_NAMES,
        skin_info=info,
    )
    # Exact symmetry: average every vertex with its mirror image (IEEE: a-b == -(b-a) exactly).
    flip = np.array([-1.0, 1.0, 1.0])
    g.vertices = 0.5 * (g.vertices + g.vertices[g.mirror_vertex] * flip)
    skin = g.part_of_vertex == 0
    g.vertex_regions[skin] = _skin_regions(g.vertices[skin], info)
    return g


def _skin_regions(v, info):
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    ax = np.abs(x)
    r = np.zeros(len(v), np.int64)
    face = (z > 0.02) & (y > -0.125) & (y < 0.078) & (ax < 0.068)
    neck = (y < -0.085) & ~face
    neck |= (y < -0.115)
    scalp = ~face & ~neck & ((y > 0.06) | (z < -0.01))
    lips_zone = ((y - MOUTH_Y) / 0.0125) ** 2 + (ax / (MOUTH_HALF_WIDTH + 0.002)) ** 2 < 1.0
    lips_zone &= (z > 0.06)
    eyebrow = (np.abs(y - (EYE_CENTER[1] + 0.021)) < 0.0055) & (np.abs(ax - EYE_CENTER[0]) < 0.02) & (z > 0.05)
    nose = (ax < 0.021) & (y > -0.022) & (y < 0.045) & (z > 0.075)
    r[face] |= _bit("face_skin")
    r[neck] |= _bit("neck")
    r[scalp] |= _bit("scalp")
    r[lips_zone] |= _bit("lips")
    r[eyebrow] |= _bit("eyebrows")
    r[nose] |= _bit("nose")
    # Every skin vertex is in at least one of face / neck / scalp.
    rest = r == 0
    r[rest] |= _bit("face_skin")
    return r


# --- joints and skinning ----------------------------------------------------------------------
def smoothstep(e0, e1, x):
    """Cubic Hermite step: 0 at `x <= e0`, 1 at `x >= e1`, C¹ in between (`e0 > e1` steps down)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def affine_regressor_row(vertices, ids, point):
    """Min-norm affine weights over `vertices[ids]` reproducing `point` exactly (when in their
    affine hull; otherwise the least-squares closest point)."""
    a = np.concatenate([vertices[ids].T, np.ones((1, len(ids)))], 0)
    b = np.concatenate([point, [1.0]])
    w = np.linalg.pinv(a) @ b
    row = np.zeros(len(vertices))
    row[ids] = w
    return row


def joints_and_weights(g: Geometry):
    v = g.vertices
    part = g.part_of_vertex
    info = g.skin_info
    skin = part == 0
    grid_idx = info["grid_idx"]
    # Joint regressor rows (affine combinations, so a translated mesh moves its joints with it).
    root_ring = grid_idx[0]
    root = affine_regressor_row(v, root_ring, v[root_ring].mean(0))
    ring_y = v[grid_idx[:, 0], 1]
    neck_ring = grid_idx[int(np.argmin(np.abs(ring_y - NECK_JOINT[1])))]
    neck_pt = np.array([0.0, v[neck_ring[0], 1], NECK_JOINT[2]])
    neck = affine_regressor_row(v, neck_ring, neck_pt)
    jaw_ring = grid_idx[int(np.argmin(np.abs(ring_y - JAW_JOINT[1])))]
    jaw = affine_regressor_row(v, jaw_ring, np.array([0.0, v[jaw_ring[0], 1], JAW_JOINT[2]]))
    eyes = []
    for p in (1, 2):
        row = np.zeros(len(v))
        ids = np.nonzero(part == p)[0]
        row[ids] = 1.0 / len(ids)
        eyes.append(row)
    j_reg = np.stack([root, neck, jaw, eyes[0], eyes[1]])

    # Skinning weights.
    w = np.zeros((len(v), 5))
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    head = smoothstep(-0.175, -0.105, y)
    ax = np.abs(x)
    jaw_face = smoothstep(MOUTH_Y + 0.002, MOUTH_Y - 0.014, y)
    in_mouth = 1.0 - smoothstep(MOUTH_HALF_WIDTH - 0.003, MOUTH_HALF_WIDTH + 0.014, ax)
    below = (y < MOUTH_Y - 1e-9).astype(np.float64)
    j = in_mouth * below + (1 - in_mouth) * jaw_face
    j *= smoothstep(-0.005, 0.035, z) * smoothstep(-0.128, -0.100, y + 0.25 * np.maximum(z - 0.05, 0))
    j = np.where(skin, j, 0.0)
    j[info["twin_ids"]] = 1.0
    w[:, 0] = np.where(skin, 1.0 - head, 0.0)
    w[:, 1] = np.where(skin, head * (1.0 - j), 0.0)
    w[:, 2] = np.where(skin, head * j, 0.0)
    w[part == 1, :] = [0, 0, 0, 1, 0]
    w[part == 2, :] = [0, 0, 0, 0, 1]
    w[(part == 3) | (part == 4), :] = [0, 1, 0, 0, 0]
    w[part == 6, :] = [0, 1, 0, 0, 0]  # upper teeth
    w[(part == 7) | (part == 8), :] = [0, 0, 1, 0, 0]  # lower teeth, tongue
    cav = part == 5
    jc = smoothstep(MOUTH_Y + 0.003, MOUTH_Y - 0.006, y[cav])
    w[cav, 1] = 1.0 - jc
    w[cav, 2] = jc
    # Symmetrise weights exactly (the left/right eye columns swap under the mirror).
    wm = w[g.mirror_vertex][:, [0, 1, 2, 4, 3]]
    w = 0.5 * (w + wm)
    w /= w.sum(1, keepdims=True)
    return j_reg, w
