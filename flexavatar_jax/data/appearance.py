"""Appearance of synthetic identities: a pure, jittable JAX function of (world seed, identity id).

`synthesize_identity(tables, mix, seed, identity_id)` returns everything the renderer needs to know
about one synthetic person, per Gaussian of the world's fixed sample layout (surface samples, one per
valid UV texel, followed by the hair-shell candidates):

* shape coefficients `[S]` (standard normal × `shape_scale`);
* albedo colours `[N,3]`: skin tone + low-frequency variation + redness (cheeks, nose, ears),
  freckles and moles, eyebrows, lips, optional beard or stubble, iris / pupil / sclera, teeth, mouth
  interior, tongue, and a canonical-space Lambert term (light attached to the head, so shading is
  identity appearance). Patterns are defined on the *3D template surface*, so they are seamless
  across UV charts;
* wrinkle maps `[N,W]` in [0,1], each darkening the albedo in proportion to an activation computed
  from the driving expression (`wrinkle_activations`: forehead lines ← brow raise, crow's feet ←
  smile/squint, nasolabial folds ← smile/cheek raise, glabella lines ← furrow, mouth-interior
  darkening ← jaw opening), so dynamic appearance is not a pure function of geometry;
* a hair shell over the scalp (styles bald / short / long / fringe): hair candidates sit *off* the
  surface by `hair_offset` along the normal, with their own colour streaks, and are transparent where
  the identity's style does not cover them.

Everything that does not depend on the identity (texel positions, region masks, the Lambert map, the
geometric part of every pattern and wrinkle map, the sample layout and texel edges, the hair-style
coverage) is host numpy in `IdentityTables`, built once per world by `identity_tables`. Per identity
the host does no work: the function is jnp only, so `jax.jit(jax.vmap(functools.partial(
synthesize_identity, tables, mix)), ...)` synthesizes a batch of identities in one call.

Determinism: the output is a function of (tables, mix, seed, identity_id) only. Each independent
part draws from its own key `fold_in(fold_in(key(seed), identity_id), stream)` (streams
`STREAM_SHAPE`, `STREAM_APPEARANCE`, `STREAM_HAIR`), every draw has a fixed shape (variable counts
such as freckles are masked slots of a fixed maximum), and the arithmetic is written so that XLA
compiles every point's value the same way with or without a batch dimension (see `_PAD`). So under
`jax.jit` an identity is bitwise identical whether it is synthesized alone, at any position of a
vmapped batch (over ids or seeds), with the seed bound as a constant or traced, or from a freshly
built tables object, for a given JAX/XLA version and backend (verified on CPU by
`tests/data/test_appearance.py`). Un-jitted (op-by-op) calls, other versions or other backends may
differ in the last bits; the discrete draws (style, beard, counts, colour choices) are threshold
tests on threefry uniforms and agree everywhere.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from flexavatar_jax.head import HeadModel
from flexavatar_jax.head import procedural_geometry as pg
from flexavatar_jax.head import uv as uvt

HAIR_STYLES = ("bald", "short", "long", "fringe")
WRINKLES = ("forehead_lines", "crows_feet_left", "crows_feet_right", "nasolabial_left", "nasolabial_right",
            "glabella_lines", "mouth_interior_shadow")
SKIN_LIGHT = np.array([0.96, 0.80, 0.70])
SKIN_DARK = np.array([0.30, 0.19, 0.13])
HAIR_COLORS = np.array([[0.05, 0.04, 0.04], [0.20, 0.12, 0.07], [0.40, 0.26, 0.14], [0.78, 0.62, 0.38],
                        [0.55, 0.22, 0.10], [0.62, 0.60, 0.58]])
IRIS_COLORS = np.array([[0.25, 0.15, 0.08], [0.12, 0.30, 0.55], [0.25, 0.45, 0.25], [0.45, 0.38, 0.22],
                        [0.35, 0.40, 0.45]])
LIGHT_DIR = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
RED_TINT = np.array([0.75, 0.30, 0.30])
LIP_TINT = np.array([0.95, 0.55, 0.55])
PUPIL_COLOR = np.array([0.02, 0.02, 0.02])
SCLERA_COLOR = np.array([0.93, 0.91, 0.88])
TEETH_COLOR = np.array([0.93, 0.90, 0.80])
MOUTH_INTERIOR_COLOR = np.array([0.45, 0.13, 0.14])
TONGUE_COLOR = np.array([0.78, 0.38, 0.40])

FRECKLE_COUNTS = (0, 10, 40, 120)
MAX_MOLES = 3  # 0..3 moles, uniform
MAX_SPOTS = max(FRECKLE_COUNTS) + MAX_MOLES  # fixed freckle + mole slots; unused slots are masked
BEARD_STRENGTHS = (0.0, 0.4, 1.0)
HAIR_THICKNESS = {"bald": (0.0, 0.0), "short": (0.004, 0.009), "long": (0.010, 0.020), "fringe": (0.005, 0.010)}
PUPIL_ANGLE = 0.16  # radians from the eyeball's front axis
IRIS_ANGLE_RANGE = (0.40, 0.48)
AGE_RANGE = (0.3, 1.0)
HAIR_OPACITY, SKIN_OPACITY = 0.92, 0.99

# Bitwise stability under vmap (a numerical trap; each rule below was needed on the CPU backend):
# * per-point work runs on arrays padded to a multiple of `_PAD` points: XLA's loops give an element
#   a different code path (vector body, scalar remainder, thread split) depending on the array
#   length, so short arrays differed in the last bit between a lone identity and a batch;
# * no matmuls and no reductions over the minor axis (fixed summation order per point);
# * a sum has at most one product operand where use counts could differ (`_blend`): LLVM fuses a
#   product into an FMA, and with two candidates its choice changed with the batch dimension;
# * constant-only subexpressions are evaluated in numpy at trace time, never folded by XLA.
_PAD = 256
STREAM_SHAPE, STREAM_APPEARANCE, STREAM_HAIR = 0, 1, 2  # stream 3 is the motion clips (synthetic.py)
# fold_in hashes 32-bit data; ids stay int32-safe so they never wrap on the device.
MAX_IDENTITY_ID = 2**31 - 1


def hair_style_index(name: str) -> int:
    """Position of a hair style name in `HAIR_STYLES`."""
    if name not in HAIR_STYLES:
        raise ValueError(f"unknown hair style {name!r}; known: {HAIR_STYLES}")
    return HAIR_STYLES.index(name)


def check_identity_ids(ids) -> np.ndarray:
    """Host-side check of identity ids (a scalar or an array): integers in [0, MAX_IDENTITY_ID).

    Returns them as int32 (same shape); raises ValueError naming the first offending value."""
    if isinstance(ids, (bool, np.bool_)):
        raise ValueError(f"identity ids must be integers, got {ids!r}")
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):
        bad = a.reshape(-1)[0] if a.size else a
        raise ValueError(f"identity ids must be integers, got {bad!r} (dtype {a.dtype})")
    bad = a[(a < 0) | (a >= MAX_IDENTITY_ID)]
    if bad.size:
        raise ValueError(f"identity ids must be in [0, {MAX_IDENTITY_ID}), got {int(bad[0])}")
    return a.astype(np.int32)


def _check_probs(name: str, probs, num: int) -> tuple[float, ...]:
    probs = tuple(float(v) for v in probs)
    if len(probs) != num:
        raise ValueError(f"FeatureMix.{name} needs {num} probabilities, got {probs}")
    if not all(v >= 0.0 for v in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"FeatureMix.{name} must be non-negative and sum to 1, got {probs}")
    return probs


@dataclasses.dataclass(frozen=True)
class FeatureMix:
    """How often each discrete feature occurs among the synthetic identities.

    `hair_style_probs` over `HAIR_STYLES` (bald, short, long, fringe); `beard_probs` over
    `BEARD_STRENGTHS` (none, stubble 0.4, full 1.0); `freckle_count_probs` over `FRECKLE_COUNTS`
    (0, 10, 40, 120 freckles; 0-3 moles come on top, uniformly); `skin_tone_range` (lo, hi) inside
    [0, 1] of the uniform skin tone (0 = `SKIN_LIGHT`, 1 = `SKIN_DARK`)."""

    hair_style_probs: tuple[float, ...] = (0.12, 0.40, 0.28, 0.20)
    beard_probs: tuple[float, ...] = (0.6, 0.2, 0.2)
    freckle_count_probs: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
    skin_tone_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        set_ = lambda f, v: object.__setattr__(self, f, v)  # noqa: E731
        set_("hair_style_probs", _check_probs("hair_style_probs", self.hair_style_probs, len(HAIR_STYLES)))
        set_("beard_probs", _check_probs("beard_probs", self.beard_probs, len(BEARD_STRENGTHS)))
        set_("freckle_count_probs",
             _check_probs("freckle_count_probs", self.freckle_count_probs, len(FRECKLE_COUNTS)))
        tone = tuple(float(v) for v in self.skin_tone_range)
        if len(tone) != 2 or not 0.0 <= tone[0] <= tone[1] <= 1.0:
            raise ValueError(f"FeatureMix.skin_tone_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {tone}")
        set_("skin_tone_range", tone)


def hair_region(model: HeadModel, resolution: int, style: str) -> np.ndarray:
    """Texels whose surface is covered by the hair shell for `style` ([K,K] bool)."""
    if style not in HAIR_STYLES:
        raise ValueError(f"unknown hair style {style!r}; known: {HAIR_STYLES}")
    if style == "bald":
        return np.zeros((resolution, resolution), bool)
    p = np.asarray(uvt.uv_position_map(model, model.v_template, resolution))
    scalp = uvt.uv_region_mask(model, resolution, "scalp")
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    covered = scalp & (y > 0.0)
    if style in ("long",):
        behind = uvt.uv_region_mask(model, resolution, "scalp", "neck", "face_skin") & (z < -0.015) & (y > -0.13)
        sides = uvt.uv_region_mask(model, resolution, "scalp", "face_skin") & (np.abs(x) > 0.055) & (y > -0.01) & (z < 0.03)
        covered |= behind | sides
    if style == "fringe":
        covered |= uvt.uv_region_mask(model, resolution, "face_skin") & (y > 0.062) & (np.abs(x) < 0.06)
    return covered


def _smooth_band(x, center, width):
    return np.exp(-0.5 * ((x - center) / width) ** 2)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, usable as a static jit argument
class IdentityTables:
    """Identity-independent host constants of one world (head model, UV resolution K, shape scale).

    Sample layout: `samples` (surface samples, one per valid texel in row-major order, followed by
    the hair-shell candidates: the surface samples any hair style can cover), `num_surface`,
    `texel_index [N]` (flat `row*K + col` of each sample's texel), `texel_edge [N]` metres (world
    extent of one texel along its longer UV direction, capped at 3× the median).

    `[K,K]` maps (0 / False outside the charts): `p [K,K,3]` template positions (metres), `valid`,
    the region masks `face_skin`, `ears`, `left_eye`, `right_eye`, `teeth`, `mouth_interior`,
    `tongue`; the geometric part of each pattern: `redness` (cheeks + nose; ears are added as 0.4),
    `brow_center_y` (metres) and `brow_weight`, `lip_weight`, `beard_weight`; `eye_angle` (radians
    from the eyeball's front axis, on the eye texels), `shading` (canonical Lambert factor, 1 on the
    mouth interior, teeth, tongue and eyes); `wrinkle_base [K,K,W]` (the wrinkle maps with the
    forehead..glabella channels at age 1).

    Point sets: `face_skin_points [F,3]` (freckle centre candidates, one per face-skin
    texel), `hair_points [H,3]` (hair candidate surface points) and `hair_masks [len(HAIR_STYLES),
    H]` (which candidates each style covers)."""

    resolution: int
    shape_scale: float
    num_shape: int
    samples: uvt.UVSamples
    num_surface: int
    texel_index: np.ndarray
    texel_edge: np.ndarray
    p: np.ndarray
    valid: np.ndarray
    face_skin: np.ndarray
    ears: np.ndarray
    left_eye: np.ndarray
    right_eye: np.ndarray
    teeth: np.ndarray
    mouth_interior: np.ndarray
    tongue: np.ndarray
    redness: np.ndarray
    brow_center_y: np.ndarray
    brow_weight: np.ndarray
    lip_weight: np.ndarray
    beard_weight: np.ndarray
    eye_angle: np.ndarray
    shading: np.ndarray
    wrinkle_base: np.ndarray
    face_skin_points: np.ndarray
    hair_points: np.ndarray
    hair_masks: np.ndarray

    @property
    def num_gaussians(self) -> int:
        return len(self.samples)

    @property
    def num_hair(self) -> int:
        return len(self.samples) - self.num_surface


def _wrinkle_base(p, face, mouth):
    """Wrinkle maps [K,K,W] with the identity's age factored out (channels 0-5 scale with age)."""
    x, y = p[..., 0], p[..., 1]
    ax = np.abs(x)
    w = np.zeros(p.shape[:2] + (len(WRINKLES),))
    forehead = face * _smooth_band(y, 0.072, 0.012) * _smooth_band(ax, 0, 0.035)
    w[..., 0] = forehead * np.clip(np.cos(2 * np.pi * y / 0.0065) * 1.5 - 0.5, 0, 1)
    for k, sign in ((1, 1.0), (2, -1.0)):
        corner = np.array([0.047 * sign, pg.EYE_CENTER[1] - 0.001, 0.058])
        rel = p - corner
        r = np.linalg.norm(rel, axis=-1)
        theta = np.arctan2(rel[..., 1], rel[..., 2] * -sign)
        w[..., k] = face * _smooth_band(r, 0.008, 0.005) * np.clip(np.cos(theta * 9) * 1.5 - 0.5, 0, 1) * (sign * x > 0)
    for k, sign in ((3, 1.0), (4, -1.0)):
        a = np.array([0.017 * sign, -0.012, 0.090])
        b = np.array([0.031 * sign, pg.MOUTH_Y - 0.006, 0.072])
        t = np.clip(((p - a) @ (b - a)) / np.dot(b - a, b - a), 0, 1)
        d = np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1)
        w[..., k] = face * _smooth_band(d, 0.0, 0.0016) * (sign * x > 0)
    glabella = face * _smooth_band(y, pg.EYE_CENTER[1] + 0.016, 0.007) * _smooth_band(ax, 0.0, 0.008)
    w[..., 5] = glabella * np.clip(np.cos(2 * np.pi * x / 0.006) * 1.5 - 0.5, 0, 1)
    w[..., 6] = mouth
    w[..., :6] *= 0.55
    w[..., 6] *= 0.6
    return w


