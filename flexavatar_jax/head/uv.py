"""UV toolkit: texel tables, UV position maps, relative scale, region masks, mirror map, sampling.

Texel convention (for every head model and resolution K): texel `(row, col)` of a `[K,K]` map has
its centre at `u = (col + 0.5) / K`, `v = 1 - (row + 0.5) / K` (v points up as in .obj files, rows
go down as in images). A texel is *valid* when its centre lies inside a UV triangle; its surface
point is that triangle's barycentric combination of 3D vertices.

Host-side tables (numpy) are built once per (model, K) and cached in memory; the maps computed
from vertices (`uv_position_map`, `interpolate_vertex_attribute`) are jnp, jit-able and
differentiable w.r.t. the vertices.
"""

from __future__ import annotations

import dataclasses
import hashlib

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from flexavatar_jax.head.mesh_ops import triangle_coverage
from flexavatar_jax.head.model import HeadModel

MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096


@dataclasses.dataclass(frozen=True)
class TexelTable:
    """`face [K,K]` (3D face index, -1 outside the charts), `bary [K,K,3]` (w.r.t. that face's
    corners), `valid [K,K]`; `num_overlapping` texels covered by more than one UV triangle (the
    first one wins; a clean layout has 0)."""

    face: Int[np.ndarray, "K K"]
    bary: Float[np.ndarray, "K K 3"]
    valid: Bool[np.ndarray, "K K"]
    num_overlapping: int

    @property
    def resolution(self) -> int:
        return self.face.shape[0]

    @property
    def coverage(self) -> float:
        """Fraction of the K×K texels that are valid."""
        return float(self.valid.mean())


_TABLE_CACHE: dict[tuple, TexelTable] = {}


def _model_key(model: HeadModel) -> str:
    h = hashlib.sha1()
    for a in (model.uv_coords, model.faces_uv, model.faces):
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, (int, np.integer)) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"UV resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}], got {resolution!r}")


def texel_table(model: HeadModel, resolution: int) -> TexelTable:
    """Texel -> (face, barycentric) table of `model`'s UV layout at `resolution`², cached."""
    _check_resolution(resolution)
    key = (_model_key(model), int(resolution))
    if key in _TABLE_CACHE:
        return _TABLE_CACHE[key]
    k = int(resolution)
    uv = np.asarray(model.uv_coords, np.float64)
    pts = uv[np.asarray(model.faces_uv)] * [k, -k] + [0.0, k]  # (u, v) -> image (x, y)
    face = np.full(k * k, -1, np.int64)
    bary = np.zeros((k * k, 3))
    hits = np.zeros(k * k, np.int64)
    for pixel, tri, b, _ in triangle_coverage(pts, np.ones(len(pts), bool), k, k):
        np.add.at(hits, pixel, 1)
        # Within a chunk keep the lowest face id per texel; across chunks the first chunk wins.
        order = np.lexsort((tri, pixel))
        pixel, tri, b = pixel[order], tri[order], b[order]
        first = np.ones(len(pixel), bool)
        first[1:] = pixel[1:] != pixel[:-1]
        pixel, tri, b = pixel[first], tri[first], b[first]
        new = face[pixel] < 0
        face[pixel[new]] = tri[new]
        bary[pixel[new]] = b[new]
    # A texel centre exactly on a shared edge is hit by both neighbours: that is not an overlap.
    table = TexelTable(face=face.reshape(k, k), bary=bary.reshape(k, k, 3), valid=(face >= 0).reshape(k, k),
                       num_overlapping=int(_count_overlaps(hits, bary, face)))
    _TABLE_CACHE[key] = table
    return table


def _count_overlaps(hits, bary, face) -> int:
    on_edge = np.any(bary <= 1e-9, axis=1)
    return int(np.sum((hits > 1) & ~on_edge & (face >= 0)))


def interpolate_vertex_attribute(
    table: TexelTable, faces: Int[Array, "F 3"], attribute: Float[Array, "V D"]
) -> Float[Array, "K K D"]:
    """Barycentric interpolation of a per-vertex attribute into UV (0 outside the charts).
    jit-able and differentiable w.r.t. `attribute`."""
    corners = jnp.asarray(faces)[jnp.asarray(np.maximum(table.face, 0))]  # [K,K,3]
    vals = jnp.asarray(attribute)[corners]  # [K,K,3,D]
    out = jnp.einsum("hwc,hwcd->hwd", jnp.asarray(table.bary, vals.dtype), vals)
    return jnp.where(jnp.asarray(table.valid)[..., None], out, 0.0)


def uv_position_map(model: HeadModel, vertices: Float[Array, "V 3"], resolution: int) -> Float[Array, "K K 3"]:
    """UV position map of any posed/expressed mesh of `model` (0 outside the charts)."""
    return interpolate_vertex_attribute(texel_table(model, resolution), model.faces, vertices)


def uv_skinning_weights(model: HeadModel, resolution: int) -> Float[Array, "K K J"]:
    """Barycentric LBS weights per texel (rows sum to 1 on valid texels)."""
    return interpolate_vertex_attribute(texel_table(model, resolution), model.faces, model.lbs_weights)


