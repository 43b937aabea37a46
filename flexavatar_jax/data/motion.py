"""Expression/pose trajectories ("clips") and cameras of the synthetic data engine.

A clip is mostly neutral or talking (a speech-like jaw rhythm, lips parting, slow drift of the
semantic expression components, blinks, small head motion and gaze), with rare *events*: one of the
expressive `ANCHOR_EXPRESSIONS` (wide-open mouth with bared teeth, eye roll, strong frown, cheek
puff, ...) ramps in and out. Events are drawn from a Zipf-like long-tailed distribution, so the
most extreme ones are the rarest; frames where an event is at more than half strength carry the
*marginal* label. The same anchors drive FlexAvatar's data-distribution adjustment (`balance.py`).

All randomness comes from a `numpy.random.Generator`; the outputs are numpy arrays (except
`view_directions`, a traceable label of the input cameras).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.head.skinning import rodrigues
from flexavatar_jax.render import camera

FPS = 25.0

# name -> (expression coefficients by component name, jaw pose, eyes pose (left xyz, right xyz)).
ANCHOR_EXPRESSIONS: dict[str, tuple[dict[str, float], tuple[float, float, float], tuple[float, ...]]] = {
    "big_smile": ({"smile_left": 2.5, "smile_right": 2.5, "cheek_raise_left": 2.0, "cheek_raise_right": 2.0,
                   "eye_squint_left": 0.5, "eye_squint_right": 0.5}, (0.05, 0, 0), (0,) * 6),
    "surprise": ({"brow_raise_inner": 2.5, "brow_raise_outer_left": 2.5, "brow_raise_outer_right": 2.5,
                  "eye_wide_left": 2.0, "eye_wide_right": 2.0}, (0.3, 0, 0), (0,) * 6),
    "jaw_drop": ({"lips_part": 1.0}, (0.5, 0, 0), (0,) * 6),
    "strong_frown": ({"frown_left": 2.5, "frown_right": 2.5, "brow_furrow": 2.5, "brow_lower_left": 1.5,
                      "brow_lower_right": 1.5}, (0, 0, 0), (0,) * 6),
    "pucker_kiss": ({"lip_pucker": 2.5}, (0, 0, 0), (0,) * 6),
    "wink_left": ({"eye_blink_left": 1.0, "smile_left": 1.0}, (0, 0, 0), (0,) * 6),
    "wink_right": ({"eye_blink_right": 1.0, "smile_right": 1.0}, (0, 0, 0), (0,) * 6),
    "squint": ({"eye_squint_left": 1.5, "eye_squint_right": 1.5, "brow_lower_left": 1.0,
                "brow_lower_right": 1.0}, (0, 0, 0), (0,) * 6),
    "cheek_puff": ({"cheek_puff": 2.5, "lip_press": 1.0}, (0, 0, 0), (0,) * 6),
    "sneer": ({"nose_wrinkle": 2.5, "upper_lip_raise_left": 2.0, "upper_lip_raise_right": 2.0}, (0.05, 0, 0), (0,) * 6),
    "disgust": ({"nose_wrinkle": 2.0, "lower_lip_depress_left": 2.0, "lower_lip_depress_right": 2.0,
                 "brow_lower_left": 1.5, "brow_lower_right": 1.5}, (0.08, 0, 0), (0,) * 6),
    "smirk_left": ({"mouth_left_right": 2.5, "smile_left": 1.5}, (0, 0, 0), (0,) * 6),
    "smirk_right": ({"mouth_left_right": -2.5, "smile_right": 1.5}, (0, 0, 0), (0,) * 6),
    "lip_funnel": ({"lip_funnel": 2.5}, (0.15, 0, 0), (0,) * 6),
    "lips_pressed": ({"lip_press": 2.5, "chin_raise": 2.0}, (0, 0, 0), (0,) * 6),
    "fear": ({"lip_stretch_left": 2.5, "lip_stretch_right": 2.5, "eye_wide_left": 1.5, "eye_wide_right": 1.5,
              "brow_raise_inner": 2.0}, (0.12, 0, 0), (0,) * 6),
    "cheek_suck": ({"cheek_suck": 2.5, "lip_pucker": 1.0}, (0, 0, 0), (0,) * 6),
    "lip_suck": ({"lip_suck_upper": 2.0, "lip_suck_lower": 2.0}, (0, 0, 0), (0,) * 6),
    "yawn": ({"eye_squint_left": 1.0, "eye_squint_right": 1.0, "brow_raise_inner": 1.0}, (0.55, 0, 0), (0,) * 6),
    "jaw_sideways": ({"mouth_left_right": 1.0}, (0.1, 0.12, 0), (0,) * 6),
    "tongue_out": ({"tongue_out": 2.5}, (0.3, 0, 0), (0,) * 6),
    "eye_roll": ({"brow_raise_inner": 1.0}, (0, 0, 0), (-0.5, 0.0, 0.0, -0.5, 0.0, 0.0)),
    "scream": ({"bared_teeth": 1.5, "brow_furrow": 2.0, "eye_squint_left": 1.0, "eye_squint_right": 1.0},
               (0.5, 0, 0), (0,) * 6),
    "wide_open_bared_teeth": ({"bared_teeth": 2.0, "lip_stretch_left": 1.0, "lip_stretch_right": 1.0},
                              (0.45, 0, 0), (0,) * 6),
}
# Long tail: anchor k has probability ∝ 1/(k+1)^1.1, in the order above (most extreme last).
_ANCHOR_P = 1.0 / (np.arange(len(ANCHOR_EXPRESSIONS)) + 1.0) ** 1.1
ANCHOR_PROBABILITIES = _ANCHOR_P / _ANCHOR_P.sum()


def anchor_vector(name: str, expression_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expression [E], jaw [3], eyes [6]) of an anchor, for a head with these component names."""
    coeffs, jaw, eyes = ANCHOR_EXPRESSIONS[name]
    e = np.zeros(len(expression_names), np.float32)
    for k, v in coeffs.items():
        if k not in expression_names:
            raise ValueError(f"anchor {name!r} uses expression component {k!r}, which this head model lacks")
        e[expression_names.index(k)] = v
    return e, np.asarray(jaw, np.float32), np.asarray(eyes, np.float32)


