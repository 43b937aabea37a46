"""Appearance of synthetic identities: UV albedo, expression-dependent wrinkle maps, hair.

Everything here is host-side numpy and a deterministic function of a `numpy.random.Generator`.
Patterns are defined on the *3D template surface* (seamless across UV charts) and baked into UV
texel maps of the procedural head at a chosen resolution:

* albedo: skin tone + low-frequency variation + redness (cheeks, nose, ears), freckles and moles,
  eyebrows, lips, iris / pupil / sclera, teeth, mouth interior, tongue, optional beard or stubble,
  and a canonical-space Lambert term (light attached to the head, so shading is identity appearance);
* wrinkle maps `[K,K,W]` in [0,1], each darkening the albedo in proportion to an activation computed
  from the driving expression (forehead lines ← brow raise, crow's feet ← smile/squint, nasolabial
  folds ← smile/cheek raise, glabella lines ← furrow, mouth-interior darkening ← jaw opening), so
  dynamic appearance is not a pure function of geometry;
* hair: a displaced shell over the scalp (styles bald / short / long / fringe), i.e. Gaussians that
  sit *off* the head surface, with their own colour variation.
"""

from __future__ import annotations

import dataclasses

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


def fourier_noise(rng: np.random.Generator, points: np.ndarray, wavelength: tuple[float, float],
                  num: int = 24) -> np.ndarray:
    """Seamless 3D noise (random Fourier features), ~unit variance, wavelengths in metres."""
    dirs = rng.standard_normal((num, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = 2 * np.pi / rng.uniform(*wavelength, size=num)
    phase = rng.uniform(0, 2 * np.pi, size=num)
    return np.sqrt(2.0 / num) * np.cos(points @ (dirs * freq[:, None]).T + phase).sum(-1)


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Baked identity appearance on a K×K UV grid of the head model.

    `albedo [K,K,3]` (shading included), `wrinkles [K,K,W]` (darkening strength, `WRINKLES` order),
    `hair_style` in `HAIR_STYLES`, `hair_color [3]`, `hair_thickness` metres, `beard` (0..1)."""

    albedo: np.ndarray
    wrinkles: np.ndarray
    hair_style: str
    hair_color: np.ndarray
    hair_thickness: float
    beard: float
    skin_tone: float


def _smooth_band(x, center, width):
    return np.exp(-0.5 * ((x - center) / width) ** 2)


def make_appearance(model: HeadModel, resolution: int, rng: np.random.Generator) -> Appearance:
    table = uvt.texel_table(model, resolution)
    valid = table.valid
    p = np.asarray(uvt.uv_position_map(model, model.v_template, resolution), np.float64)  # [K,K,3]
    mask = lambda *r: uvt.uv_region_mask(model, resolution, *r)  # noqa: E731
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    ax = np.abs(x)

    tone = rng.uniform(0.0, 1.0)
    skin = (1 - tone) * SKIN_LIGHT + tone * SKIN_DARK
    skin = skin * (1 + 0.05 * rng.standard_normal(3))
    variation = 1 + 0.05 * fourier_noise(rng, p, (0.02, 0.08)) + 0.012 * fourier_noise(rng, p, (0.004, 0.012))
    albedo = skin[None, None, :] * variation[..., None]
    # Redness on cheeks, nose tip and ears.
    red = (0.6 * _smooth_band(np.linalg.norm(p - [0.0, -0.008, 0.10], axis=-1), 0, 0.012)
           + 0.5 * _smooth_band(np.linalg.norm(np.stack([ax, y, z], -1) - [0.045, -0.015, 0.06], axis=-1), 0, 0.015))
    red = red * rng.uniform(0.1, 0.6) + 0.4 * mask("ears")
    albedo = albedo * (1 - 0.12 * red[..., None]) + 0.12 * red[..., None] * np.array([0.75, 0.30, 0.30])
    # Freckles and moles on the face skin.
    face_px = np.argwhere(mask("face_skin"))
    n_freckles = int(rng.choice([0, 0, 10, 40, 120]))
    for k in range(n_freckles + rng.integers(0, 4)):
        c = p[tuple(face_px[rng.integers(len(face_px))])]
        r = rng.uniform(0.0008, 0.002) if k < n_freckles else rng.uniform(0.0015, 0.003)
        dark = rng.uniform(0.15, 0.35) if k < n_freckles else rng.uniform(0.4, 0.7)
        d = _smooth_band(np.linalg.norm(p - c, axis=-1), 0, r)
        albedo *= (1 - dark * d)[..., None]

    hair_color = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.85, 1.15)
    # Eyebrows: an arc above each eye, thickness and darkness vary.
    brow_y = pg.EYE_CENTER[1] + 0.020 - 0.004 * ((ax - pg.EYE_CENTER[0]) / 0.02) ** 2
    brow = _smooth_band(y, brow_y + rng.uniform(-0.002, 0.002), rng.uniform(0.0025, 0.0045))
    brow *= _smooth_band(ax, pg.EYE_CENTER[0] - 0.002, 0.013) * (z > 0.05) * mask("face_skin", "eyebrows")
    brow *= np.clip(0.7 + 0.5 * fourier_noise(rng, p, (0.002, 0.005)), 0, 1)
    brow_col = np.clip(hair_color * 0.8, 0, 1)
    albedo = albedo * (1 - brow[..., None]) + brow[..., None] * brow_col
    # Lips.
    lip_col = skin * np.array([0.95, 0.55, 0.55]) * rng.uniform(0.8, 1.05)
    lips = mask("lips") * _smooth_band(y, pg.MOUTH_Y, 0.009) * _smooth_band(ax, 0, 0.02)
    lips = np.clip(lips * 1.6, 0, 1)
    albedo = albedo * (1 - lips[..., None]) + lips[..., None] * lip_col
    # Beard / stubble on the lower face for some identities.
    beard = float(rng.choice([0.0, 0.0, 0.0, 0.4, 1.0]))
    if beard > 0:
        zone = (y < -0.02) & (y > -0.125) & (z > 0.0) & mask("face_skin", "neck", "lips") & ~mask("lips")
        speck = np.clip(0.5 + 0.6 * fourier_noise(rng, p, (0.0015, 0.004)), 0, 1)
        amount = beard * zone * speck * (1 - _smooth_band(y, pg.MOUTH_Y, 0.004))
        albedo = albedo * (1 - 0.8 * amount[..., None]) + 0.8 * amount[..., None] * hair_color
    # Eyes: sclera, iris, pupil (angle from the eyeball's front axis).
    iris_col = IRIS_COLORS[rng.integers(len(IRIS_COLORS))] * rng.uniform(0.8, 1.2)
    iris_r = rng.uniform(0.40, 0.48)
    for region, sign in (("left_eye", 1.0), ("right_eye", -1.0)):
        m = mask(region)
        c = pg.EYE_CENTER * [sign, 1, 1]
        rel = p - c
        cos_front = rel[..., 2] / np.maximum(np.linalg.norm(rel, axis=-1), 1e-9)
        ang = np.arccos(np.clip(cos_front, -1, 1))
        col = np.where((ang < 0.16)[..., None], [0.02, 0.02, 0.02],
                       np.where((ang < iris_r)[..., None], iris_col * (0.8 + 0.3 * np.cos(ang * 40))[..., None],
                                [0.93, 0.91, 0.88]))
        albedo = np.where(m[..., None], col, albedo)
    albedo = np.where(mask("teeth")[..., None], np.array([0.93, 0.90, 0.80]) * rng.uniform(0.85, 1.0), albedo)
    albedo = np.where(mask("mouth_interior")[..., None], np.array([0.45, 0.13, 0.14]), albedo)
    albedo = np.where(mask("tongue")[..., None], np.array([0.78, 0.38, 0.40]), albedo)

    # Canonical-space Lambert (the light moves with the head): identity appearance, not lighting.
    samples = uvt.sampling_grid(model, resolution)
    normals = np.zeros((resolution, resolution, 3))
    frames = np.asarray(uvt.tangent_frames(model, samples, model.v_template))
    normals[samples.texel[:, 0], samples.texel[:, 1]] = frames[:, :, 2]
    lambert = 0.6 + 0.4 * np.clip(normals @ LIGHT_DIR, 0, 1)
    interior = mask("mouth_interior", "teeth", "tongue", "left_eye", "right_eye")
    albedo = albedo * np.where(interior, 1.0, lambert)[..., None]
    albedo = np.where(valid[..., None], np.clip(albedo, 0, 1), 0.0)

    # Wrinkle maps: thin dark lines whose depth depends on the identity (age).
    age = rng.uniform(0.3, 1.0)
    w = np.zeros((resolution, resolution, len(WRINKLES)))
    face = mask("face_skin")
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
    w[..., 6] = mask("mouth_interior", "tongue", "teeth")
    w[..., :6] *= 0.55 * age
    w[..., 6] *= 0.6
    thickness = {"bald": 0.0, "short": rng.uniform(0.004, 0.009), "long": rng.uniform(0.010, 0.020),
                 "fringe": rng.uniform(0.005, 0.010)}
    style = HAIR_STYLES[int(rng.choice(4, p=[0.12, 0.4, 0.28, 0.2]))]
    return Appearance(albedo=albedo.astype(np.float32), wrinkles=w.astype(np.float32), hair_style=style,
                      hair_color=np.clip(hair_color, 0, 1).astype(np.float32), hair_thickness=float(thickness[style]),
                      beard=beard, skin_tone=float(tone))


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