def face_area_ratio(model: HeadModel, vertices: Float[Array, "V 3"]) -> Float[Array, " F"]:
    """Per face, 3D triangle area / UV triangle area (UV in [0,1]² units); differentiable in
    `vertices`. Faces with degenerate UV use a 1e-20 floor for their UV area."""
    tri = jnp.asarray(vertices)[jnp.asarray(model.faces)]
    area3d = 0.5 * jnp.linalg.norm(jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    uv = np.asarray(model.uv_coords, np.float64)[np.asarray(model.faces_uv)]
    e1, e2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    area_uv = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    return area3d / jnp.asarray(np.maximum(area_uv, 1e-20), area3d.dtype)


def relative_scale_map(model: HeadModel, vertices: Float[Array, "V 3"], resolution: int) -> Float[Array, "K K"]:
    """Per texel, `face_area_ratio` of its face; 0 outside.

    `sqrt(ratio) / K` is the world-space edge length of one texel, the natural initial Gaussian
    scale for texel-sampled Gaussians (FHAvatar multiplies its scale map by this ratio)."""
    table = texel_table(model, resolution)
    per_texel = face_area_ratio(model, vertices)[jnp.asarray(np.maximum(table.face, 0))]
    return jnp.where(jnp.asarray(table.valid), per_texel, 0.0)


def uv_region_mask(model: HeadModel, resolution: int, *regions: str) -> Bool[np.ndarray, "K K"]:
    """Valid texels whose face belongs to any of the named regions."""
    table = texel_table(model, resolution)
    fm = model.face_mask(*regions)
    return table.valid & fm[np.maximum(table.face, 0)]


def texel_uv(resolution: int) -> Float[np.ndarray, "K K 2"]:
    """(u, v) of every texel centre."""
    c = (np.arange(resolution) + 0.5) / resolution
    u, v = np.meshgrid(c, 1.0 - c, indexing="xy")
    return np.stack([u, v], -1)


def uv_mirror_map(model: HeadModel, resolution: int) -> Int[np.ndarray, "K K 2"]:
    """(row, col) of the left-right mirrored texel of every valid texel; -1 where invalid.

    The mirrored surface point of texel t (face f, barycentrics b) is b applied to the matching
    corners of `mirror_face[f]` (corners are matched through `mirror_vertex`, since mirroring
    reverses the winding); its UV location gives the texel it falls in. For an exactly symmetric
    layout (the procedural head) this is the column flip `col -> K-1-col`.
    """
    table = texel_table(model, resolution)
    k = resolution
    faces = np.asarray(model.faces)
    faces_uv = np.asarray(model.faces_uv)
    uv = np.asarray(model.uv_coords, np.float64)
    mv = np.asarray(model.mirror_vertex)
    mf = np.asarray(model.mirror_face)
    out = np.full((k, k, 2), -1, np.int64)
    rows, cols = np.nonzero(table.valid)
    f = table.face[rows, cols]
    b = table.bary[rows, cols]
    g = mf[f]
    # For corner i of f, find which corner of g is its mirror image.
    mirrored_corners = mv[faces[f]]  # [n,3]
    match = mirrored_corners[:, :, None] == faces[g][:, None, :]  # [n,3(i),3(j)]
    if not np.all(match.any(-1)):
        raise ValueError(f"{model.name}: mirror_face and mirror_vertex disagree; cannot mirror UV texels")
    j = np.argmax(match, axis=-1)  # [n,3]
    uv_g = uv[faces_uv[g]]  # [n,3,2]
    uv_m = np.einsum("ni,nid->nd", b, np.take_along_axis(uv_g, j[..., None], axis=1))
    col = np.clip(np.floor(uv_m[:, 0] * k), 0, k - 1).astype(np.int64)
    row = np.clip(np.floor((1.0 - uv_m[:, 1]) * k), 0, k - 1).astype(np.int64)
    out[rows, cols, 0] = row
    out[rows, cols, 1] = col
    return out


@dataclasses.dataclass(frozen=True)
class UVSamples:
    """Surface samples for Gaussians: `face [N]`, `bary [N,3]`, `uv [N,2]`, `texel [N,2]` (row, col
    of the K×K texel each sample lies in), `dense [N]` True for the extra samples of dense regions."""

    face: Int[np.ndarray, " N"]
    bary: Float[np.ndarray, "N 3"]
    uv: Float[np.ndarray, "N 2"]
    texel: Int[np.ndarray, "N 2"]
    dense: Bool[np.ndarray, " N"]

    def __len__(self) -> int:
        return len(self.face)

    def interpolate(self, faces: Int[Array, "F 3"], attribute: Float[Array, "V D"]) -> Float[Array, "N D"]:
        corners = jnp.asarray(faces)[jnp.asarray(self.face)]
        return jnp.einsum("nc,ncd->nd", jnp.asarray(self.bary, attribute.dtype), jnp.asarray(attribute)[corners])

    def subset(self, mask: Bool[np.ndarray, " N"]) -> "UVSamples":
        return UVSamples(face=self.face[mask], bary=self.bary[mask], uv=self.uv[mask], texel=self.texel[mask],
                         dense=self.dense[mask])


def uv_jacobian(model: HeadModel, samples: UVSamples, vertices: Float[Array, "V 3"]):
    """Surface derivatives (dP/du, dP/dv) [N,3] each, at every sample's face (UV in [0,1] units),
    and the unit face normal [N,3]. From [e1 e2] = [dP/du dP/dv]·[d1 d2] with e the 3D and d the
    UV edges of the face; faces with degenerate UV get zero derivatives."""
    v = jnp.asarray(vertices)
    tri = v[jnp.asarray(model.faces)[jnp.asarray(samples.face)]]  # [N,3,3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    n = jnp.cross(e1, e2)
    n = n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-20)
    uv = np.asarray(model.uv_coords, np.float64)[np.asarray(model.faces_uv)[samples.face]]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    ok = np.abs(det) > 1e-20
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    c = lambda a: jnp.asarray(a[:, None], v.dtype)  # noqa: E731
    du = c(d2[:, 1] * inv) * e1 - c(d1[:, 1] * inv) * e2
    dv = c(d1[:, 0] * inv) * e2 - c(d2[:, 0] * inv) * e1
    return du, dv, n