@dataclasses.dataclass(frozen=True)
class Clip:
    """Per-frame parameters of one clip (T frames). `event [T]` is the anchor index active at the
    frame (-1 none), `marginal [T]` True where it is at more than half strength."""

    expression: np.ndarray  # [T,E]
    jaw_pose: np.ndarray  # [T,3]
    eyes_pose: np.ndarray  # [T,6]
    neck_pose: np.ndarray  # [T,3]
    global_pose: np.ndarray  # [T,3]
    translation: np.ndarray  # [T,3]
    event: np.ndarray  # [T] int
    marginal: np.ndarray  # [T] bool

    def __len__(self) -> int:
        return len(self.event)


def _smooth_noise(rng, n, dims, cutoff_frames, scale):
    """Low-pass Gaussian noise [n, dims] with unit-ish variance times `scale`."""
    pad = 4 * cutoff_frames
    white = rng.standard_normal((n + 2 * pad, dims))
    t = np.arange(-pad, pad + 1)
    kern = np.exp(-0.5 * (t / cutoff_frames) ** 2)
    kern /= np.sqrt(np.sum(kern ** 2))
    out = np.stack([np.convolve(white[:, d], kern, mode="same") for d in range(dims)], -1)
    return scale * out[pad:pad + n]


def _envelope(n, start, length):
    t = (np.arange(n) - start) / max(length, 1)
    return np.where((t >= 0) & (t <= 1), np.sin(np.pi * np.clip(t, 0, 1)) ** 2, 0.0)


