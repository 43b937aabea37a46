"""Synthetic identities and their ground-truth renders (the embedded default data).

An identity is a deterministic function of an integer id (and the world seed): shape coefficients,
a baked UV appearance with wrinkle maps and a hair style (`appearance.py`), and clips of
expression/pose trajectories (`motion.py`). Ground truth is rendered with the project's own Gaussian
rasterizer from dense surface Gaussians (one per valid UV texel, flat along the surface normal) plus
an off-surface hair shell, giving RGB, alpha and expected depth.

Identity ids: training ids are `0, 1, 2, ...` (a dataset of N training identities is ids
`[0, N)`, so scaling studies vary only N); held-out ids are `HELDOUT_OFFSET + k`, disjoint by
construction.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flexavatar_jax.data import appearance as app
from flexavatar_jax.data import motion
from flexavatar_jax.head import HeadModel, HeadParams, lbs
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.head.procedural import load_procedural_arrays, load_procedural_head
from flexavatar_jax.head.rotations import matrix_to_quat
from flexavatar_jax.render import rasterize

HELDOUT_OFFSET = 1_000_000
BACKGROUNDS = ("white", "black", "random")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """`uv_resolution`: Gaussians (and texture texels) per UV side; `image_size`: rendered
    resolution; `frames_per_clip` × `clips_per_identity` frames per identity; `shape_scale`: std of
    the shape coefficients; `background`: white | black | random (per image)."""

    seed: int = 0
    uv_resolution: int = 128
    image_size: int = 128
    frames_per_clip: int = 48
    clips_per_identity: int = 2
    shape_scale: float = 0.8
    background: str = "white"
    event_rate: float = 0.012

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        for field in ("uv_resolution", "image_size", "frames_per_clip", "clips_per_identity"):
            if getattr(self, field) < 1:
                raise ValueError(f"SyntheticConfig.{field} must be >= 1, got {getattr(self, field)}")

    @property
    def frames_per_identity(self) -> int:
        return self.frames_per_clip * self.clips_per_identity


def train_ids(num_identities: int) -> np.ndarray:
    return np.arange(num_identities)


def heldout_ids(num_identities: int) -> np.ndarray:
    return HELDOUT_OFFSET + np.arange(num_identities)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Everything that defines one synthetic person; arrays are numpy.

    Per-Gaussian arrays cover the surface samples followed by the hair-shell candidates (a fixed set
    for every identity, so render shapes are static; uncovered hair Gaussians have opacity 0)."""

    identity_id: int
    shape: np.ndarray  # [S]
    colors: np.ndarray  # [N,3] albedo (shading baked)
    wrinkles: np.ndarray  # [N,W]
    opacity: np.ndarray  # [N]
    hair_offset: np.ndarray  # [N] metres along the normal (0 on the skin)
    base_scale: np.ndarray  # [N,3] in the (t, b, n) frame
    clips: tuple[motion.Clip, ...]
    hair_style: str
    skin_tone: float

    def frame_params(self, clip: int, frame: int) -> HeadParams:
        c = self.clips[clip]
        return HeadParams(shape=jnp.asarray(self.shape), expression=jnp.asarray(c.expression[frame]),
                          global_pose=jnp.asarray(c.global_pose[frame]), neck_pose=jnp.asarray(c.neck_pose[frame]),
                          jaw_pose=jnp.asarray(c.jaw_pose[frame]), eyes_pose=jnp.asarray(c.eyes_pose[frame]),
                          translation=jnp.asarray(c.translation[frame]))

    def frame_index(self, flat_frame: int) -> tuple[int, int]:
        per_clip = len(self.clips[0])
        return flat_frame // per_clip, flat_frame % per_clip

    def gaussian_arrays(self) -> dict[str, jnp.ndarray]:
        return {k: jnp.asarray(getattr(self, k)) for k in ("colors", "wrinkles", "opacity", "hair_offset", "base_scale")}

    @property
    def num_frames(self) -> int:
        return sum(len(c) for c in self.clips)

    @property
    def marginal(self) -> np.ndarray:
        return np.concatenate([c.marginal for c in self.clips])

    @property
    def expressions(self) -> np.ndarray:
        return np.concatenate([c.expression for c in self.clips])