def tangent_frames(model: HeadModel, samples: UVSamples, vertices: Float[Array, "V 3"]) -> Float[Array, "N 3 3"]:
    """Orthonormal surface frame at each sample, as matrix columns (t, b, n).

    n is the face normal (outward for CCW faces); t is the surface direction of increasing u
    (dP/du) made orthogonal to n; b = n × t. jit-able and differentiable w.r.t. `vertices`, so it
    gives the rotations of surface-attached Gaussians on any posed mesh.
    """
    du, _, n = uv_jacobian(model, samples, vertices)
    v = jnp.asarray(vertices)
    tri = v[jnp.asarray(model.faces)[jnp.asarray(samples.face)]]
    t = du - jnp.sum(du * n, -1, keepdims=True) * n
    t_norm = jnp.linalg.norm(t, axis=-1, keepdims=True)
    # Degenerate UV (dP/du parallel to n or zero) falls back to the first edge.
    e1 = tri[:, 1] - tri[:, 0]
    fallback = e1 - jnp.sum(e1 * n, -1, keepdims=True) * n
    t = jnp.where(t_norm > 1e-12, t, fallback)
    t = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-20)
    b = jnp.cross(n, t)
    return jnp.stack([t, b, n], axis=-1)


def sampling_grid(model: HeadModel, resolution: int, dense_regions: dict[str, int] | None = None) -> UVSamples:
    """One sample per valid texel, except in the regions of `dense_regions = {region: f}` (e.g.
    `{"scalp": 2}` for a denser hair grid), whose texels carry the f×f sub-texel grid instead: for
    odd f the texel's own centre is one of the f² sub-texel centres (kept as the coarse sample, the
    f² − 1 others are added); for even f no sub-texel centre coincides with it, so the coarse sample
    is dropped and all f² sub-texel samples are added."""
    _check_resolution(resolution)
    base = texel_table(model, resolution)
    rows, cols = np.nonzero(base.valid)
    faces = [base.face[rows, cols]]
    barys = [base.bary[rows, cols]]
    uvs = [texel_uv(resolution)[rows, cols]]
    texels = [np.stack([rows, cols], -1)]
    dense = [np.zeros(len(rows), bool)]
    for region, factor in (dense_regions or {}).items():
        if int(factor) != factor or factor < 1:
            raise ValueError(f"dense_regions[{region!r}] must be a positive integer factor, got {factor!r}")
        if factor == 1:
            continue
        fine_k = resolution * int(factor)
        _check_resolution(fine_k)
        fine = texel_table(model, fine_k)
        mask = uv_region_mask(model, fine_k, region)
        r, c = np.nonzero(mask)
        if factor % 2 == 1:  # skip the sub-texels at the coarse texel centres (already sampled)
            keep = ~((r % factor == factor // 2) & (c % factor == factor // 2))
            r, c = r[keep], c[keep]
        else:  # the fine samples replace the coarse sample of every texel they cover
            covered = np.zeros((resolution, resolution), bool)
            covered[r // factor, c // factor] = True
            stay = ~covered[texels[0][:, 0], texels[0][:, 1]]
            faces[0], barys[0], uvs[0], texels[0], dense[0] = (
                faces[0][stay], barys[0][stay], uvs[0][stay], texels[0][stay], dense[0][stay])
        faces.append(fine.face[r, c])
        barys.append(fine.bary[r, c])
        uvs.append(texel_uv(fine_k)[r, c])
        texels.append(np.stack([r // factor, c // factor], -1))
        dense.append(np.ones(len(r), bool))
    return UVSamples(face=np.concatenate(faces), bary=np.concatenate(barys), uv=np.concatenate(uvs),
                     texel=np.concatenate(texels), dense=np.concatenate(dense))