def sample_clip(rng: np.random.Generator, num_frames: int, expression_names: list[str],
                event_rate: float = 0.012, blink_period_s: float = 3.5) -> Clip:
    """A long-tailed expression/pose trajectory; see the module docstring."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n, e = num_frames, len(expression_names)
    names = list(expression_names)
    semantic = [i for i, k in enumerate(names) if "residual" not in k]
    expr = np.zeros((n, e))
    # Talking: drift of the semantic components and a speech-like jaw rhythm.
    expr[:, semantic] = _smooth_noise(rng, n, len(semantic), 12, 0.35)
    talk = rng.uniform(0.0, 1.0) < 0.7
    t = np.arange(n) / FPS
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)) + 0.3 * rng.standard_normal(n), 0, None)
    jaw = np.zeros((n, 3))
    jaw[:, 0] = np.clip(0.02 + (0.07 * syllables if talk else 0.0) + _smooth_noise(rng, n, 1, 8, 0.02)[:, 0], 0.0, None)
    if talk and "lips_part" in names:
        expr[:, names.index("lips_part")] += 0.6 * syllables
    eyes = np.tile(_smooth_noise(rng, n, 2, 10, 0.12), (1, 3))[:, [0, 1, 2, 0, 1, 2]] * [1, 1, 0, 1, 1, 0]
    neck = _smooth_noise(rng, n, 3, 20, 0.08) * [1.0, 1.5, 0.5]
    glob = _smooth_noise(rng, n, 3, 30, 0.05) * [1.0, 1.5, 0.3]
    trans = _smooth_noise(rng, n, 3, 30, 0.004)
    # Blinks (frequent, not marginal).
    period = int(blink_period_s * FPS)
    start = int(rng.integers(0, period))
    while start < n:
        env = _envelope(n, start, 5)
        for name in ("eye_blink_left", "eye_blink_right"):
            if name in names:
                expr[:, names.index(name)] = np.maximum(expr[:, names.index(name)], env)
        start += int(period * rng.uniform(0.6, 1.4))
    # Rare expressive events.
    event = np.full(n, -1)
    strength = np.zeros(n)
    anchors = list(ANCHOR_EXPRESSIONS)
    num_events = rng.poisson(event_rate * n)
    for _ in range(num_events):
        k = int(rng.choice(len(anchors), p=ANCHOR_PROBABILITIES))
        length = int(rng.integers(10, 30))
        s0 = int(rng.integers(-length // 2, n))
        env = _envelope(n, s0, length) * rng.uniform(0.8, 1.2)
        a_e, a_jaw, a_eyes = anchor_vector(anchors[k], names)
        expr += env[:, None] * a_e
        jaw += env[:, None] * a_jaw
        eyes += env[:, None] * a_eyes
        take = env > strength
        event[take & (env > 0.05)] = k
        strength = np.maximum(strength, env)
    marginal = strength > 0.5
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return Clip(expression=f32(expr), jaw_pose=f32(jaw), eyes_pose=f32(eyes), neck_pose=f32(neck),
                global_pose=f32(glob), translation=f32(trans), event=event.astype(np.int32), marginal=marginal)


@dataclasses.dataclass(frozen=True)
class CameraSet:
    """`viewmats [n,4,4]` (OpenCV world->camera), `Ks [n,3,3]`, `azimuth_deg [n]` (0 = frontal,
    +90 = the subject's left, 180 = back), `elevation_deg [n]`, `distance [n]` metres."""

    viewmats: np.ndarray
    Ks: np.ndarray
    azimuth_deg: np.ndarray
    elevation_deg: np.ndarray
    distance: np.ndarray


HEAD_CENTER = np.array([0.0, -0.005, 0.01], np.float32)


def sample_cameras(rng: np.random.Generator, num: int, width: int, height: int, frontal_fraction: float = 0.6,
                   fov_range_deg=(14.0, 28.0), fill=(0.55, 0.8)) -> CameraSet:
    """Cameras from frontal to full 360°: `frontal_fraction` from N(0°, 35°) azimuth, the rest
    uniform over 360° (including back views); elevation N(0°, 12°); focal length from `fov_range_deg`;
    distance chosen so the head (~0.3 m tall) fills a `fill` fraction of the image height."""
    frontal = rng.uniform(size=num) < frontal_fraction
    az = np.where(frontal, rng.normal(0.0, 35.0, num), rng.uniform(-180.0, 180.0, num))
    az = (az + 180.0) % 360.0 - 180.0
    el = np.clip(rng.normal(0.0, 12.0, num), -35.0, 35.0)
    fov = rng.uniform(*fov_range_deg, num)
    frac = rng.uniform(*fill, num)
    dist = 0.3 / (2.0 * np.tan(np.deg2rad(fov) / 2.0) * frac)
    a, e = np.deg2rad(az), np.deg2rad(el)
    target = HEAD_CENTER + rng.normal(0.0, 0.01, (num, 3))
    eye = target + dist[:, None] * np.stack([np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)], -1)
    viewmats = np.asarray(camera.look_at(eye.astype(np.float32), target.astype(np.float32)))
    Ks = np.stack([np.asarray(camera.intrinsics_from_fov(float(f), width, height)) for f in fov])
    return CameraSet(viewmats=viewmats.astype(np.float32), Ks=Ks.astype(np.float32), azimuth_deg=az.astype(np.float32),
                     elevation_deg=el.astype(np.float32), distance=dist.astype(np.float32))


