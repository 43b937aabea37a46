"""Shape and expression bases and pose correctives of the procedural head.

Each component starts as a named displacement field over the template (a semantic deformation:
"nose length", "smile left", ...) or as a smooth random bump field (multi-scale residual detail,
fixed seed). The normalised fields are orthogonalised *symmetrically* (Löwdin: Q = U Vᵀ from the
SVD D = U S Vᵀ, the orthonormal set closest to the fields in least squares, with no order bias, so
every component keeps most of its named meaning), each direction is rescaled to the norm of its
source field and the columns are sorted by norm: mutually orthogonal like a PCA basis scaled by
standard deviations, and a coefficient of 1 is about one
"standard" deformation (±3 is extreme). Eyeballs move rigidly under shape and not at all under
expression (gaze is a pose).
"""

from __future__ import annotations

import numpy as np

from flexavatar_jax.head import procedural_geometry as pg
from flexavatar_jax.head.mesh_ops import vertex_normals

FLIP = np.array([-1.0, 1.0, 1.0])


class _Fields:
    """Helpers to write displacement fields over the template vertices `v` [V,3]."""

    def __init__(self, g: pg.Geometry, jaw_weight: np.ndarray):
        self.g = g
        self.v = g.vertices
        self.n = vertex_normals(g.vertices, g.faces)
        self.part = g.part_of_vertex
        self.skin = self.part == 0
        self.sign = np.where(self.v[:, 0] >= 0, 1.0, -1.0)
        self.lower = jaw_weight  # 1 on the jaw-driven (lower-lip/chin) side
        self.upper = 1.0 - jaw_weight

    def gauss(self, c, r, mirrored=False):
        c = np.asarray(c, np.float64)
        w = np.exp(-np.sum((self.v - c) ** 2, -1) / (2 * r * r))
        if mirrored:
            w = w + np.exp(-np.sum((self.v - c * FLIP) ** 2, -1) / (2 * r * r))
        return w

    def vec(self, w, d):
        return w[:, None] * np.asarray(d, np.float64)

    def paired(self, c, r, d):
        """The same displacement on both sides, x-component mirrored."""
        d = np.asarray(d, np.float64)
        return self.vec(self.gauss(c, r), d) + self.vec(self.gauss(np.asarray(c) * FLIP, r), d * FLIP)


def _symmetrise(f: _Fields, d: np.ndarray) -> np.ndarray:
    return 0.5 * (d + d[f.g.mirror_vertex] * FLIP)


def _rigid_eyes(f: _Fields, d: np.ndarray, scale_about_center: float = 0.0) -> np.ndarray:
    """Eyeballs move rigidly (mean displacement, optional scaling), and the skin of the eye
    opening follows its eyeball so identity changes never tear the lids off the eye."""
    d = d.copy()
    for p in (1, 2):
        m = f.part == p
        c = f.v[m].mean(0)
        rigid = d[m].mean(0)
        d[m] = rigid + scale_about_center * (f.v[m] - c)
        dist = np.linalg.norm(f.v - c, axis=-1)
        follow = (1.0 - pg.smoothstep(pg.EYE_RADIUS + 0.004, pg.EYE_RADIUS + 0.016, dist)) * f.skin
        target = rigid + scale_about_center * (f.v - c)
        d = d + follow[:, None] * (target - d)
    return d