def identity_tables(model: HeadModel, resolution: int, shape_scale: float) -> IdentityTables:
    """Builds the identity-independent tables of a world (host numpy; ~2 s at K=128)."""
    if not (np.isfinite(shape_scale) and shape_scale >= 0):
        raise ValueError(f"shape_scale must be finite and >= 0, got {shape_scale!r}")
    k = int(resolution)
    table = uvt.texel_table(model, k)
    mask = lambda *r: uvt.uv_region_mask(model, k, *r)  # noqa: E731

    # Sample layout: surface samples, then the hair candidates (texels any style can cover).
    surface = uvt.sampling_grid(model, k)
    hair_candidates = hair_region(model, k, "long") | hair_region(model, k, "fringe")
    in_hair = hair_candidates[surface.texel[:, 0], surface.texel[:, 1]]
    hair = surface.subset(in_hair)
    samples = uvt.UVSamples(
        face=np.concatenate([surface.face, hair.face]), bary=np.concatenate([surface.bary, hair.bary]),
        uv=np.concatenate([surface.uv, hair.uv]), texel=np.concatenate([surface.texel, hair.texel]),
        dense=np.concatenate([np.zeros(len(surface), bool), np.ones(len(hair), bool)]))
    # World extent of one texel along its longer UV direction: anisotropic charts (ears,
    # eyeballs) would leave gaps with the isotropic sqrt(area ratio).
    du, dv, _ = uvt.uv_jacobian(model, samples, model.v_template)
    edge = np.maximum(np.linalg.norm(np.asarray(du), axis=-1), np.linalg.norm(np.asarray(dv), axis=-1)) / k
    # Grazing-ray faces of the shrink-wrapped skin have huge derivatives: cap them so no
    # Gaussian spikes out of the surface.
    texel_edge = np.minimum(edge, 3.0 * np.median(edge))
    hair_texel = samples.texel[len(surface):]
    hair_masks = np.stack([hair_region(model, k, s)[hair_texel[:, 0], hair_texel[:, 1]] for s in HAIR_STYLES])
    hair_points = np.asarray(samples.interpolate(model.faces, model.v_template))[len(surface):]

    p = np.asarray(uvt.uv_position_map(model, model.v_template, k), np.float64)  # [K,K,3]
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)
    face_skin = mask("face_skin")
    redness = (0.6 * _smooth_band(np.linalg.norm(p - [0.0, -0.008, 0.10], axis=-1), 0, 0.012)
               + 0.5 * _smooth_band(np.linalg.norm(np.stack([ax, y, z], -1) - [0.045, -0.015, 0.06], axis=-1), 0, 0.015))
    brow_center_y = pg.EYE_CENTER[1] + 0.020 - 0.004 * ((ax - pg.EYE_CENTER[0]) / 0.02) ** 2
    brow_weight = _smooth_band(ax, pg.EYE_CENTER[0] - 0.002, 0.013) * (z > 0.05) * mask("face_skin", "eyebrows")
    lip_weight = np.clip(mask("lips") * _smooth_band(y, pg.MOUTH_Y, 0.009) * _smooth_band(ax, 0, 0.02) * 1.6, 0, 1)
    beard_zone = (y < -0.02) & (y > -0.125) & (z > 0.0) & mask("face_skin", "neck", "lips") & ~mask("lips")
    beard_weight = beard_zone * (1 - _smooth_band(y, pg.MOUTH_Y, 0.004))
    left_eye, right_eye = mask("left_eye"), mask("right_eye")
    eye_angle = np.zeros((k, k))
    for m, sign in ((left_eye, 1.0), (right_eye, -1.0)):  # right after left: it wins where both apply
        rel = p - pg.EYE_CENTER * [sign, 1, 1]
        cos_front = rel[..., 2] / np.maximum(np.linalg.norm(rel, axis=-1), 1e-9)
        eye_angle = np.where(m, np.arccos(np.clip(cos_front, -1, 1)), eye_angle)
    # Canonical-space Lambert (the light moves with the head): identity appearance, not lighting.
    normals = np.zeros((k, k, 3))
    frames = np.asarray(uvt.tangent_frames(model, surface, model.v_template))
    normals[surface.texel[:, 0], surface.texel[:, 1]] = frames[:, :, 2]
    lambert = 0.6 + 0.4 * np.clip(normals @ LIGHT_DIR, 0, 1)
    shading = np.where(mask("mouth_interior", "teeth", "tongue", "left_eye", "right_eye"), 1.0, lambert)

    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return IdentityTables(
        resolution=k, shape_scale=float(shape_scale), num_shape=int(model.num_shape), samples=samples,
        num_surface=len(surface), texel_index=(samples.texel[:, 0] * k + samples.texel[:, 1]).astype(np.int32),
        texel_edge=f32(texel_edge), p=f32(p), valid=table.valid.copy(), face_skin=face_skin, ears=mask("ears"),
        left_eye=left_eye, right_eye=right_eye, teeth=mask("teeth"), mouth_interior=mask("mouth_interior"),
        tongue=mask("tongue"), redness=f32(redness), brow_center_y=f32(brow_center_y),
        brow_weight=f32(brow_weight), lip_weight=f32(lip_weight), beard_weight=f32(beard_weight),
        eye_angle=f32(eye_angle), shading=f32(shading),
        wrinkle_base=f32(_wrinkle_base(p, face_skin, mask("mouth_interior", "tongue", "teeth"))),
        face_skin_points=f32(p[face_skin]), hair_points=f32(hair_points), hair_masks=hair_masks)