class SyntheticWorld:
    """The procedural head + sampling layout shared by all identities of a config.

    `identity(i)` builds (and caches) identity `i`; `render(identity, params, viewmats, Ks)` renders
    ground truth. Everything is deterministic in (config, id)."""

    def __init__(self, config: SyntheticConfig, model: HeadModel | None = None):
        self.config = config
        self.model = model or load_procedural_head()
        self.expression_names = [str(n) for n in load_procedural_arrays()["expression_names"]]
        if len(self.expression_names) != self.model.num_expression:
            raise ValueError("the synthetic engine needs the procedural head (its named expression components)")
        self.expression_index = {n: i for i, n in enumerate(self.expression_names)}
        k = config.uv_resolution
        surface = uvt.sampling_grid(self.model, k)
        hair_candidates = app.hair_region(self.model, k, "long") | app.hair_region(self.model, k, "fringe")
        in_hair = hair_candidates[surface.texel[:, 0], surface.texel[:, 1]]
        hair = surface.subset(in_hair)
        self.num_surface = len(surface)
        self.samples = uvt.UVSamples(
            face=np.concatenate([surface.face, hair.face]), bary=np.concatenate([surface.bary, hair.bary]),
            uv=np.concatenate([surface.uv, hair.uv]), texel=np.concatenate([surface.texel, hair.texel]),
            dense=np.concatenate([np.zeros(len(surface), bool), np.ones(len(hair), bool)]))
        # World extent of one texel along its longer UV direction: anisotropic charts (ears,
        # eyeballs) would leave gaps with the isotropic sqrt(area ratio).
        du, dv, _ = uvt.uv_jacobian(self.model, self.samples, self.model.v_template)
        edge = np.maximum(np.linalg.norm(np.asarray(du), axis=-1), np.linalg.norm(np.asarray(dv), axis=-1)) / k
        # Grazing-ray faces of the shrink-wrapped skin have huge derivatives: cap them so no
        # Gaussian spikes out of the surface.
        self._texel_edge = np.minimum(edge, 3.0 * np.median(edge))

    @property
    def num_gaussians(self) -> int:
        return len(self.samples)

    def _rng(self, identity_id: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, int(identity_id), stream])

    @functools.lru_cache(maxsize=64)
    def identity(self, identity_id: int) -> Identity:
        if identity_id < 0:
            raise ValueError(f"identity ids are non-negative, got {identity_id}")
        cfg = self.config
        rng = self._rng(identity_id, 0)
        shape = (rng.standard_normal(self.model.num_shape) * cfg.shape_scale).astype(np.float32)
        look = app.make_appearance(self.model, cfg.uv_resolution, self._rng(identity_id, 1))
        t = self.samples.texel
        n_s = self.num_surface
        colors = look.albedo[t[:, 0], t[:, 1]].copy()
        wrinkles = look.wrinkles[t[:, 0], t[:, 1]].copy()
        edge = self._texel_edge
        base_scale = np.stack([0.6 * edge, 0.6 * edge, 0.12 * edge], -1)
        opacity = np.full(len(t), 0.99, np.float32)
        hair_offset = np.zeros(len(t), np.float32)
        covered = app.hair_region(self.model, cfg.uv_resolution, look.hair_style)[t[n_s:, 0], t[n_s:, 1]]
        hrng = self._rng(identity_id, 2)
        p = np.asarray(self.samples.interpolate(self.model.faces, self.model.v_template))[n_s:]
        streak = app.fourier_noise(hrng, p * [1.0, 0.15, 1.0], (0.004, 0.012))
        colors[n_s:] = np.clip(look.hair_color * (0.8 + 0.25 * streak[:, None]), 0, 1)
        wrinkles[n_s:] = 0.0
        opacity[n_s:] = np.where(covered, 0.92, 0.0)
        hair_offset[n_s:] = np.where(covered, look.hair_thickness * (1.0 + 0.25 * np.clip(streak, -2, 2)), 0.0)
        base_scale[n_s:] = np.stack([1.3 * edge[n_s:], 2.4 * edge[n_s:], 0.5 * edge[n_s:]], -1)
        clip_rng = self._rng(identity_id, 3)
        clips = tuple(motion.sample_clip(clip_rng, cfg.frames_per_clip, self.expression_names, cfg.event_rate)
                      for _ in range(cfg.clips_per_identity))
        return Identity(identity_id=int(identity_id), shape=shape, colors=colors.astype(np.float32),
                        wrinkles=wrinkles.astype(np.float32), opacity=opacity, hair_offset=hair_offset,
                        base_scale=base_scale.astype(np.float32), clips=clips, hair_style=look.hair_style,
                        skin_tone=look.skin_tone)

    def gaussians(self, ident: "Identity | dict", params: HeadParams) -> dict[str, Float[Array, "..."]]:
        """Posed ground-truth Gaussians (jnp; jit-able in the identity arrays and `params`)."""
        a = ident.gaussian_arrays() if isinstance(ident, Identity) else ident
        posed = lbs(self.model, params).vertices
        frames = uvt.tangent_frames(self.model, self.samples, posed)
        surface = self.samples.interpolate(self.model.faces, posed)
        means = surface + frames[:, :, 2] * a["hair_offset"][:, None]
        act = app.wrinkle_activations(params.expression, params.jaw_pose, self.expression_index)
        shade = 1.0 - jnp.clip(a["wrinkles"] @ act, 0.0, 0.85)
        return dict(means=means, quats=matrix_to_quat(frames), scales=a["base_scale"],
                    opacities=a["opacity"], colors=a["colors"] * shade[:, None])

    def backgrounds(self, rng: np.random.Generator, num: int) -> np.ndarray:
        if self.config.background == "white":
            return np.ones((num, 3), np.float32)
        if self.config.background == "black":
            return np.zeros((num, 3), np.float32)
        return rng.uniform(0.0, 1.0, (num, 3)).astype(np.float32)

    def render(self, ident: Identity, params: HeadParams, viewmats, Ks, backgrounds=None):
        """RGB [V,H,W,3], alpha [V,H,W,1], expected depth [V,H,W,1] (0 where empty) of one frame,
        seen by V cameras. `backgrounds [V,3]` defaults to white. Compiled once per world."""
        viewmats = jnp.asarray(viewmats)
        bg = jnp.ones((viewmats.shape[0], 3)) if backgrounds is None else jnp.asarray(backgrounds)
        return self._render_fn(ident.gaussian_arrays(), params, viewmats, jnp.asarray(Ks), bg)

    @functools.cached_property
    def _render_fn(self):
        size = self.config.image_size

        @jax.jit
        def fn(arrays, params, viewmats, Ks, bg):
            g = self.gaussians(arrays, params)
            out, alpha = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                                   size, size, backgrounds=bg, render_mode="RGB+D")
            return out[..., :3], alpha, out[..., 3:]

        return fn