def view_directions(viewmats: Float[Array, "*b 4 4"], global_pose: Float[Array, "*b 3"],
                    neck_pose: Float[Array, "*b 3"], translation: Float[Array, "*b 3"]) -> Float[Array, "*b 3"]:
    """Where each camera stands as seen from the head: the unit vector from the head's centre to
    the camera centre, in the head's own frame (+z = the face direction and +x the subject's left, as
    in the template). Traceable (jnp); numpy inputs work too.

    The head's centre is `HEAD_CENTER` moved by the translation, its frame the template's rotated
    by global ∘ neck pose (about their joints in the model; the pivot offset changes the direction
    by well under a degree at the engine's camera distances). A lifter that predicts this from the
    pixels alone (`model.lifter.view_pose`) is trained against it (`loss.view_pose`)."""
    rot = rodrigues(jnp.asarray(global_pose)) @ rodrigues(jnp.asarray(neck_pose))
    offset = camera.camera_center(jnp.asarray(viewmats)) - (jnp.asarray(HEAD_CENTER) + jnp.asarray(translation))
    local = jnp.einsum("...ji,...j->...i", rot, offset)
    return local / jnp.maximum(jnp.linalg.norm(local, axis=-1, keepdims=True), 1e-9)


def turntable_cameras(num_frames: int, image_size: int, radius: float = 1.0, elevation_deg: float = 5.0,
                      fov_deg: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A 360° orbit around `HEAD_CENTER` (OpenCV cameras, first frame frontal, azimuth growing
    towards the subject's left, no repeated frame): `viewmats [T,4,4]`, `Ks [T,3,3]` for square
    `image_size` images. `radius` metres; the defaults frame the ~0.3 m head at ~85% of the height."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    viewmats = np.asarray(camera.orbit(num_frames, radius, target=HEAD_CENTER, elevation_deg=elevation_deg),
                          np.float32)
    K = np.asarray(camera.intrinsics_from_fov(fov_deg, image_size, image_size), np.float32)
    return viewmats, np.tile(K, (num_frames, 1, 1))


# Default front camera: 0.6 m in front of the head; a 32° vertical field of view frames the
# ~0.3 m head at ~85% of the image height (like the turntable).
FRONT_DISTANCE_M = 0.6
FRONT_FOV_DEG = 32.0


def front_camera(image_size: int, distance: float = FRONT_DISTANCE_M,
                 fov_deg: float = FRONT_FOV_DEG, height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(viewmat [4,4], K [3,3]) of a camera `distance` metres in front of the face (+z) looking
    at `HEAD_CENTER` (OpenCV; the subject's left, +x, is on the image's right), for images
    `image_size` wide and `height` (default `image_size`) high; `fov_deg` is vertical."""
    eye = HEAD_CENTER + np.array([0.0, 0.0, distance], np.float32)
    viewmat = np.asarray(camera.look_at(eye, HEAD_CENTER), np.float32)
    height = image_size if height is None else height
    return viewmat, np.asarray(camera.intrinsics_from_fov(fov_deg, image_size, height), np.float32)