# Scalar draws of the appearance stream, one uniform [0,1) slot each. One threefry call for all of
# them (and one per array below) keeps the XLA program, hence the compile time, small.
_SCALAR_DRAWS = ("tone", "red", "freckle_count", "moles", "hair_color", "hair_gain", "brow_offset", "brow_width",
                 "lip_gain", "beard", "iris_color", "iris_gain", "iris_angle", "teeth_gain", "age", "style",
                 "thickness")


def _between(u, lo, hi):
    return lo + (hi - lo) * u


def _index(u, n: int):
    """Uniform integer in [0, n) from a uniform [0,1) draw."""
    return jnp.minimum((u * n).astype(jnp.int32), n - 1)


def _categorical(u, probs):
    """Index (int32) with the static probabilities `probs` from a uniform [0,1) draw; entries of
    probability 0 are never chosen (u < 1 never reaches a threshold equal to the total)."""
    thresholds = np.cumsum(np.asarray(probs, np.float64))[:-1].astype(np.float32)
    return jnp.sum(u >= thresholds).astype(jnp.int32)


def fourier_noise(key, points, wavelengths: tuple[tuple[float, float], ...], num: int = 24):
    """Independent seamless 3D noise fields (random Fourier features) at `points [n,3]`, one per
    (min, max) wavelength range in metres: `[len(wavelengths), n]`, each ~unit variance."""
    k_dir, k_wave = jax.random.split(key)
    dirs = jax.random.normal(k_dir, (len(wavelengths), num, 3), jnp.float32)
    u = jax.random.uniform(k_wave, (len(wavelengths), 2, num), jnp.float32)
    lo, hi = (np.array([w[j] for w in wavelengths], np.float32)[:, None] for j in (0, 1))
    dirs = dirs / jnp.sqrt(dirs[..., 0] ** 2 + dirs[..., 1] ** 2 + dirs[..., 2] ** 2)[..., None]
    wavevec = dirs * (2 * np.pi / _between(u[:, 0], lo, hi))[..., None]  # [F,num,3] rad/m
    pts = jnp.asarray(points, jnp.float32).T  # [3,n]
    # Multiply-adds instead of a matmul, and the sum over a major axis (see _PAD).
    phase = wavevec[..., 0, None] * pts[0] + wavevec[..., 1, None] * pts[1] + wavevec[..., 2, None] * pts[2]
    waves = jnp.cos(phase + 2 * np.pi * u[:, 1, :, None])  # [F,num,n]
    return np.float32(math.sqrt(2.0 / num)) * waves.sum(1)