def shape_fields(f: _Fields, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    v, x, y, z = f.v, f.v[:, 0], f.v[:, 1], f.v[:, 2]
    head = pg.smoothstep(-0.16, -0.09, y)
    eye_c = pg.EYE_CENTER
    mouth_c = np.array([0.0, pg.MOUTH_Y, 0.08])
    chin = np.array([0.0, -0.088, 0.07])
    out = []

    def add(name, d, eye_scale=0.0):
        out.append((name, _rigid_eyes(f, d, eye_scale)))

    add("head_width", np.stack([0.05 * x * head, 0 * x, 0 * x], -1))
    add("head_height", np.stack([0 * x, 0.04 * y * head, 0 * x], -1))
    add("head_depth", np.stack([0 * x, 0 * x, 0.04 * (z + 0.01) * head], -1))
    add("cranium_size", 0.004 * f.n * pg.smoothstep(0.03, 0.09, y)[:, None])
    add("forehead_slope", f.vec(pg.smoothstep(0.045, 0.12, y) * (z > 0.0), [0, 0, -0.006]))
    jaw_zone = pg.smoothstep(-0.02, -0.06, y) * pg.smoothstep(-0.03, 0.01, z) * head
    add("jaw_width", np.stack([0.08 * x * jaw_zone, 0 * x, 0 * x], -1))
    add("chin_length", f.vec(f.gauss(chin, 0.025), [0, -0.005, 0.0]))
    add("chin_protrusion", f.vec(f.gauss(chin, 0.025), [0, 0, 0.005]))
    add("cheekbone_width", f.paired([0.052, 0.012, 0.046], 0.018, [0.004, 0, 0]))
    add("cheek_fullness", 0.004 * f.n * f.gauss([0.044, -0.02, 0.058], 0.02, mirrored=True)[:, None])
    add("nose_length", f.vec(f.gauss([0, -0.008, 0.104], 0.016), [0, -0.004, 0.0]))
    add("nose_protrusion", f.vec(f.gauss([0, -0.004, 0.104], 0.018), [0, 0, 0.005]))
    add("nose_width", f.paired([0.012, -0.014, 0.094], 0.01, [0.003, 0, 0]))
    add("nose_bridge", f.vec(f.gauss([0, 0.025, 0.092], 0.012), [0, 0, 0.003]))
    add("eye_spacing", f.paired(eye_c, 0.02, [0.003, 0, 0]))
    add("eye_height", f.paired(eye_c, 0.022, [0, 0.003, 0]))
    w_eye = f.gauss(eye_c, 0.018, mirrored=True)
    ctr = np.where(x[:, None] >= 0, eye_c, eye_c * FLIP)
    add("eye_size", 0.08 * (v - ctr) * w_eye[:, None], eye_scale=0.08)
    add("eye_depth", f.paired(eye_c, 0.02, [0, 0, -0.003]))
    add("brow_prominence", f.paired([0.03, 0.048, 0.074], 0.015, [0, 0, 0.003]))
    add("brow_height", f.paired([0.03, 0.048, 0.074], 0.016, [0, 0.003, 0]))
    w_m = f.gauss(mouth_c, 0.022)
    add("mouth_width", np.stack([0.12 * x * w_m, 0 * x, 0 * x], -1))
    add("upper_lip_fullness", f.vec(f.gauss(mouth_c + [0, 0.008, 0.0], 0.01) * f.upper, [0, 0, 0.0025]))
    add("lower_lip_fullness", f.vec(f.gauss(mouth_c - [0, 0.008, 0.0], 0.01) * f.lower, [0, 0, 0.0025]))
    add("mouth_height", f.vec(f.gauss(mouth_c, 0.03), [0, 0.004, 0]))
    ear = ((f.part == 3) | (f.part == 4)).astype(np.float64)
    ear_c = np.where(x[:, None] >= 0, f.v[f.part == 3].mean(0), f.v[f.part == 4].mean(0))
    add("ear_size", 0.12 * (v - ear_c) * ear[:, None])
    add("ear_protrusion", np.stack([f.sign * 0.003 * ear * np.clip((np.abs(x) - 0.07) / 0.01, 0, 2), 0 * x, 0 * x], -1))
    add("ear_height", f.vec(ear, [0, 0.004, 0]))
    neck = pg.smoothstep(-0.07, -0.12, y) * f.skin
    add("neck_width", 0.1 * np.stack([x, 0 * x, z - pg.AXIS_Z], -1) * neck[:, None])
    lower_face = pg.smoothstep(0.0, -0.03, y) * pg.smoothstep(-0.13, -0.10, y) * pg.smoothstep(-0.02, 0.02, z)
    add("face_length", f.vec(lower_face * np.clip(-y / 0.09, 0, 1.2), [0, -0.006, 0]))
    add("temple_width", f.paired([0.066, 0.05, 0.02], 0.025, [0.003, 0, 0]))
    add("occiput", f.vec(f.gauss([0.0, 0.02, -0.115], 0.04), [0, 0, -0.005]))
    add("face_flatness", f.vec(f.gauss([0.0, 0.0, 0.1], 0.04), [0, 0, -0.004]))
    add("jaw_angle", f.paired([0.055, -0.07, -0.005], 0.02, [0.004, 0, 0]))
    add("philtrum_length", f.vec(f.gauss([0, pg.MOUTH_Y + 0.016, 0.088], 0.008), [0, 0.002, 0]))
    add("eyelid_fold", 0.0015 * f.n * f.gauss(eye_c + [0, 0.011, 0.012], 0.005, mirrored=True)[:, None])
    add("under_eye", 0.002 * f.n * f.gauss(eye_c + [0, -0.014, 0.01], 0.008, mirrored=True)[:, None])
    # Residual identity detail: symmetric multi-scale bumps over the skin and ears, then a few
    # antisymmetric ones (real faces are not perfectly symmetric).
    skin_ids = np.nonzero(f.skin | (f.part == 3))[0]
    radii = [0.04, 0.03, 0.022, 0.016, 0.011]
    centres = _spaced_centres(f, skin_ids, radii, 112 - len(out), rng)
    for k, (c, r) in enumerate(centres):
        amp = 0.0015 * (r / 0.04) ** 0.5
        d = amp * rng.standard_normal() * f.n * f.gauss(c, r)[:, None]
        d = _symmetrise(f, d) if len(out) < 104 else 0.5 * (d - d[f.g.mirror_vertex] * FLIP)
        out.append((f"identity_residual_{k:02d}", _rigid_eyes(f, d)))
    return out


def _spaced_centres(f: _Fields, ids: np.ndarray, radii: list[float], count: int, rng) -> list:
    """Bump centres cycling through `radii`, each at least r from earlier centres of the same
    radius and from their mirror images (a symmetrised bump equals its mirrored twin)."""
    placed: dict[float, list[np.ndarray]] = {r: [] for r in radii}
    out = []
    for k in range(count):
        r = radii[k % len(radii)]
        for _ in range(1000):
            c = f.v[rng.choice(ids)]
            prev = placed[r]
            if not prev or min(min(np.linalg.norm(c - q), np.linalg.norm(c * FLIP - q)) for q in prev) > 1.5 * r:
                break
        else:
            raise RuntimeError(f"could not place {count} bumps of radius {r}")
        placed[r].append(c)
        out.append((c, r))
    return out


def _close_lid(f: _Fields, side: float, lower_only: bool = False, strength: float = 1.0):
    """Pulls the skin inside the eye opening onto a shell just outside the eyeball (a closed lid)."""
    c = pg.EYE_CENTER * np.array([side, 1.0, 1.0])
    rel = f.v - c
    dist = np.linalg.norm(rel, axis=-1)
    shell = pg.EYE_RADIUS + 0.0018
    target = c + rel / np.maximum(dist, 1e-9)[:, None] * np.maximum(dist, shell)[:, None]
    # Only skin in front of the eyeball, near the opening, on this side.
    near = f.gauss(c + [0.0, 0.0, 0.012], 0.011) * f.skin * (f.v[:, 0] * side > 0)
    near = np.clip(1.6 * near, 0.0, 1.0)
    if lower_only:
        near = near * pg.smoothstep(c[1] + 0.003, c[1] - 0.004, f.v[:, 1])
    d = (target - f.v) * (near * strength)[:, None]
    # The upper lid slides down as it closes.
    upper = pg.smoothstep(c[1] - 0.002, c[1] + 0.008, f.v[:, 1]) * near
    return d + f.vec(upper * strength * (0 if lower_only else 1), [0, -0.0025, 0])


def expression_fields(f: _Fields, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    eye_c = pg.EYE_CENTER
    my = pg.MOUTH_Y
    mouth_c = np.array([0.0, my, 0.08])
    corner = np.array([pg.MOUTH_HALF_WIDTH, my, 0.074])
    out = []
    face = f.skin.astype(np.float64)

    def add(name, d):
        d = d * face[:, None] if name != "tongue_out" else d
        d[(f.part == 1) | (f.part == 2)] = 0.0
        out.append((name, d))

    def lr(name, fn):
        for side, tag in ((1.0, "left"), (-1.0, "right")):
            add(f"{name}_{tag}", fn(side))

    def at(c, side):
        return np.asarray(c, np.float64) * np.array([side, 1.0, 1.0])

    brow_in = [0.014, 0.052, 0.08]
    brow_out = [0.042, 0.049, 0.07]
    add("brow_raise_inner", f.paired(brow_in, 0.013, [0, 0.006, 0]))
    lr("brow_raise_outer", lambda s: f.vec(f.gauss(at(brow_out, s), 0.015), [0, 0.005, 0]))
    add("brow_furrow", f.paired(brow_in, 0.012, [-0.003, -0.003, 0.001]))
    lr("brow_lower", lambda s: f.vec(f.gauss(at([0.03, 0.05, 0.074], s), 0.016), [0, -0.004, 0]))
    lr("eye_blink", lambda s: _close_lid(f, s))
    lr("eye_squint", lambda s: _close_lid(f, s, lower_only=True, strength=0.6)
       + f.vec(f.gauss(at(eye_c + [0, -0.016, 0.008], s), 0.01), [0, 0.002, 0]))
    lr("eye_wide", lambda s: f.vec(f.gauss(at(eye_c + [0, 0.009, 0.012], s), 0.007), [0, 0.0025, 0.0005]))
    lr("cheek_raise", lambda s: f.vec(f.gauss(at([0.04, -0.01, 0.064], s), 0.016), [0, 0.004, 0.002]))
    add("cheek_puff", 0.008 * f.n * f.gauss([0.038, my + 0.004, 0.058], 0.017, mirrored=True)[:, None])
    add("cheek_suck", -0.005 * f.n * f.gauss([0.040, my + 0.006, 0.056], 0.013, mirrored=True)[:, None])
    add("nose_wrinkle", f.paired([0.011, 0.018, 0.09], 0.009, [0, 0.003, 0.001]))
    add("nostril_flare", f.paired([0.013, -0.014, 0.094], 0.007, [0.0022, 0, 0]))
    lr("smile", lambda s: f.vec(f.gauss(at(corner, s), 0.012), [0.005 * s, 0.006, -0.003]))
    lr("frown", lambda s: f.vec(f.gauss(at(corner, s), 0.011), [0.001 * s, -0.005, 0]))
    lr("dimple", lambda s: -0.003 * f.n * f.gauss(at([0.031, my, 0.068], s), 0.006)[:, None])
    lr("upper_lip_raise", lambda s: f.vec(f.gauss(at([0.01, my + 0.006, 0.086], s), 0.01) * f.upper, [0, 0.004, 0.001]))
    lr("lower_lip_depress", lambda s: f.vec(f.gauss(at([0.01, my - 0.008, 0.084], s), 0.01) * f.lower, [0, -0.004, 0.001]))
    # Mouth fields get distinct spatial supports so none is a combination of the others.
    w_m = f.gauss(mouth_c, 0.016)
    w_pucker = f.gauss(mouth_c + [0, 0, 0.004], 0.013)
    w_lip_u = f.gauss(mouth_c + [0, 0.0065, 0.004], 0.009) * f.upper
    w_lip_l = f.gauss(mouth_c - [0, 0.0075, -0.003], 0.009) * f.lower
    w_contact = f.gauss(mouth_c + [0, 0, 0.006], 0.007)
    add("lip_pucker", np.stack([-0.3 * f.v[:, 0] * w_pucker, 0 * w_m, 0.007 * w_pucker], -1))
    add("lip_funnel", np.stack([-0.15 * f.v[:, 0] * (w_lip_u + w_lip_l), 0.004 * (w_lip_u - w_lip_l),
                                0.004 * (w_lip_u + w_lip_l)], -1))
    add("lip_press", np.stack([0 * w_m, 0.0015 * w_contact * (f.lower - f.upper), -0.0025 * w_contact], -1))
    lr("lip_stretch", lambda s: f.vec(f.gauss(at(corner, s), 0.012), [0.005 * s, -0.001, -0.002]))
    add("lip_suck_upper", f.vec(f.gauss(mouth_c + [0, 0.006, 0.004], 0.01) * f.upper, [0, -0.002, -0.005]))
    add("lip_suck_lower", f.vec(f.gauss(mouth_c - [0, 0.006, -0.004], 0.01) * f.lower, [0, 0.002, -0.005]))
    # One signed component: positive moves the mouth to the subject's left, negative to the right.
    add("mouth_left_right", f.vec(f.gauss(mouth_c, 0.022), [0.006, 0, 0]))
    add("chin_raise", f.vec(f.gauss([0, -0.08, 0.07], 0.02), [0, 0.004, 0.001]))
    add("lips_part", f.vec(w_contact * f.upper, [0, 0.003, 0]) + f.vec(w_contact * f.lower, [0, -0.004, 0]))
    w_bare_u = f.gauss(mouth_c + [0, 0.01, 0.0], 0.014) * f.upper
    w_bare_l = f.gauss(mouth_c - [0, 0.012, 0.0], 0.014) * f.lower
    add("bared_teeth", f.vec(w_bare_u, [0, 0.007, 0.001]) + f.vec(w_bare_l, [0, -0.007, 0.001])
        + np.stack([0.12 * f.v[:, 0] * (w_bare_u + w_bare_l), 0 * w_m, 0 * w_m], -1))
    add("jaw_forward", f.vec(f.lower * f.skin, [0, 0, 0.005]))
    tongue = (f.part == 8).astype(np.float64)
    tip = pg.smoothstep(0.03, 0.066, f.v[:, 2]) * tongue
    add("tongue_out", f.vec(tip, [0, 0.002, 0.02]))
    add("neck_tense", 0.002 * f.n * (pg.smoothstep(-0.09, -0.12, f.v[:, 1]) * (f.v[:, 2] > 0.0))[:, None])
    # Residual local detail over the face skin.
    face_ids = np.nonzero(f.skin & (f.v[:, 2] > 0.03) & (f.v[:, 1] > -0.11))[0]
    for k, (c, r) in enumerate(_spaced_centres(f, face_ids, [0.016, 0.012], 64 - len(out), rng)):
        d = 0.002 * f.n * f.gauss(c, r)[:, None] + f.vec(f.gauss(c, r), 0.0015 * rng.standard_normal(3))
        add(f"expression_residual_{k:02d}", d)
    return out


def orthogonal_basis(fields: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Symmetric (Löwdin) orthogonalisation, columns rescaled to their source norms and sorted by
    norm (largest first, like PCA). Returns the basis [V,3,K], the names, and the retained
    fraction q_k·d_k/|d_k| (1 = the component is exactly its named field)."""
    names = tuple(n for n, _ in fields)
    mat = np.stack([d.reshape(-1) for _, d in fields], 1)  # [3V, K]
    norms = np.linalg.norm(mat, axis=0)
    if np.any(norms == 0):
        raise ValueError(f"empty basis fields: {[n for n, s in zip(names, norms) if s == 0]}")
    u, sv, vt = np.linalg.svd(mat / norms, full_matrices=False)
    if sv.min() < 1e-3 * sv.max():
        raise ValueError("basis fields are (nearly) linearly dependent; remove redundant fields")
    q = u @ vt
    retained = np.sum(q * (mat / norms), axis=0)
    order = np.argsort(-norms, kind="stable")
    basis = (q * norms)[:, order].reshape(*fields[0][1].shape, len(fields))
    return basis, tuple(names[i] for i in order), retained[order]


def pose_correctives(g: pg.Geometry, weights: np.ndarray) -> np.ndarray:
    """posedirs [V,3,36]: jaw opening restores cheek volume, neck rotations restore neck girth.

    Pose features are (R_j - I) flattened for joints 1..4, so joint k, entry (a,b) is column
    (k-1)*9 + 3a + b. A jaw opening by angle t about +x has R[2,1] = sin t.
    """
    v = g.vertices
    n = vertex_normals(v, g.faces)
    skin = g.part_of_vertex == 0
    posedirs = np.zeros((len(v), 3, 36))
    jaw = weights[:, 2]
    blend_jaw = 4.0 * jaw * (1.0 - jaw) * skin
    posedirs[:, :, 9 + 7] = 0.006 * n * blend_jaw[:, None]
    head = weights[:, 1] + weights[:, 2]
    blend_neck = 4.0 * head * (1.0 - head) * skin
    radial = np.stack([v[:, 0], np.zeros(len(v)), v[:, 2] - pg.AXIS_Z], -1)
    radial /= np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-9)
    # (cos t - 1) <= 0 for yaw (entries 00, 22) and pitch (11, 22): a negative column pushes out.
    posedirs[:, :, 0] = -0.03 * radial * blend_neck[:, None]
    posedirs[:, :, 4] = -0.03 * radial * blend_neck[:, None]
    return posedirs


def build_bases(g: pg.Geometry, weights: np.ndarray, seed: int = 20261121):
    rng = np.random.default_rng(seed)
    f = _Fields(g, jaw_weight=weights[:, 2])
    shapedirs, shape_names, shape_kept = orthogonal_basis(shape_fields(f, rng))
    exprdirs, expr_names, expr_kept = orthogonal_basis(expression_fields(f, rng))
    return dict(
        shapedirs=shapedirs, shape_names=shape_names, shape_retained=shape_kept,
        exprdirs=exprdirs, expression_names=expr_names, expression_retained=expr_kept,
        posedirs=pose_correctives(g, weights),
    )
