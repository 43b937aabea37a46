"""Closed-form lift of image features into the head model's UV grid (Dual-UV's Core-UV and Shell-UV).

Shared by the projection lifters (`dual_uv.DualUVLifter`, `symmetric.SymmetricUVLifter`). For each
input view and each surface sample of the tracked head mesh:

1. **Surface samples.** One sample per valid texel of a UV grid `oversample` times finer than the
   output grid G (`head.uv.sampling_grid`), so every output texel gathers about `oversample²`
   samples. Their 3D points come from the posed mesh (`head.lbs`) by barycentric interpolation.
2. **Visibility** `m_i` (Dual-UV rasterises the proxy mesh; we z-buffer the samples themselves):
   in front of the camera (`z > near_plane`), inside the image, front-facing
   (`n · (c − p) > 0`, n the posed face normal, c the camera centre) and not hidden in a sample
   z-buffer. The z-buffer is a scatter-min (`.at[].min`) of the depths of *all* projectable samples
   into a coarse pixel grid (default: the patch-token grid, the resolution the features are read
   at, where the samples are dense enough that a front surface leaves no holes). A sample is
   visible when `z ≤ zbuffer(cell) + τ_i` with `τ_i = depth_tolerance + footprint_i·min(tan θ_i, 3)`:
   the cell's nearest sample can lie one cell footprint (`z·cell_px/f` metres) away on the *same*
   tilted surface (θ between normal and view ray), which a fixed tolerance would hide. The fixed
   part (default 5 mm) absorbs sampling noise; both stay well below the thickness of the occluders
   that matter at this resolution (the head ~20 cm, ears/nose). Thin layers closer than τ (lids
   over eyeballs, lips over teeth) are not resolved. Against the exact triangle z-buffer
   (`render.mesh.rasterize_mesh`) this agrees on 86-96 % of the samples (64² image, 8²-16² cells, G = 16-32).
3. **Feature lookup.** Bilinear interpolation of the view's patch-token map at the projected pixel;
   token (r, c) sits at the patch centre ((c + 0.5)·p, (r + 0.5)·p) in OpenCV pixel coordinates
   (pixel centres at +0.5, so pixel (0, 0) covers [0, 1)²); outside the outermost centres the border
   token is used.
4. **Kernel-weighted scatter** (Dual-UV, Core-UV):
   `Ũ(t) = Σ_i m_i k(Δuv_i,t) f_i / (Σ_i m_i k(Δuv_i,t) + ε)` with the tent (bilinear) kernel
   `k(Δ) = max(0, 1 − |Δu|·G/r)·max(0, 1 − |Δv|·G/r)` of radius r texels (default 1: each sample
   spreads over its 2×2 nearest texel centres with bilinear weights, a partition of unity). The
   coverage `Σ_i m_i k` is returned too, divided by `(oversample·r)²` so that a fully visible texel
   inside a chart has coverage ≈ 1.
5. **Multi-view blend** (Dual-UV): `U = Σ_v c_v U_v / (Σ_v c_v + ε)`, `c_v` the coverage of view v
   (0 for padding views), a linear blend in UV. The blended coverage is `Σ_v c_v`.
6. **Shell-UV**: the same projection of points extruded along the (vertex-interpolated) normal by
   `shell_offset` metres, on a coarser grid (G/2 by default); these points see what lies just off
   the surface (hair, the silhouette), and are tested against the z-buffer of the core surface.

The mesh geometry (tracked parameters, cameras) is treated as given: gradients flow to the patch
tokens, not through the visibility or the projection (`stop_gradient`). Host-side tables
(`SplatTable`) are numpy, built at trace time (~10 ms per grid); everything else is jnp and jit-able.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from flexavatar_jax.head import HeadModel, HeadParams, lbs
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.models.views import InputViews, Lifter
from flexavatar_jax.render.camera import camera_center, project_points

SCATTER_EPS = 1e-6  # Dual-UV's ε in Ũ = Σ m k f / (Σ m k + ε); also the multi-view blend's ε.
DEFAULT_DEPTH_TOLERANCE = 0.005  # metres; see the module docstring, step 2.
MAX_SLOPE = 3.0  # cap on tan(θ) in the slope allowance (θ ≈ 72°): grazing samples get no unbounded pass
DEFAULT_NEAR_PLANE = 0.01  # metres
DEFAULT_SHELL_OFFSET = 0.015  # metres off the surface, along the normal (Shell-UV)


@dataclasses.dataclass(frozen=True)
class SplatTable:
    """Host-side sample table for one output grid G.

    `face [N]`, `bary [N,3]`: the surface samples (one per valid texel of the `oversample·G` grid);
    `uv [N,2]` their UV positions; `texel_index [N,S]` the flattened output texels (row·G + col) of
    the S kernel taps of each sample and `kernel_weight [N,S]` the tent weights k(Δuv) (0 for taps
    off the grid). `coverage_norm = (oversample·r)²` makes a fully visible texel's coverage ≈ 1.
    """

    grid: int
    face: Int[np.ndarray, " N"]
    bary: Float[np.ndarray, "N 3"]
    uv: Float[np.ndarray, "N 2"]
    texel_index: Int[np.ndarray, "N S"]
    kernel_weight: Float[np.ndarray, "N S"]
    coverage_norm: float

    def __len__(self) -> int:
        return len(self.face)


def tent_taps(uv: Float[np.ndarray, "N 2"], grid: int, radius: float = 1.0
              ) -> tuple[Int[np.ndarray, "N S"], Float[np.ndarray, "N S"]]:
    """Flattened texel indices and tent-kernel weights of the (2⌈r⌉)² texels around each UV point.

    Texel (row, col) has its centre at u = (col + 0.5)/G, v = 1 − (row + 0.5)/G (`head.uv`)."""
    if radius <= 0:
        raise ValueError(f"kernel radius must be positive (texels), got {radius}")
    reach = int(math.ceil(radius))
    x = np.asarray(uv[:, 0], np.float64) * grid - 0.5  # continuous column
    y = (1.0 - np.asarray(uv[:, 1], np.float64)) * grid - 0.5  # continuous row
    offsets = np.arange(-reach + 1, reach + 1)
    cols = np.floor(x)[:, None] + offsets[None, :]  # [N, 2R]
    rows = np.floor(y)[:, None] + offsets[None, :]
    wx = np.maximum(0.0, 1.0 - np.abs(x[:, None] - cols) / radius)
    wy = np.maximum(0.0, 1.0 - np.abs(y[:, None] - rows) / radius)
    wx = np.where((cols >= 0) & (cols < grid), wx, 0.0)
    wy = np.where((rows >= 0) & (rows < grid), wy, 0.0)
    index = np.clip(rows, 0, grid - 1)[:, :, None] * grid + np.clip(cols, 0, grid - 1)[:, None, :]
    weight = wy[:, :, None] * wx[:, None, :]
    n = len(uv)
    return index.reshape(n, -1).astype(np.int32), weight.reshape(n, -1).astype(np.float32)


def splat_table(head: HeadModel, grid: int, oversample: int = 2, kernel_radius: float = 1.0) -> SplatTable:
    """Surface samples at `oversample·grid` resolution (at least 8, the UV toolkit's minimum) and
    their tent-kernel taps into the `grid`² output texels."""
    if grid < 1 or oversample < 1:
        raise ValueError(f"grid and oversample must be positive, got grid={grid}, oversample={oversample}")
    fine = max(uvt.MIN_RESOLUTION, grid * oversample)
    samples = uvt.sampling_grid(head, fine)
    index, weight = tent_taps(samples.uv, grid, kernel_radius)
    density = fine / grid  # samples per texel edge
    return SplatTable(grid=grid, face=samples.face, bary=samples.bary, uv=samples.uv, texel_index=index,
                      kernel_weight=weight, coverage_norm=float((density * kernel_radius) ** 2))


def kernel_scatter(
    features: Float[Array, "n d"],
    visible: Bool[Array, " n"] | Float[Array, " n"],
    texel_index: Int[Array, "n s"],
    kernel_weight: Float[Array, "n s"],
    grid: int,
    eps: float = SCATTER_EPS,
) -> tuple[Float[Array, "g g d"], Float[Array, "g g"]]:
    """Dual-UV's kernel-weighted average `Ũ = Σ m k f / (Σ m k + ε)` and the raw weight `Σ m k`.

    `visible` is m_i (bool or a soft weight in [0, 1]); features of invisible samples never enter
    (`where`, so NaN/Inf there cannot leak)."""
    d = features.shape[-1]
    m = visible.astype(kernel_weight.dtype) if visible.dtype == jnp.bool_ else visible
    w = jnp.where((m > 0)[:, None], m[:, None] * kernel_weight, 0.0)  # [n, s]
    f = jnp.where((m > 0)[:, None], features, 0.0)
    flat = texel_index.reshape(-1)
    weight_sum = jnp.zeros(grid * grid, w.dtype).at[flat].add(w.reshape(-1))
    weighted = (w[:, :, None] * f[:, None, :].astype(w.dtype)).reshape(-1, d)
    numerator = jnp.zeros((grid * grid, d), w.dtype).at[flat].add(weighted)
    uv = numerator / (weight_sum[:, None] + eps)
    return uv.reshape(grid, grid, d), weight_sum.reshape(grid, grid)


def bilinear_sample(
    feature_map: Float[Array, "hp wp d"], pixels: Float[Array, "n 2"], image_hw: tuple[int, int]
) -> Float[Array, "n d"]:
    """Bilinear lookup of a patch-token map at continuous pixel positions (x, y) of an H×W image.

    Token (r, c) sits at ((c + 0.5)·W/wp, (r + 0.5)·H/hp); positions beyond the outermost centres
    clamp to the border tokens."""
    hp, wp, d = feature_map.shape
    height, width = image_hw
    fx = pixels[:, 0] * (wp / width) - 0.5
    fy = pixels[:, 1] * (hp / height) - 0.5
    x0, y0 = jnp.floor(fx), jnp.floor(fy)
    ax, ay = fx - x0, fy - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    flat = feature_map.reshape(hp * wp, d)

    def tap(r, c):
        return flat[jnp.clip(r, 0, hp - 1) * wp + jnp.clip(c, 0, wp - 1)]

    ax, ay = ax[:, None].astype(flat.dtype), ay[:, None].astype(flat.dtype)
    return ((1 - ay) * ((1 - ax) * tap(y0, x0) + ax * tap(y0, x0 + 1))
            + ay * ((1 - ax) * tap(y0 + 1, x0) + ax * tap(y0 + 1, x0 + 1)))


def buffer_cells(pixels: Float[Array, "n 2"], image_hw: tuple[int, int],
                 buffer_hw: tuple[int, int]) -> Int[Array, " n"]:
    """Flattened cell (row·bw + col) of a `buffer_hw` grid over the H×W image holding each pixel."""
    height, width = image_hw
    bh, bw = buffer_hw
    col = jnp.clip(jnp.floor(pixels[:, 0] * (bw / width)), 0, bw - 1).astype(jnp.int32)
    row = jnp.clip(jnp.floor(pixels[:, 1] * (bh / height)), 0, bh - 1).astype(jnp.int32)
    return row * bw + col


def depth_buffer(
    pixels: Float[Array, "n 2"], depth: Float[Array, " n"], writes: Bool[Array, " n"],
    image_hw: tuple[int, int], buffer_hw: tuple[int, int],
) -> Float[Array, "bh bw"]:
    """Scatter-min of sample depths into a `buffer_hw` grid over the image (inf where empty).
    Samples with `writes` False leave no trace."""
    cell = buffer_cells(pixels, image_hw, buffer_hw)
    buf = jnp.full(buffer_hw[0] * buffer_hw[1], jnp.inf, depth.dtype)
    return buf.at[cell].min(jnp.where(writes, depth, jnp.inf)).reshape(buffer_hw)


class Projected(NamedTuple):
    """`pixels [n,2]` (0 where not projectable), `depth [n]` camera z (metres), `candidate [n]` in
    front of the near plane and inside the image (these write the z-buffer), `facing [n]` the
    cosine between the normal and the direction to the camera (> 0: front-facing)."""

    pixels: Array
    depth: Array
    candidate: Array
    facing: Array


def project_samples(
    points: Float[Array, "n 3"], normals: Float[Array, "n 3"], viewmat: Float[Array, "4 4"],
    K: Float[Array, "3 3"], image_hw: tuple[int, int], near_plane: float = DEFAULT_NEAR_PLANE,
) -> Projected:
    """Project surface samples (unit `normals`) into one view; per-sample tests, no z-buffer yet."""
    height, width = image_hw
    pix, z = project_points(points, viewmat, K)
    in_front = z > near_plane
    pix = jnp.where(in_front[:, None] & jnp.isfinite(pix), pix, 0.0)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < width) & (pix[:, 1] >= 0) & (pix[:, 1] < height)
    to_camera = camera_center(viewmat)[None, :] - points
    to_camera = to_camera / jnp.maximum(jnp.linalg.norm(to_camera, axis=-1, keepdims=True), 1e-12)
    return Projected(pix, z, in_front & inside, jnp.sum(normals * to_camera, axis=-1))


def sample_visibility(
    points: Float[Array, "n 3"], normals: Float[Array, "n 3"], viewmat: Float[Array, "4 4"],
    K: Float[Array, "3 3"], image_hw: tuple[int, int], buffer_hw: tuple[int, int],
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE, near_plane: float = DEFAULT_NEAR_PLANE,
) -> tuple[Float[Array, "n 2"], Bool[Array, " n"]]:
    """Pixels and visibility m_i of surface samples in one view: in front, in the image,
    front-facing and not behind the sample z-buffer (all projectable samples occlude)."""
    proj = project_samples(points, normals, viewmat, K, image_hw, near_plane)
    zbuffer = depth_buffer(proj.pixels, proj.depth, proj.candidate, image_hw, buffer_hw)
    return proj.pixels, visible_in(proj, zbuffer, K, image_hw, depth_tolerance)


def visible_in(proj: Projected, zbuffer: Float[Array, "bh bw"], K: Float[Array, "3 3"], image_hw: tuple[int, int],
               depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE) -> Bool[Array, " n"]:
    """m_i: projectable, front-facing, and `depth ≤ zbuffer(cell) + tolerance_i` where
    `tolerance_i = depth_tolerance + footprint_i · min(tan θ_i, MAX_SLOPE)`: the nearest sample of a
    cell may lie up to one cell footprint (`z · cell_px / f` metres) away on the same tilted
    surface (θ between normal and view ray), so a fixed tolerance would hide most of a coarse
    cell's own surface."""
    cell = buffer_cells(proj.pixels, image_hw, zbuffer.shape)
    cell_px = max(image_hw[1] / zbuffer.shape[1], image_hw[0] / zbuffer.shape[0])
    focal = jnp.minimum(K[0, 0], K[1, 1])
    footprint = proj.depth * cell_px / focal
    cos = jnp.clip(proj.facing, 1e-6, 1.0)
    slope = jnp.minimum(jnp.sqrt(1.0 - cos**2) / cos, MAX_SLOPE)
    unoccluded = proj.depth <= zbuffer.reshape(-1)[cell] + depth_tolerance + footprint * slope
    return proj.candidate & (proj.facing > 0) & unoccluded


def surface_samples(
    head: HeadModel, table: SplatTable, vertices: Float[Array, "V 3"]
) -> tuple[Float[Array, "n 3"], Float[Array, "n 3"], Float[Array, "n 3"]]:
    """Points, unit face normals (for back-face culling) and unit interpolated vertex normals (a
    smooth direction for the Shell-UV extrusion) of the table's samples on a posed mesh."""
    faces = jnp.asarray(head.faces)
    tri = vertices[faces]  # [F,3,3]
    # `head.mesh_ops.face_normals`/`vertex_normals` in jnp: the mesh is posed per view inside jit.
    face_n = jnp.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # area-weighted, outward (CCW)
    vertex_n = jnp.zeros_like(vertices)
    for k in range(3):
        vertex_n = vertex_n.at[faces[:, k]].add(face_n)

    def unit(x):
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    sample_faces = jnp.asarray(table.face)
    bary = jnp.asarray(table.bary, vertices.dtype)
    corners = faces[sample_faces]
    points = jnp.einsum("nc,ncd->nd", bary, vertices[corners])
    smooth = unit(jnp.einsum("nc,ncd->nd", bary, unit(vertex_n)[corners]))
    return points, unit(face_n[sample_faces]), smooth


class UVLift(NamedTuple):
    """Multi-view blended projections: `core [b,G,G,d]`, `core_coverage [b,G,G]`,
    `shell [b,Gs,Gs,d]`, `shell_coverage [b,Gs,Gs]` (coverage ≈ number of views that see a texel
    fully; 0 = unseen)."""

    core: Array
    core_coverage: Array
    shell: Array
    shell_coverage: Array


def blend_views(
    uv: Float[Array, "b v g g d"], coverage: Float[Array, "b v g g"], view_mask: Bool[Array, "b v"],
    eps: float = SCATTER_EPS,
) -> tuple[Float[Array, "b g g d"], Float[Array, "b g g"]]:
    """Dual-UV's linear multi-view blend `Σ_v c_v U_v / (Σ_v c_v + ε)`; padding views get c_v = 0
    (by `where`, so their content cannot leak even if it is not finite)."""
    c = jnp.where(view_mask[:, :, None, None], coverage, 0.0)
    num = jnp.sum(jnp.where(view_mask[:, :, None, None, None], c[..., None] * uv, 0.0), axis=1)
    total = jnp.sum(c, axis=1)
    return num / (total[..., None] + eps), total


def _safe_views(views: InputViews) -> tuple[Array, Array, HeadParams]:
    """Padding views get a harmless camera (identity rotation, 1 m in front) and zero params, so
    nothing downstream sees non-finite values; their contribution is removed by the view mask."""
    mask = views.mask
    safe_viewmat = jnp.eye(4, dtype=views.viewmats.dtype).at[2, 3].set(1.0)
    viewmats = jnp.where(mask[:, :, None, None], views.viewmats, safe_viewmat)
    Ks = jnp.where(mask[:, :, None, None], views.Ks, jnp.eye(3, dtype=views.Ks.dtype))
    params = jax.tree.map(lambda a: jnp.where(mask.reshape(*mask.shape, *([1] * (a.ndim - 2))), a, 0.0),
                          views.params)
    return viewmats, Ks, params


def lift_views(
    head: HeadModel,
    patch_tokens: Float[Array, "b v hp wp d"],
    views: InputViews,
    core_table: SplatTable,
    shell_table: SplatTable | None = None,
    *,
    shell_offset: float = DEFAULT_SHELL_OFFSET,
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE,
    near_plane: float = DEFAULT_NEAR_PLANE,
    zbuffer_cells_per_patch: int = 1,
) -> UVLift:
    """Core-UV (and Shell-UV if `shell_table` is given) of the patch tokens of all views, blended.

    `views` is a `models.views.InputViews` with `viewmats`, `Ks` and `params` (leading [b, v]);
    the image size is taken from `views.images`. Without a shell table `shell`/`shell_coverage`
    are empty arrays of grid 0."""
    b, v, hp, wp, d = patch_tokens.shape
    height, width = views.images.shape[2:4]
    image_hw = (int(height), int(width))
    buffer_hw = (hp * zbuffer_cells_per_patch, wp * zbuffer_cells_per_patch)
    viewmats, Ks, params = _safe_views(views)
    # Geometry is an input (tracked mesh, calibrated cameras), not something this lift learns.
    viewmats, Ks, params = jax.lax.stop_gradient((viewmats, Ks, params))
    tokens = jnp.where(views.mask[:, :, None, None, None], patch_tokens, 0.0)

    flat_params = jax.tree.map(lambda a: a.reshape(b * v, *a.shape[2:]), params)
    vertices = jax.vmap(lambda p: lbs(head, p).vertices)(flat_params)

    def one_view(feature_map, verts, viewmat, K):
        points, face_n, smooth_n = surface_samples(head, core_table, verts)
        proj = project_samples(points, face_n, viewmat, K, image_hw, near_plane)
        zbuffer = depth_buffer(proj.pixels, proj.depth, proj.candidate, image_hw, buffer_hw)
        visible = visible_in(proj, zbuffer, K, image_hw, depth_tolerance)
        core, core_w = kernel_scatter(bilinear_sample(feature_map, proj.pixels, image_hw), visible,
                                      jnp.asarray(core_table.texel_index), jnp.asarray(core_table.kernel_weight),
                                      core_table.grid)
        out = (core, core_w / core_table.coverage_norm)
        if shell_table is not None:
            s_points, s_face_n, s_smooth_n = surface_samples(head, shell_table, verts)
            s_points = s_points + shell_offset * s_smooth_n
            s_proj = project_samples(s_points, s_face_n, viewmat, K, image_hw, near_plane)
            # Shell points are tested against the core surface's z-buffer: the head occludes them.
            s_visible = visible_in(s_proj, zbuffer, K, image_hw, depth_tolerance)
            shell, shell_w = kernel_scatter(bilinear_sample(feature_map, s_proj.pixels, image_hw), s_visible,
                                            jnp.asarray(shell_table.texel_index),
                                            jnp.asarray(shell_table.kernel_weight), shell_table.grid)
            out += (shell, shell_w / shell_table.coverage_norm)
        return out

    per_view = jax.vmap(one_view)(tokens.reshape(b * v, hp, wp, d), vertices, viewmats.reshape(b * v, 4, 4),
                                  Ks.reshape(b * v, 3, 3))
    per_view = [x.reshape(b, v, *x.shape[1:]) for x in per_view]
    core, core_cov = blend_views(per_view[0], per_view[1], views.mask)
    if shell_table is None:
        return UVLift(core, core_cov, jnp.zeros((b, 0, 0, d), core.dtype), jnp.zeros((b, 0, 0), core.dtype))
    shell, shell_cov = blend_views(per_view[2], per_view[3], views.mask)
    return UVLift(core, core_cov, shell, shell_cov)


def upsample_to(x: Float[Array, "b gs gs ..."], grid: int) -> Float[Array, "b g g ..."]:
    """Nearest-neighbour upsampling of a coarse UV map to `grid`² (Shell-UV -> Core-UV grid)."""
    gs = x.shape[1]
    if grid % gs == 0:
        f = grid // gs
        return jnp.repeat(jnp.repeat(x, f, axis=1), f, axis=2)
    return jax.image.resize(x, (x.shape[0], grid, grid, *x.shape[3:]), "nearest")


def texel_fourier_features(grid: int, num_frequencies: int) -> Float[np.ndarray, "gg f"]:
    """Fourier features of every texel centre's (u, v) mapped to [-1, 1]², flattened to [G², f]
    (a positional embedding of the UV grid, host-side)."""
    uv = uvt.texel_uv(grid).reshape(grid * grid, 2) * 2.0 - 1.0
    # Same layout as attention.fourier_features, in numpy so it stays a constant under jit.
    angles = (uv[:, None, :] * (2.0 ** np.arange(num_frequencies) * np.pi)[:, None]).reshape(grid * grid, -1)
    return np.concatenate([uv, np.sin(angles), np.cos(angles)], -1).astype(np.float32)


class ProjectionLifter(Lifter):
    """Base of the lifters that project image features through the cameras (`dual_uv`,
    `symmetric`): the knobs of `splat_table` (`oversample` samples per texel side, `kernel_radius`
    in texels) and `lift_views` (`depth_tolerance` metres, `zbuffer_cells_per_patch`), and the
    Core-UV `coverage_threshold` below which a texel counts as unseen."""

    oversample: int = 2
    kernel_radius: float = 1.0
    depth_tolerance: float = DEFAULT_DEPTH_TOLERANCE
    zbuffer_cells_per_patch: int = 1
    coverage_threshold: float = 0.05