def _spots(key, n_freckles, n_moles, points, centers):
    """Multiplicative darkening [n] of `n_freckles` freckles and `n_moles` moles at `points [n,3]`,
    centred on texels drawn uniformly from `centers [F,3]`.

    `MAX_SPOTS` fixed slots: the first max(FRECKLE_COUNTS) are freckles, active below `n_freckles`;
    the last `MAX_MOLES` are moles, active below `n_moles`. Inactive slots have darkness 0, a factor
    of exactly 1."""
    u = jax.random.uniform(key, (3, MAX_SPOTS), jnp.float32)
    slot = np.arange(MAX_SPOTS)
    freckle_slots = max(FRECKLE_COUNTS)
    is_freckle = slot < freckle_slots
    active = jnp.where(is_freckle, slot < n_freckles, (slot - freckle_slots) < n_moles)
    # Freckle radius U(0.8, 2) mm and darkness U(0.15, 0.35); mole U(1.5, 3) mm and U(0.4, 0.7).
    radius = _between(u[0], np.where(is_freckle, 0.0008, 0.0015).astype(np.float32),
                      np.where(is_freckle, 0.002, 0.003).astype(np.float32))
    dark = jnp.where(active, _between(u[1], np.where(is_freckle, 0.15, 0.4).astype(np.float32),
                                      np.where(is_freckle, 0.35, 0.7).astype(np.float32)), 0.0)
    c = jnp.asarray(centers)[_index(u[2], len(centers))]  # [MAX_SPOTS,3]
    pts = points.T  # [3,n]
    d2 = (pts[0] - c[:, 0, None]) ** 2 + (pts[1] - c[:, 1, None]) ** 2 + (pts[2] - c[:, 2, None]) ** 2
    keep = 1 - dark[:, None] * jnp.exp(-0.5 * d2 / radius[:, None] ** 2)  # [MAX_SPOTS,n]
    return jnp.prod(keep, axis=0)  # over a major axis (see _PAD)


