"""Landmark embedding: where a face detector's 2D landmarks sit on the head model's mesh.

A `LandmarkEmbedding` gives, per landmark of a detector's scheme, a mesh face and barycentric
coordinates on it (so the landmark's 3D point follows shape, expression and pose exactly as the
mesh does), a weight, and for the jaw *contour* a set of candidate surface points from which the
tracker picks the one on the current silhouette (`tracking.py`).

The scheme is dlib's 68-point iBUG 300-W markup (`IBUG68`): 0-16 jaw contour from the subject's
right ear (image left in a frontal photo) over the chin to the left; 17-21 and 22-26 the right
and left brows (outer -> inner, inner -> outer); 27-30 the nose bridge down to the tip; 31-35 the
nose base; 36-41 and 42-47 the right and left eyes (corner, upper lid, corner, lower lid); 48-59
the outer lip contour and 60-67 the inner one, both clockwise in the image from the right corner.

**How the embedding of the procedural head is derived** (`derive_procedural_embedding`, stored in
`flexavatar_jax/data/assets/landmarks_ibug68_procedural.npz`, rebuilt by
`python -m flexavatar_jax.data.landmarks`): semantically, from the features the procedural head
is built from, not from a detector. Each landmark's definition in the iBUG markup (eye corners and
lid margins, brow arcs, nose tip and base, lip corners, vermilion border, lip contact line) is
located on the neutral template with orthographic rays cast along -z: the eye corners and lids
are read off the outline of the visible eyeball in that frontal view (the palpebral opening as
built), the brows off the arc where the synthetic texture paints them (`appearance.py`), the lip
contour off the painted vermilion band and the mouth slit; only the +x half is placed, the other
half is its exact mirror image (`mirror_face`, barycentrics matched corner by corner). Why not from detections:
the detector's landmarks on our synthetic renders are biased by what it has never seen (painted
beards pull the mouth points, for one), so averaging detections would bake that bias into the
asset and into every real-video fit; the semantic placement is exact for our head, deterministic,
and the detector is then *measured* against it (`experiments/bench_track.py`).

**Jaw contour (0-16)**: the detector puts these on the visible outline of the cheeks and chin,
which slides over the surface as the head turns, so they are handled *dynamically*: each has
`CONTOUR_CANDIDATES` surface points along a curve that runs from the front of the face around
the outline towards the back (the outermost skin crossings of rays swept in a plane through an
axis inside the lower face; the curves pointing down end at the jaw's lower border, where the
jaw's skinning weight falls below 1/2: the procedural chin runs on into the neck with no
occluding edge); the tracker takes the point where that curve crosses the occluding contour
(where the surface normal turns away from the camera, interpolated between candidates), or the
curve's end (the jaw border) where it never does, and weights these landmarks `CONTOUR_WEIGHT`
(they are noisier and our jaw is a generic one). The static face/barycentrics stored for them
are the candidates chosen in the neutral, frontal orthographic view.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import sys

import numpy as np
from jaxtyping import Float, Int

from flexavatar_jax.files import read_npz, write_atomic

IBUG68 = "ibug68"
NUM_IBUG68 = 68
ASSET_DIR = pathlib.Path(__file__).resolve().parent / "assets"
CONTOUR_CANDIDATES = 32
CONTOUR_WEIGHT = 0.5
EMBEDDING_VERSION = 1

# Left-right mirror permutation of the iBUG 68 markup (0-based).
_MIRROR_PAIRS = ([(i, 16 - i) for i in range(8)] + [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35),
                 (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (49, 53),
                 (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)])
IBUG68_MIRROR = np.arange(NUM_IBUG68)
for _a, _b in _MIRROR_PAIRS:
    IBUG68_MIRROR[_a], IBUG68_MIRROR[_b] = _b, _a
IBUG68_CONTOUR = np.arange(17)
# Named groups (for per-group errors and weights).
IBUG68_GROUPS = {
    "jaw": np.arange(0, 17), "brows": np.arange(17, 27), "nose": np.arange(27, 36), "eyes": np.arange(36, 48),
    "outer_lips": np.arange(48, 60), "inner_lips": np.arange(60, 68),
}


@dataclasses.dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks of `scheme` on a mesh with `num_vertices`/`num_faces` and face-array fingerprint
    `mesh_fingerprint` (`mesh_fingerprint(faces)`: a mismatched head model is rejected).

    * `face_index [L]`, `barycentrics [L,3]`: each landmark's point on the mesh (contour ones: the
      neutral frontal silhouette point);
    * `weights [L]`: relative confidence in the fit (0 drops a landmark);
    * `contour [C]`: indices of the dynamic contour landmarks (may be empty), with
      `contour_face_index [C,K]`, `contour_barycentrics [C,K,3]`: candidate surface points ordered
      from the front of the face towards the back, and `contour_level [C]`: the landmark is where
      the candidates' facing (unit normal · unit direction to the camera) first drops to this
      level (0: the occluding contour).
    """

    scheme: str
    face_index: Int[np.ndarray, " L"]
    barycentrics: Float[np.ndarray, "L 3"]
    weights: Float[np.ndarray, " L"]
    contour: Int[np.ndarray, " C"]
    contour_face_index: Int[np.ndarray, "C K"]
    contour_barycentrics: Float[np.ndarray, "C K 3"]
    contour_level: Float[np.ndarray, " C"]
    num_vertices: int
    num_faces: int
    mesh_fingerprint: str
    method: str = ""

    @property
    def num_landmarks(self) -> int:
        return len(self.face_index)

    def validate(self) -> "LandmarkEmbedding":
        l, c = len(self.face_index), len(self.contour)
        checks = {"barycentrics": (self.barycentrics, (l, 3)), "weights": (self.weights, (l,)),
                  "contour_face_index": (self.contour_face_index, (c, None)),
                  "contour_barycentrics": (self.contour_barycentrics, (c, None, 3)),
                  "contour_level": (self.contour_level, (c,))}
        for name, (a, shape) in checks.items():
            got = np.shape(a)
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                raise ValueError(f"landmark embedding: {name} has shape {got}, expected {shape} (L={l}, C={c})")
        if c and self.contour_face_index.shape[1] < 2:
            raise ValueError("landmark embedding: the contour needs at least 2 candidates per landmark")
        for name, idx, n in (("face_index", self.face_index, self.num_faces),
                             ("contour_face_index", self.contour_face_index, self.num_faces),
                             ("contour", self.contour, l)):
            if np.size(idx) and (np.min(idx) < 0 or np.max(idx) >= n):
                raise ValueError(f"landmark embedding: {name} has indices outside [0, {n})")
        for name in ("barycentrics", "weights", "contour_barycentrics", "contour_level"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"landmark embedding: {name} contains NaN or Inf")
        if np.any(self.weights < 0) or not np.any(self.weights > 0):
            raise ValueError("landmark embedding: weights must be >= 0 and not all zero")
        return self

    def check_model(self, model) -> None:
        """ValueError unless `model` (a HeadModel) is the mesh this embedding was made for."""
        faces = np.asarray(model.faces)
        if (model.num_vertices, model.num_faces) != (self.num_vertices, self.num_faces) or \
                mesh_fingerprint(faces) != self.mesh_fingerprint:
            raise ValueError(f"the landmark embedding was made for another mesh ({self.num_vertices} vertices, "
                             f"{self.num_faces} faces, fingerprint {self.mesh_fingerprint}); head model "
                             f"{model.name!r} has {model.num_vertices} vertices, {model.num_faces} faces, "
                             f"fingerprint {mesh_fingerprint(faces)}: derive or load an embedding for it")

    def save(self, path: str | os.PathLike) -> None:
        self.validate()
        arrays = {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}
        write_atomic(path, lambda f: np.savez(f, version=np.int32(EMBEDDING_VERSION), **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandmarkEmbedding":
        path = pathlib.Path(path)
        raw = read_npz(path, "landmark embedding", "landmark embedding")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw and f.name != "method"]
        if missing:
            raise ValueError(f"{path}: landmark embedding is missing {missing} (has {sorted(raw)})")
        ints = ("face_index", "contour", "contour_face_index")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            a = raw[f.name]
            if f.name in ("scheme", "mesh_fingerprint", "method"):
                kwargs[f.name] = str(a)
            elif f.name in ("num_vertices", "num_faces"):
                kwargs[f.name] = int(a)
            else:
                kwargs[f.name] = a.astype(np.int32 if f.name in ints else np.float32)
        try:
            return cls(**kwargs).validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def mesh_fingerprint(faces: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(faces, np.int64)).tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- ray casting
def cast_rays(vertices: np.ndarray, faces: np.ndarray, origins: np.ndarray, directions: np.ndarray,
              outermost: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-triangle intersection (Möller-Trumbore, both sides) of rays `origins + t·directions`,
    t > 0 -> (face index [R] (-1: no hit), barycentrics [R,3], t [R]) of the nearest hit, or with
    `outermost` of the farthest one (the shrink-wrap rule of the procedural skin)."""
    v = np.asarray(vertices, np.float64)
    tri = v[np.asarray(faces)]  # [F,3,3]
    o = np.asarray(origins, np.float64)
    d = np.asarray(directions, np.float64)
    r = len(o)
    chunk = max(1, 2_000_000 // max(r, 1))  # rays x faces per block: bounded memory
    best_t = np.full(r, -np.inf if outermost else np.inf)
    best_f = np.full(r, -1, np.int64)
    best_b = np.zeros((r, 3))
    for start in range(0, len(tri), chunk):
        t0 = tri[start:start + chunk, 0]
        e1 = tri[start:start + chunk, 1] - t0
        e2 = tri[start:start + chunk, 2] - t0
        p = np.cross(d[:, None, :], e2[None])  # [R,Fc,3]
        det = np.einsum("fc,rfc->rf", e1, p)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = o[:, None, :] - t0[None]
        u = np.einsum("rfc,rfc->rf", s, p) * inv
        q = np.cross(s, e1[None])
        w = np.einsum("rc,rfc->rf", d, q) * inv
        t = np.einsum("fc,rfc->rf", e2, q) * inv
        hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 1e-9)
        tt = np.where(hit, t, -np.inf if outermost else np.inf)
        k = np.argmax(tt, axis=1) if outermost else np.argmin(tt, axis=1)
        tk = tt[np.arange(r), k]
        better = tk > best_t if outermost else tk < best_t
        best_t = np.where(better, tk, best_t)
        best_f = np.where(better, start + k, best_f)
        uk, wk = u[np.arange(r), k], w[np.arange(r), k]
        best_b = np.where(better[:, None], np.stack([1 - uk - wk, uk, wk], -1), best_b)
    miss = ~np.isfinite(best_t)
    best_f[miss] = -1
    return best_f, best_b, np.where(miss, np.nan, best_t)


def _frontal_hits(vertices, faces, face_ids, xy):
    """Orthographic rays along -z at `xy [R,2]` against the faces `face_ids` -> (global face [R],
    barycentrics [R,3], hit point [R,3]); raises if a ray misses (a derivation bug)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    origins = np.concatenate([xy, np.full((len(xy), 1), 1.0)], 1)
    dirs = np.tile([0.0, 0.0, -1.0], (len(xy), 1))
    f, b, _ = cast_rays(vertices, faces[face_ids], origins, dirs)
    if np.any(f < 0):
        raise RuntimeError(f"landmark derivation: frontal rays at {xy[f < 0].tolist()} miss the mesh")
    g = face_ids[f]
    return g, b, np.einsum("rk,rkc->rc", b, vertices[faces[g]])


def _near_faces(vertices, faces, face_ids, lo, hi):
    """Faces of `face_ids` whose xy bounding box overlaps the box [lo, hi] (a cheap prefilter)."""
    tri = vertices[faces[face_ids]][:, :, :2]
    keep = np.all(tri.max(1) >= lo, 1) & np.all(tri.min(1) <= hi, 1)
    return face_ids[keep]


# ---------------------------------------------------------------------------------------------- derivation
def _eye_outline(vertices, faces, part_faces, eye_part: int, skin_part: int = 0, step: float = 2.5e-4):
    """Visible eyeball of the +x eye in the frontal orthographic view of the neutral template:
    boolean grid [ny, nx] and its x, y axes (metres)."""
    from flexavatar_jax.head import procedural_geometry as pg

    cx, cy = pg.EYE_CENTER[0], pg.EYE_CENTER[1]
    xs = np.arange(cx - 0.024, cx + 0.024, step)
    ys = np.arange(cy - 0.014, cy + 0.014, step)
    gx, gy = np.meshgrid(xs, ys)
    cand = np.nonzero((part_faces == eye_part) | (part_faces == skin_part))[0]
    cand = _near_faces(vertices, faces, cand, np.array([xs[0], ys[0]]), np.array([xs[-1], ys[-1]]))
    xy = np.stack([gx.ravel(), gy.ravel()], -1)
    origins = np.concatenate([xy, np.ones((len(xy), 1))], 1)
    f, _, _ = cast_rays(vertices, faces[cand], origins, np.tile([0.0, 0.0, -1.0], (len(xy), 1)))
    visible = np.where(f >= 0, part_faces[cand[np.maximum(f, 0)]] == eye_part, False)
    return visible.reshape(gx.shape), xs, ys


def derive_procedural_embedding(model=None, arrays: dict | None = None) -> LandmarkEmbedding:
    """The iBUG-68 embedding of the procedural head, derived semantically (see the module
    docstring). `model`/`arrays` default to `load_procedural_head()`/`load_procedural_arrays()`."""
    from flexavatar_jax.head import procedural_geometry as pg
    from flexavatar_jax.head.procedural import load_procedural_arrays, load_procedural_head

    model = load_procedural_head() if model is None else model
    arrays = load_procedural_arrays() if arrays is None else arrays
    verts = np.asarray(model.v_template, np.float64)
    faces = np.asarray(model.faces)
    part = np.asarray(arrays["part_of_vertex"])
    # A face belongs to a part when all its corners do (parts never share vertices).
    part_faces = np.where(np.all(part[faces] == part[faces][:, :1], 1), part[faces][:, 0], -1)
    skin = np.nonzero(part_faces == 0)[0]
    left_eye_part = list(pg.PART_NAMES).index("left_eyeball")

    face_index = np.full(NUM_IBUG68, -1, np.int64)
    bary = np.zeros((NUM_IBUG68, 3))

    def place(ids, xy):
        g, b, _ = _frontal_hits(verts, faces, skin, np.asarray(xy))
        face_index[list(ids)] = g
        bary[list(ids)] = b

    # Eyes (+x = the subject's left = image right: 42 inner corner, 43-44 upper lid, 45 outer
    # corner, 46-47 lower lid), on the skin just outside the visible eyeball.
    vis, xs, ys = _eye_outline(verts, faces, part_faces, left_eye_part)
    cols = np.nonzero(vis.any(0))[0]
    x_in, x_out = xs[cols[0]], xs[cols[-1]]
    margin = 3e-4

    def lid(x, upper):
        c = int(np.argmin(np.abs(xs - x)))
        rows = np.nonzero(vis[:, c])[0]
        return ys[rows[-1]] + margin if upper else ys[rows[0]] - margin

    def corner_y(c):
        rows = np.nonzero(vis[:, c])[0]
        return 0.5 * (ys[rows[0]] + ys[rows[-1]])

    w = x_out - x_in
    place([42, 43, 44, 45, 46, 47], [
        (x_in - margin, corner_y(cols[0])), (x_in + w / 3, lid(x_in + w / 3, True)),
        (x_in + 2 * w / 3, lid(x_in + 2 * w / 3, True)), (x_out + margin, corner_y(cols[-1])),
        (x_in + 2 * w / 3, lid(x_in + 2 * w / 3, False)), (x_in + w / 3, lid(x_in + w / 3, False))])

    # Brows 22 (inner) .. 26 (outer): along the arc the synthetic texture paints
    # (appearance.py: centre line EYE_Y + 0.020 - 0.004·((|x| - EYE_X)/0.02)², a Gaussian band
    # of σ = 0.013 around |x| = EYE_X - 0.002), on its upper half like the iBUG markup.
    bx = np.linspace(0.015, 0.049, 5)
    by = pg.EYE_CENTER[1] + 0.020 - 0.004 * ((bx - pg.EYE_CENTER[0]) / 0.02) ** 2 + 0.0015
    place(range(22, 27), np.stack([bx, by], -1))

    # Nose: 30 = pronasale (the most forward point of the midline profile), 27 = between the
    # eyes at the upper-lid height, 28-29 evenly between; 33 = subnasale (the deepest point of the
    # midline profile between the tip and the upper lip), 34-35 along the nose base to the ala.
    prof_y = np.linspace(-0.040, 0.045, 341)
    _, _, prof = _frontal_hits(verts, faces, _near_faces(verts, faces, skin, np.array([-1e-3, -0.041]),
                                                         np.array([1e-3, 0.046])),
                               np.stack([np.zeros_like(prof_y), prof_y], -1))
    tip = int(np.argmax(np.where((prof_y > -0.02) & (prof_y < 0.01), prof[:, 2], -np.inf)))
    y_tip = prof_y[tip]
    lip_top = pg.MOUTH_Y + 0.0135
    below = (prof_y < y_tip - 0.004) & (prof_y > lip_top)
    y_sub = prof_y[int(np.argmin(np.where(below, prof[:, 2], np.inf)))]
    y_nasion = pg.EYE_CENTER[1] + 0.006
    place([27, 28, 29, 30], [(0.0, y) for y in np.linspace(y_nasion, y_tip, 4)])
    place([33, 34, 35], [(0.0, y_sub), (0.0075, y_sub + 0.0008), (0.0145, y_sub + 0.0025)])

    # Mouth: the corner is the end of the lip-contact slit (the last vertex the upper and lower
    # lip share); the vermilion border follows the painted lip band (appearance.py:
    # lip_weight > ~0.5 reaches ±0.011-0.012 m at the centre, narrowing to the corners);
    # the inner contour lies on the contact line, on the upper (61-63) and lower (65-67) lip.
    mouth_row = (np.abs(verts[:, 1] - pg.MOUTH_Y) < 1e-6) & (part == 0) & (verts[:, 2] > 0.05)
    # Lower-lip twins of the slit come after the skin grid and its pole; the corner is the next
    # mouth-row vertex outwards of the outermost twin.
    twins = np.arange(len(verts)) > pg.N_ROWS * pg.N_COLS
    slit_x = float(np.max(np.abs(verts[mouth_row & twins, 0])))
    x_c = float(np.min(np.abs(verts[mouth_row & (np.abs(verts[:, 0]) > slit_x + 1e-6), 0])))
    hu, hl = 0.011, 0.012
    y0 = pg.MOUTH_Y
    place([54], [(x_c - 2e-4, y0 + 2e-4)])
    place([51, 52, 53], [(0.0, y0 + hu), (0.4 * x_c, y0 + 1.02 * hu), (0.75 * x_c, y0 + 0.6 * hu)])
    place([55, 56, 57], [(0.75 * x_c, y0 - 0.6 * hl), (0.4 * x_c, y0 - 0.95 * hl), (0.0, y0 - hl)])
    place([62, 63, 64], [(0.0, y0 + 6e-4), (0.5 * x_c, y0 + 6e-4), (0.88 * x_c, y0 + 3e-4)])
    place([65, 66], [(0.5 * x_c, y0 - 6e-4), (0.0, y0 - 6e-4)])

    # Jaw contour 8 (chin) .. 16 (left ear), dynamic: candidate curves in planes through a z-axis
    # through (0, Y_AXIS), at in-image angles evenly spaced along the frontal outline.
    jaw = list(model.joint_names).index("jaw")
    contour_f, contour_b, levels = _contour_candidates(verts, faces, skin, np.asarray(model.lbs_weights)[:, jaw])
    for k in range(8, 17):
        i = _crossing(_facing(verts, faces, contour_f[k - 8]), levels[k - 8])
        face_index[k], bary[k] = contour_f[k - 8, i], contour_b[k - 8, i]

    # Mirror the +x half onto the -x half (midline points map onto themselves).
    mirror = functools.partial(_mirror_points, faces, np.asarray(model.mirror_face), np.asarray(model.mirror_vertex))
    right = [i for i in range(NUM_IBUG68) if face_index[i] < 0]
    for i in right:
        j = IBUG68_MIRROR[i]
        face_index[i], bary[i] = mirror(face_index[j], bary[j])
    all_f = np.zeros((17, CONTOUR_CANDIDATES), np.int64)
    all_b = np.zeros((17, CONTOUR_CANDIDATES, 3))
    all_levels = np.concatenate([levels[::-1][:-1], levels])
    for k in range(17):
        if k >= 8:
            all_f[k], all_b[k] = contour_f[k - 8], contour_b[k - 8]
        else:
            all_f[k], all_b[k] = mirror(contour_f[16 - k - 8], contour_b[16 - k - 8])
    weights = np.ones(NUM_IBUG68)
    weights[IBUG68_CONTOUR] = CONTOUR_WEIGHT
    weights[27:30] = 0.5  # the bridge points slide along the nose in the markup
    return LandmarkEmbedding(
        scheme=IBUG68, face_index=face_index.astype(np.int32), barycentrics=bary.astype(np.float32),
        weights=weights.astype(np.float32), contour=IBUG68_CONTOUR.astype(np.int32),
        contour_face_index=all_f.astype(np.int32), contour_barycentrics=all_b.astype(np.float32),
        contour_level=all_levels.astype(np.float32), num_vertices=model.num_vertices, num_faces=model.num_faces, mesh_fingerprint=mesh_fingerprint(faces),
        method=f"semantic v{EMBEDDING_VERSION}: frontal rays at the procedural head's feature definitions",
    ).validate()


def _mirror_points(faces, mirror_face, mirror_vertex, face_index, bary):
    """(face, barycentrics) of the mirror images of surface points (any leading shape): the
    mirrored face's corners are the mirrored corners in some order, matched vertex by vertex."""
    face_index = np.asarray(face_index)
    g = mirror_face[face_index]
    source = mirror_vertex[faces[face_index]]  # [...,3]: the mirrored corners, in the source's order
    target = faces[g]  # [...,3]
    match = target[..., :, None] == source[..., None, :]  # [...,3 target, 3 source]
    if not np.all(match.sum(-1) == 1):
        raise RuntimeError("landmark derivation: mirror_face does not map corners onto mirrored corners")
    return g, np.einsum("...ts,...s->...t", match.astype(np.float64), np.asarray(bary, np.float64))


# The fan of contour planes: axis along z through (0, Y_AXIS, Z_AXIS); chin (k = 8) straight down,
# k = 16 (the top of the contour) where the outline reaches the lower-lid height.
Y_AXIS, Z_AXIS = -0.030, 0.045
CONTOUR_THETA_DEG = (5.0, 150.0)  # sweep from the front (0°) past the side (90°) towards the back


def _in_lips(p):
    from flexavatar_jax.head import procedural_geometry as pg

    return (np.abs(p[:, 0]) < pg.MOUTH_HALF_WIDTH + 0.012) & (p[:, 1] > pg.MOUTH_Y - 0.016)


def _sweep(verts, faces, skin, alpha, jaw_weight):
    """Candidate points of the contour plane at in-image angle `alpha` (0 = down, +pi/2 = +x):
    (faces [K], barycentrics [K,3], points [K,3]) of the outermost skin crossings of rays swept
    from the front over `CONTOUR_THETA_DEG`, starting below the lips. Planes pointing downwards
    stop at the lower border of the jaw (where the jaw's skinning weight `jaw_weight [V]` falls
    below 1/2: the mandible's edge, below which the procedural skin runs on into the neck with
    no occluding edge) or where the rays first leave through the open bottom of the neck."""
    n = np.array([np.sin(alpha), -np.cos(alpha), 0.0])
    origin = np.array([0.0, Y_AXIS, Z_AXIS])

    def cast(theta):
        dirs = np.cos(theta)[:, None] * np.array([0.0, 0.0, 1.0]) + np.sin(theta)[:, None] * n
        f, b, t = cast_rays(verts, faces[skin], np.tile(origin, (len(theta), 1)), dirs, outermost=True)
        return f, b, origin + t[:, None] * dirs

    dense = np.deg2rad(np.linspace(*CONTOUR_THETA_DEG, 4 * CONTOUR_CANDIDATES))
    f, b, p = cast(dense)
    ok = (f >= 0) & ~_in_lips(np.nan_to_num(p))
    first = int(np.argmax(ok))
    stop = f[first:] < 0
    if alpha < 0.5 * np.pi:
        w = np.einsum("rk,rk->r", b, jaw_weight[faces[skin[np.maximum(f, 0)]]])
        on_jaw = np.nonzero(w[first:] >= 0.5)[0]
        if len(on_jaw):
            stop |= (np.arange(len(dense) - first) > on_jaw[0]) & (w[first:] < 0.5)
    ends = np.nonzero(stop)[0]
    last = len(dense) - 1 if not len(ends) else first + int(ends[0]) - 1
    f, b, _ = cast(np.linspace(dense[first], dense[last], CONTOUR_CANDIDATES))
    if np.any(f < 0):
        raise RuntimeError("landmark derivation: a contour ray misses the skin")
    g = skin[f]
    return g, b, np.einsum("rk,rkc->rc", b, verts[faces[g]])


def _facing(verts, faces, cand_faces):
    """n̂_z of the candidates' faces: how much each faces a frontal orthographic camera."""
    tri = verts[faces[cand_faces]]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return normal[:, 2] / np.linalg.norm(normal, axis=1)


def _contour_level(facing: np.ndarray) -> float:
    """The facing level that defines the contour point of a candidate curve: 0, the occluding
    contour. A curve cut at the jaw's lower border before it turns away from the camera (the
    chin, seen from the front) never reaches it and takes its last candidate, the border; as the
    head turns, the crossing enters at that end, so the point moves continuously. (A level just
    above such a curve's minimum facing would make the choice jump between dips of the facing.)"""
    del facing
    return 0.0


def _crossing(facing: np.ndarray, level: float) -> int:
    """Index of the candidate nearest the first drop of `facing` to `level` from the front."""
    below = np.nonzero(facing <= level)[0]
    i = int(below[0]) if len(below) else len(facing) - 1
    return i if i == 0 or abs(facing[i] - level) < abs(facing[i - 1] - level) else i - 1


def _contour_candidates(verts, faces, skin, jaw_weight):
    """Candidate curves of contour landmarks 8..16 (+x side) and their facing levels: angles
    chosen so the frontal contour points are evenly spaced by arc length from the chin up to the
    lower-lid height."""
    from flexavatar_jax.head import procedural_geometry as pg

    y_top = pg.EYE_CENTER[1] - 0.006
    alphas = np.deg2rad(np.linspace(0.0, 150.0, 31))
    pts = []
    for a in alphas:
        f, _, p = _sweep(verts, faces, skin, a, jaw_weight)
        facing = _facing(verts, faces, f)
        pts.append(p[_crossing(facing, _contour_level(facing))])
    pts = np.asarray(pts)
    stop = int(np.nonzero(pts[:, 1] >= y_top)[0][0]) + 1
    # Arc length of the frontal outline (x, y) up to the first point at the top height.
    seg = np.linalg.norm(np.diff(pts[:stop, :2], axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    frac = (y_top - pts[stop - 2, 1]) / max(pts[stop - 1, 1] - pts[stop - 2, 1], 1e-12)
    end = arc[stop - 2] + frac * seg[stop - 2]
    targets = np.interp(np.linspace(0.0, end, 9), arc, alphas[:stop])
    out_f, out_b, levels = [], [], []
    for a in targets:
        f, b, _ = _sweep(verts, faces, skin, a, jaw_weight)
        out_f.append(f)
        out_b.append(b)
        levels.append(_contour_level(_facing(verts, faces, f)))
    return np.asarray(out_f), np.asarray(out_b), np.asarray(levels)


# ---------------------------------------------------------------------------------------------- assets
def asset_path(scheme: str = IBUG68, head: str = "procedural") -> pathlib.Path:
    return ASSET_DIR / f"landmarks_{scheme}_{head}.npz"


def procedural_embedding(model=None) -> LandmarkEmbedding:
    """The stored iBUG-68 embedding of the procedural head, or (when the procedural head has
    changed since the asset was derived) a fresh derivation, with a warning."""
    from absl import logging

    from flexavatar_jax.head.procedural import load_procedural_head

    model = load_procedural_head() if model is None else model
    path = asset_path()
    if path.is_file():
        emb = LandmarkEmbedding.load(path)
        try:
            emb.check_model(model)
            return emb
        except ValueError as e:
            logging.warning("%s; deriving the embedding afresh (run `python -m flexavatar_jax.data.landmarks` "
                            "to update the stored asset)", e)
    return derive_procedural_embedding(model)


def main(argv: list[str]) -> None:
    """`python -m flexavatar_jax.data.landmarks [OUT]`: derive the procedural head's embedding
    and store it (default: the package asset)."""
    out = pathlib.Path(argv[1]) if len(argv) > 1 else asset_path()
    emb = derive_procedural_embedding()
    emb.save(out)
    print(f"wrote {out} ({emb.num_landmarks} landmarks, {len(emb.contour)} dynamic contour points × "
          f"{emb.contour_face_index.shape[1]} candidates)")


if __name__ == "__main__":
    main(sys.argv)
