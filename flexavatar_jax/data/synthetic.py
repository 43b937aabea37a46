"""Synthetic identities and their ground-truth renders (the embedded default data), on the device.

An identity is a deterministic function of an integer id (and the world seed):

* its **look** — shape coefficients, the baked UV appearance with wrinkle maps and a hair style —
  is `appearance.synthesize_identity`, a pure jittable JAX function of (seed, id): nothing about
  an identity is computed on the host, and the same id gives bitwise the same arrays under jit,
  vmap and at any batch position;
* its **motion** — clips of expression/pose trajectories (`motion.py`) — stays on the host, drawn
  from `numpy.random.default_rng([seed, id, 3])`: a clip costs well under a millisecond, the
  host needs the frames' expression codes anyway to balance the expression distribution
  (`balance.py`) and to label marginal frames, and what it sends the device per view is a few
  dozen numbers (the frame's parameters, a camera, a background colour).

Ground truth is rendered with the project's own Gaussian rasterizer from dense surface Gaussians
(one per valid UV texel, flat along the surface normal) plus an off-surface hair shell, giving RGB,
alpha and expected depth. `render_views` is the one engine: a jitted function of (ids, per-view
parameters, cameras, backgrounds) that synthesises each row's identity and renders all its views
(vmap over rows and views); training (`ground_truth.py`, on the device right before the step),
the held-out eval sets, `make-dataset` and `preview-data` all render through it.

Identity ids: training ids are `0, 1, 2, ...` (a dataset of N training identities is ids
`[0, N)`, so scaling studies vary only N); held-out ids are `HELDOUT_OFFSET + k`, disjoint by
construction; every id is below `appearance.MAX_IDENTITY_ID`.
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
from flexavatar_jax.render.common import GSPLAT_TILE_SIZE, finish_images

HELDOUT_OFFSET = 1_000_000
BACKGROUNDS = ("white", "black", "random")
# Version of what an id renders to: part of every cache key of rendered data (2: the JAX engine).
ENGINE_VERSION = 2
_MIX_DEFAULTS = app.FeatureMix()


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """`uv_resolution`: Gaussians (and texture texels) per UV side; `image_size`: rendered
    resolution (a multiple of the renderer's 16-pixel tile); `frames_per_clip` ×
    `clips_per_identity` frames per identity; `shape_scale`: std of the shape coefficients;
    `background`: white | black | random (per image). The feature mix (`appearance.FeatureMix`):
    `hair_style_probs` over `appearance.HAIR_STYLES`, `beard_probs` over `appearance.BEARD_STRENGTHS`,
    `freckle_count_probs` over `appearance.FRECKLE_COUNTS`, `skin_tone_range` (0 light … 1 dark)."""

    seed: int = 0
    uv_resolution: int = 128
    image_size: int = 128
    frames_per_clip: int = 48
    clips_per_identity: int = 2
    shape_scale: float = 0.8
    background: str = "white"
    event_rate: float = 0.012
    hair_style_probs: tuple[float, ...] = _MIX_DEFAULTS.hair_style_probs
    beard_probs: tuple[float, ...] = _MIX_DEFAULTS.beard_probs
    freckle_count_probs: tuple[float, ...] = _MIX_DEFAULTS.freckle_count_probs
    skin_tone_range: tuple[float, float] = _MIX_DEFAULTS.skin_tone_range

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        for field in ("uv_resolution", "image_size", "frames_per_clip", "clips_per_identity"):
            if getattr(self, field) < 1:
                raise ValueError(f"SyntheticConfig.{field} must be >= 1, got {getattr(self, field)}")
        tile = GSPLAT_TILE_SIZE  # a multiple of every platform's default tile
        if self.image_size % tile:
            raise ValueError(f"SyntheticConfig.image_size={self.image_size} is not a multiple of the renderer's "
                             f"{tile}-pixel tile (use e.g. {max(tile, self.image_size // tile * tile)})")
        self.feature_mix()  # validates the mix

    def feature_mix(self) -> app.FeatureMix:
        return app.FeatureMix(hair_style_probs=tuple(self.hair_style_probs), beard_probs=tuple(self.beard_probs),
                              freckle_count_probs=tuple(self.freckle_count_probs),
                              skin_tone_range=tuple(self.skin_tone_range))

    @property
    def frames_per_identity(self) -> int:
        return self.frames_per_clip * self.clips_per_identity


def train_ids(num_identities: int) -> np.ndarray:
    return np.arange(num_identities)


def heldout_ids(num_identities: int) -> np.ndarray:
    return HELDOUT_OFFSET + np.arange(num_identities)


@dataclasses.dataclass(frozen=True)
class IdentityMotion:
    """The host half of an identity: its clips (numpy), and what the data pipeline reads of them."""

    identity_id: int
    clips: tuple[motion.Clip, ...]

    def frame_index(self, flat_frame: int) -> tuple[int, int]:
        per_clip = len(self.clips[0])
        return flat_frame // per_clip, flat_frame % per_clip

    def frame_params(self, clip: int, frame: int, shape) -> HeadParams:
        """The frame's head parameters (numpy float32) on the shape coefficients `shape`."""
        c = self.clips[clip]
        return HeadParams(shape=np.asarray(shape, np.float32), expression=c.expression[frame],
                          global_pose=c.global_pose[frame], neck_pose=c.neck_pose[frame], jaw_pose=c.jaw_pose[frame],
                          eyes_pose=c.eyes_pose[frame], translation=c.translation[frame])

    def flat_frame_params(self, flat_frame: int, shape) -> HeadParams:
        return self.frame_params(*self.frame_index(flat_frame), shape)

    @property
    def num_frames(self) -> int:
        return sum(len(c) for c in self.clips)

    @property
    def marginal(self) -> np.ndarray:
        return self.concatenated("marginal")

    @property
    def expressions(self) -> np.ndarray:
        return self.concatenated("expression")

    def concatenated(self, field: str) -> np.ndarray:
        return np.concatenate([getattr(c, field) for c in self.clips])


@dataclasses.dataclass(frozen=True)
class Identity(IdentityMotion):
    """Everything that defines one synthetic person, on the host (numpy): the motion plus a copy of
    the arrays `appearance.synthesize_identity` made on the device. For inspection, previews,
    `make-dataset` and tests; training never brings an identity to the host.

    Per-Gaussian arrays cover the surface samples followed by the hair-shell candidates (a fixed set
    for every identity, so render shapes are static; uncovered hair Gaussians have opacity 0)."""

    shape: np.ndarray = None  # [S]
    colors: np.ndarray = None  # [N,3] albedo (shading baked)
    wrinkles: np.ndarray = None  # [N,W]
    opacity: np.ndarray = None  # [N]
    hair_offset: np.ndarray = None  # [N] metres along the normal (0 on the skin)
    base_scale: np.ndarray = None  # [N,3] in the (t, b, n) frame
    hair_style: str = ""
    skin_tone: float = 0.0
    beard: float = 0.0

    def frame_params(self, clip: int, frame: int, shape=None) -> HeadParams:
        """The frame's head parameters on this identity's shape (or `shape`)."""
        return super().frame_params(clip, frame, self.shape if shape is None else shape)

    def gaussian_arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in GAUSSIAN_FIELDS}