def _padded(a, axis: int = 0):
    """`a` with its `axis` padded to a multiple of `_PAD` by repeating its first entry (numpy)."""
    extra = -a.shape[axis] % _PAD
    return np.concatenate([a, np.repeat(np.take(a, [0], axis), extra, axis)], axis)


def _blend(base, weight, color):
    """`base` moved towards `color` by `weight [n]`; weight 0 keeps it bitwise. Written as one
    product feeding one sum, not (1-w)·base + w·color (see _PAD)."""
    return base + weight[:, None] * (color - base)


def _color(c):
    return np.asarray(c, np.float32)


def synthesize_identity(tables: IdentityTables, mix: FeatureMix, seed, identity_id) -> dict[str, jax.Array]:
    """Identity `identity_id` of the world `seed` (pure jnp; jit/vmap over `seed` and `identity_id`).

    `tables` and `mix` are trace-time constants (bind them with `functools.partial`). Returns, with
    N = `tables.num_gaussians` and S = `tables.num_shape`: `shape [S]`, `colors [N,3]` albedo in
    [0,1] (shading baked), `wrinkles [N,W]` (`WRINKLES` order), `opacity [N]`, `hair_offset [N]`
    metres along the normal (0 on the skin), `base_scale [N,3]` metres in the (t, b, n) frame — all
    float32 — and scalars `hair_style` (int32 index into `HAIR_STYLES`), `skin_tone`, `beard`
    (float32). Ids must be in [0, MAX_IDENTITY_ID): see `check_identity_ids` (checked here only
    for concrete values)."""
    if not isinstance(identity_id, jax.core.Tracer):
        check_identity_ids(identity_id)
    t = tables
    n_s, n_h = t.num_surface, t.num_hair
    flat = _padded(t.texel_index[:n_s])  # surface samples are computed padded, then sliced
    # Constant-only expressions stay numpy (see _PAD).
    at_surface = lambda m: m.reshape((-1,) + m.shape[2:])[flat]  # noqa: E731  host gather, numpy
    person = jax.random.fold_in(jax.random.key(seed), identity_id)
    shape = jax.random.normal(jax.random.fold_in(person, STREAM_SHAPE), (t.num_shape,), jnp.float32) * t.shape_scale
    k_scalar, k_skin, k_noise, k_spots = jax.random.split(jax.random.fold_in(person, STREAM_APPEARANCE), 4)
    u = dict(zip(_SCALAR_DRAWS, jax.random.uniform(k_scalar, (len(_SCALAR_DRAWS),), jnp.float32)))

    p = at_surface(t.p)  # [n_s (padded),3] texel positions of the surface samples
    noise_low, noise_high, brow_noise, beard_noise = fourier_noise(
        k_noise, p, ((0.02, 0.08), (0.004, 0.012), (0.002, 0.005), (0.0015, 0.004)))
    tone = _between(u["tone"], *mix.skin_tone_range)
    skin = _color(SKIN_LIGHT) + tone * _color(SKIN_DARK - SKIN_LIGHT)
    skin = skin * (1 + 0.05 * jax.random.normal(k_skin, (3,), jnp.float32))
    albedo = skin * (1 + 0.05 * noise_low + 0.012 * noise_high)[:, None]
    # Redness on cheeks, nose tip and ears.
    red = at_surface(t.redness) * _between(u["red"], 0.1, 0.6) + _color(0.4 * at_surface(t.ears))
    albedo = _blend(albedo, 0.12 * red, _color(RED_TINT))
    n_freckles = jnp.asarray(FRECKLE_COUNTS, jnp.int32)[_categorical(u["freckle_count"], mix.freckle_count_probs)]
    albedo = albedo * _spots(k_spots, n_freckles, _index(u["moles"], MAX_MOLES + 1), p, t.face_skin_points)[:, None]

    hair_color = jnp.asarray(_color(HAIR_COLORS))[_index(u["hair_color"], len(HAIR_COLORS))] * _between(
        u["hair_gain"], 0.85, 1.15)
    # Eyebrows: an arc above each eye, thickness and darkness vary.
    brow_y = at_surface(t.brow_center_y) + _between(u["brow_offset"], -0.002, 0.002)
    brow = jnp.exp(-0.5 * ((p[:, 1] - brow_y) * (1 / _between(u["brow_width"], 0.0025, 0.0045))) ** 2)
    brow = brow * at_surface(t.brow_weight) * jnp.clip(0.7 + 0.5 * brow_noise, 0, 1)
    albedo = _blend(albedo, brow, jnp.clip(hair_color * 0.8, 0, 1))
    albedo = _blend(albedo, at_surface(t.lip_weight), skin * _color(LIP_TINT) * _between(u["lip_gain"], 0.8, 1.05))
    # Beard / stubble on the lower face (strength 0 leaves the albedo bitwise unchanged).
    beard = jnp.asarray(BEARD_STRENGTHS, jnp.float32)[_categorical(u["beard"], mix.beard_probs)]
    speck = jnp.clip(0.5 + 0.6 * beard_noise, 0, 1)
    albedo = _blend(albedo, beard * speck * _color(0.8 * at_surface(t.beard_weight)), hair_color)
    # Eyes: sclera, iris, pupil by angle from the eyeball's front axis.
    iris_col = jnp.asarray(_color(IRIS_COLORS))[_index(u["iris_color"], len(IRIS_COLORS))] * _between(
        u["iris_gain"], 0.8, 1.2)
    ang = at_surface(t.eye_angle)[:, None]
    iris = jnp.where(ang < _between(u["iris_angle"], *IRIS_ANGLE_RANGE), iris_col * _color(0.8 + 0.3 * np.cos(ang * 40)),
                     _color(SCLERA_COLOR))
    albedo = jnp.where(at_surface(t.left_eye | t.right_eye)[:, None],
                       jnp.where(ang < PUPIL_ANGLE, _color(PUPIL_COLOR), iris), albedo)
    teeth = _color(TEETH_COLOR) * _between(u["teeth_gain"], 0.85, 1.0)
    albedo = jnp.where(at_surface(t.teeth)[:, None], teeth, albedo)
    albedo = jnp.where(at_surface(t.mouth_interior)[:, None], _color(MOUTH_INTERIOR_COLOR), albedo)
    albedo = jnp.where(at_surface(t.tongue)[:, None], _color(TONGUE_COLOR), albedo)
    albedo = jnp.clip(albedo * at_surface(t.shading)[:, None], 0, 1)

    # Wrinkles: thin dark lines whose depth scales with the identity's age (not the mouth shadow).
    age = _between(u["age"], *AGE_RANGE)
    wrinkles = at_surface(t.wrinkle_base) * jnp.where(np.arange(len(WRINKLES)) < 6, age, 1.0)

    # Hair shell: style, thickness and colour streaks along the hair direction.
    style = _categorical(u["style"], mix.hair_style_probs)
    lo, hi = (np.array([HAIR_THICKNESS[s][j] for s in HAIR_STYLES], np.float32) for j in (0, 1))
    thickness = _between(u["thickness"], jnp.asarray(lo)[style], jnp.asarray(hi)[style])
    covered = jnp.asarray(_padded(t.hair_masks, 1))[style]  # [H (padded)]
    streak = fourier_noise(jax.random.fold_in(person, STREAM_HAIR),
                           _padded(t.hair_points) * np.float32([1.0, 0.15, 1.0]), ((0.004, 0.012),))[0]
    hair_colors = jnp.clip(jnp.clip(hair_color, 0, 1) * (0.8 + 0.25 * streak[:, None]), 0, 1)

    edge = t.texel_edge
    base_scale = np.concatenate([np.stack([0.6 * edge[:n_s], 0.6 * edge[:n_s], 0.12 * edge[:n_s]], -1),
                                 np.stack([1.3 * edge[n_s:], 2.4 * edge[n_s:], 0.5 * edge[n_s:]], -1)])
    return dict(
        shape=shape,
        colors=jnp.concatenate([albedo[:n_s], hair_colors[:n_h]]),
        wrinkles=jnp.concatenate([wrinkles[:n_s], jnp.zeros((n_h, len(WRINKLES)), jnp.float32)]),
        opacity=jnp.concatenate([jnp.full((n_s,), SKIN_OPACITY, jnp.float32),
                                 jnp.where(covered, jnp.float32(HAIR_OPACITY), 0.0)[:n_h]]),
        hair_offset=jnp.concatenate([jnp.zeros((n_s,), jnp.float32),
                                     jnp.where(covered, thickness * (1.0 + 0.25 * jnp.clip(streak, -2, 2)), 0.0)[:n_h]]),
        base_scale=jnp.asarray(base_scale, jnp.float32),
        hair_style=style,
        skin_tone=tone,
        beard=beard,
    )


def wrinkle_activations(expression, jaw_pose, index: dict[str, int]):
    """Activation [W] of each wrinkle map from the driving expression (jnp or numpy).

    `index` maps expression names of the procedural head to coefficient positions."""
    import jax.numpy as jnp

    e = lambda n: expression[index[n]] if n in index else 0.0  # noqa: E731
    relu = lambda v: jnp.clip(v, 0.0, 3.0) / 2.0  # noqa: E731
    return jnp.stack([
        relu(e("brow_raise_inner") + 0.5 * (e("brow_raise_outer_left") + e("brow_raise_outer_right"))),
        relu(e("smile_left") + e("eye_squint_left") + 0.5 * e("cheek_raise_left")),
        relu(e("smile_right") + e("eye_squint_right") + 0.5 * e("cheek_raise_right")),
        relu(e("smile_left") + e("cheek_raise_left") + 0.5 * e("upper_lip_raise_left")),
        relu(e("smile_right") + e("cheek_raise_right") + 0.5 * e("upper_lip_raise_right")),
        relu(e("brow_furrow") + 0.5 * (e("brow_lower_left") + e("brow_lower_right"))),
        jnp.clip(jaw_pose[0] / 0.4, 0.0, 1.0) * 2.0,
    ])