GAUSSIAN_FIELDS = ("shape", "colors", "wrinkles", "opacity", "hair_offset", "base_scale")


class SyntheticWorld:
    """The procedural head, its sample layout and the identity synthesis shared by all identities
    of a config.

    `identity_arrays(ids)` synthesises identities on the device; `render_views(ids, ...)` renders
    ground truth (the engine); `identity_motion(i)` is an identity's host half (clips); `identity(i)`
    brings everything of one identity to the host. Deterministic in (config, id)."""

    def __init__(self, config: SyntheticConfig, model: HeadModel | None = None):
        self.config = config
        self.model = model or load_procedural_head()
        self.expression_names = [str(n) for n in load_procedural_arrays()["expression_names"]]
        if len(self.expression_names) != self.model.num_expression:
            raise ValueError("the synthetic engine needs the procedural head (its named expression components)")
        self.expression_index = {n: i for i, n in enumerate(self.expression_names)}
        self.tables = app.identity_tables(self.model, config.uv_resolution, config.shape_scale)
        self.mix = config.feature_mix()
        self.samples: uvt.UVSamples = self.tables.samples
        self.num_surface = int(self.tables.num_surface)

    @property
    def num_gaussians(self) -> int:
        return len(self.samples)

    # ------------------------------------------------------------------------------------ identities
    def _synthesize(self, ids: Array) -> dict[str, Array]:
        """Traceable: the identities of `ids [B]` (int32), a dict of [B, ...] arrays.

        One identity at a time (`lax.map`): every batch size and position runs the same compiled
        loop body, so an id's arrays are bitwise the same in any batch. (A vmapped batch lets
        XLA:CPU pick another vector/scalar code path per batch size — measured: last-bit
        differences in the colours — and it is not faster here: 0.45 vs 0.66 ms per identity at
        K=64.) A one-id batch is padded to two, as XLA inlines a one-trip loop into its caller."""
        one = functools.partial(app.synthesize_identity, self.tables, self.mix, self.config.seed)
        n = ids.shape[0]
        out = jax.lax.map(one, ids if n > 1 else jnp.concatenate([ids, ids]))
        return jax.tree.map(lambda x: x[:n], out)

    @functools.cached_property
    def _identity_fn(self):
        return jax.jit(self._synthesize)

    def identity_arrays(self, ids) -> dict[str, Array]:
        """Identities `ids` (host integers, validated) synthesised on the device: dict of [B, ...]."""
        ids = app.check_identity_ids(ids)
        return self._identity_fn(jnp.asarray(ids, jnp.int32))

    @functools.lru_cache(maxsize=4096)
    def identity_motion(self, identity_id: int) -> IdentityMotion:
        """The identity's clips (host; cached: a few kB each)."""
        app.check_identity_ids([identity_id])
        rng = np.random.default_rng([self.config.seed, int(identity_id), 3])
        clips = tuple(motion.sample_clip(rng, self.config.frames_per_clip, self.expression_names, self.config.event_rate)
                      for _ in range(self.config.clips_per_identity))
        return IdentityMotion(identity_id=int(identity_id), clips=clips)

    @functools.lru_cache(maxsize=64)
    def identity(self, identity_id: int) -> Identity:
        """Everything of one identity on the host (see `Identity`)."""
        arrays = jax.device_get(self.identity_arrays([identity_id]))
        row = {k: np.asarray(v[0]) for k, v in arrays.items()}
        return Identity(identity_id=int(identity_id), clips=self.identity_motion(identity_id).clips,
                        **{k: row[k] for k in GAUSSIAN_FIELDS},
                        hair_style=app.HAIR_STYLES[int(row["hair_style"])], skin_tone=float(row["skin_tone"]),
                        beard=float(row["beard"]))

    # ------------------------------------------------------------------------------------ rendering
    def gaussians(self, arrays: dict, params: HeadParams) -> dict[str, Float[Array, "..."]]:
        """Posed ground-truth Gaussians of one identity (`arrays`: its `GAUSSIAN_FIELDS`, or an
        `Identity`) in one frame (jnp; jit-able)."""
        a = arrays.gaussian_arrays() if isinstance(arrays, Identity) else arrays
        posed = lbs(self.model, params).vertices
        frames = uvt.tangent_frames(self.model, self.samples, posed)
        surface = self.samples.interpolate(self.model.faces, posed)
        means = surface + frames[:, :, 2] * a["hair_offset"][:, None]
        act = app.wrinkle_activations(params.expression, params.jaw_pose, self.expression_index)
        shade = 1.0 - jnp.clip(a["wrinkles"] @ act, 0.0, 0.85)
        return dict(means=means, quats=matrix_to_quat(frames), scales=a["base_scale"],
                    opacities=a["opacity"], colors=a["colors"] * shade[:, None])

    def _render_rows(self, arrays: dict, params: HeadParams, viewmats, Ks, backgrounds, with_depth: bool,
                     visible=None):
        """Traceable core: rows of identities (`arrays` [B, ...]) seen in views with their own
        parameters (`params` [B,V,...], shape included) -> rgb [B,V,H,W,3], alpha [B,V,H,W,1],
        depth [B,V,H,W,1] or None. Views where `visible [B,V]` is False (padded input slots) are
        not drawn: every Gaussian is culled, so they come out as the background.

        On a CPU the views run one after another (`lax.map`): each view's tile loops then stop at
        its own length, where a vmapped batch runs every loop to the longest one in the batch
        (measured on 2 cores, 4 examples × 8 views with 10 of 16 input slots real, 128², K = 128:
        1.16 s, against 1.80 s vmapped with the sequential compositor, the fastest vmapped; 64²,
        6 views: 0.29 against 0.39 s), and a hidden view is not rendered at all (`lax.cond`: its
        background, alpha 0 and depth 0, what culling every Gaussian gives; rendered culled it
        still cost 6.5 ms of posing, sorting and empty tiles at 128², K = 128, against 28 ms for
        a real view). Elsewhere the views are vmapped, hidden ones culled."""
        size = self.config.image_size
        mode = "RGB+D" if with_depth else "RGB"
        b, v = viewmats.shape[:2]
        visible = jnp.ones((b, v), bool) if visible is None else visible

        def view(a, p, viewmat, K, bg, shown):
            g = self.gaussians(a, p)
            means = jnp.where(shown, g["means"], jnp.nan)  # non-finite Gaussians are culled
            out, alpha = rasterize(means, g["quats"], g["scales"], g["opacities"], g["colors"], viewmat[None],
                                   K[None], size, size, backgrounds=bg[None], render_mode=mode)
            return out[0, ..., :3], alpha[0], (out[0, ..., 3:] if with_depth else None)

        if jax.default_backend() != "cpu":
            per_row = jax.vmap(view, in_axes=(None, 0, 0, 0, 0, 0))
            return jax.vmap(per_row)(arrays, params, viewmats, Ks, backgrounds, visible)
        flat = lambda x: x.reshape(b * v, *x.shape[2:])  # noqa: E731
        rows = jnp.repeat(jnp.arange(b), v)

        def empty(bg):  # what a render with every Gaussian culled gives (nothing composited, T = 1)
            nothing = jnp.zeros((1, size, size, 4 if with_depth else 3), jnp.float32)
            out, alpha = finish_images(nothing, jnp.ones((1, size, size, 1), jnp.float32), 3, mode, bg[None])
            return out[0, ..., :3], alpha[0], (out[0, ..., 3:] if with_depth else None)

        def one(args):
            row, p, viewmat, K, bg, shown = args
            return jax.lax.cond(shown, lambda: view(jax.tree.map(lambda x: x[row], arrays), p, viewmat, K, bg, True),
                                lambda: empty(bg))

        out = jax.lax.map(one, (rows, jax.tree.map(flat, params), flat(viewmats), flat(Ks), flat(backgrounds),
                                flat(visible)))
        return jax.tree.map(lambda x: x.reshape(b, v, *x.shape[1:]), out)

    def render_views_traced(self, ids: Array, params: HeadParams, viewmats, Ks, backgrounds, with_depth: bool = False,
                            visible=None):
        """Traceable (call it inside jit): identities `ids [B]` (int32, validated by the caller)
        synthesised and rendered in V views each. `params` [B,V,...] without a meaningful `shape`
        (each row's identity supplies its own); `visible [B,V]` (default all) marks the views to
        draw (the others come out as the background). -> dict(rgb, alpha, depth (with_depth),
        shape [B,S])."""
        arrays = self._synthesize(ids)
        shape = jnp.broadcast_to(arrays["shape"][:, None], (*viewmats.shape[:2], arrays["shape"].shape[-1]))
        params = params.replace(shape=shape)
        rgb, alpha, depth = self._render_rows(arrays, params, viewmats, Ks, backgrounds, with_depth, visible)
        out = dict(rgb=rgb, alpha=alpha, shape=arrays["shape"])
        if with_depth:
            out["depth"] = depth
        return out

    @functools.cached_property
    def _render_views_fn(self):
        return jax.jit(self.render_views_traced, static_argnames=("with_depth",))

    def render_views(self, ids, params: HeadParams, viewmats, Ks, backgrounds=None, with_depth: bool = False,
                     visible=None):
        """Ground truth of rows of views: identity `ids[b]` in V views `(params[b, v], viewmats[b, v],
        Ks[b, v], backgrounds[b, v])` (host or device arrays; `params.shape` is ignored: each row's
        identity has its own); only the views where `visible [B,V]` (default all) is True are drawn,
        the others are the background. Returns device arrays dict(rgb [B,V,H,W,3], alpha [B,V,H,W,1],
        shape [B,S], and with `with_depth` depth [B,V,H,W,1], expected depth in metres, 0 where
        nothing is hit). Backgrounds default to white."""
        ids = app.check_identity_ids(ids)
        viewmats = jnp.asarray(viewmats, jnp.float32)
        if viewmats.ndim != 4 or viewmats.shape[0] != len(ids):
            raise ValueError(f"viewmats must be [B={len(ids)}, V, 4, 4], got {viewmats.shape}")
        bg = jnp.ones((*viewmats.shape[:2], 3)) if backgrounds is None else jnp.asarray(backgrounds, jnp.float32)
        # The shape is each row's identity's own (`render_views_traced` sets it).
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params.replace(shape=None))
        visible = jnp.ones(viewmats.shape[:2], bool) if visible is None else jnp.asarray(visible, bool)
        return self._render_views_fn(jnp.asarray(ids, jnp.int32), params, viewmats, jnp.asarray(Ks, jnp.float32),
                                     bg, with_depth=with_depth, visible=visible)

    @functools.cached_property
    def _render_identity_fn(self):
        @jax.jit
        def fn(arrays, params, viewmats, Ks, bg):
            lead = lambda x: x[None]  # noqa: E731
            rgb, alpha, depth = self._render_rows(jax.tree.map(lead, arrays), jax.tree.map(lead, params),
                                                  viewmats[None], Ks[None], bg[None], with_depth=True)
            return rgb[0], alpha[0], depth[0]

        return fn

    def render(self, ident: Identity, params: HeadParams, viewmats, Ks, backgrounds=None):
        """RGB [V,H,W,3], alpha [V,H,W,1], expected depth [V,H,W,1] (0 where empty) of one frame of
        a host `Identity` (with `params`, shape included, e.g. a custom expression) seen by V
        cameras; the same core as `render_views`. `backgrounds [V,3]` defaults to white."""
        viewmats = jnp.asarray(viewmats, jnp.float32)
        v = viewmats.shape[0]
        bg = jnp.ones((v, 3)) if backgrounds is None else jnp.asarray(backgrounds, jnp.float32)
        per_view = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (v, *np.shape(x))), params)
        arrays = {k: jnp.asarray(a) for k, a in ident.gaussian_arrays().items()}
        return self._render_identity_fn(arrays, per_view, viewmats, jnp.asarray(Ks, jnp.float32), bg)

    def backgrounds(self, rng: np.random.Generator, num: int) -> np.ndarray:
        if self.config.background == "white":
            return np.ones((num, 3), np.float32)
        if self.config.background == "black":
            return np.zeros((num, 3), np.float32)
        return rng.uniform(0.0, 1.0, (num, 3)).astype(np.float32)
