"""Face tracking: fit the head model's expression and pose to a video's 2D face landmarks.

    from flexavatar_jax.data import tracking
    result = tracking.track_video("talk.mp4", out="talk_motion.npz")    # what `animate --motion` reads
    result.motion            # HeadParams [T] (shape: the identity fitted once, tiled)

Per frame: 68 iBUG landmarks from `portrait.detect_faces` (dlib), then a jitted
Levenberg-Marquardt fit (Gauss-Newton steps on `jax.jacfwd` Jacobians, Marquardt damping
adapted by accepted/rejected steps, a fixed iteration count so it compiles once) of expression,
jaw, eyes, neck and global pose and translation to the landmarks through the
`LandmarkEmbedding` (`landmarks.py`), warm-started from the previous frame.

**Camera.** A fixed pinhole: principal point at the image centre, square pixels, vertical field
of view `fov_deg` (default `DEFAULT_FOV_DEG` = the synthetic engine's front camera, 32°; pass the
real one when known: a phone's front camera is ~45-60° vertically in portrait video), placed
`motion.FRONT_DISTANCE_M` in front of the head like that camera. An assumed FOV trades off
against depth and head size, which the reprojection hardly sees at portrait distances.
Translation is fitted in that camera and then *recentred*: the output motion's translation is
relative to the mean head position of the identity frames, and the camera stored with it
(`viewmat`) is moved by the same amount, so `project(lbs(frame), viewmat, K)` still reproduces
the video while `animate` (whose camera looks at the head's rest position) keeps the head in view.

**Priors** (`Priors`, traced, so changing them does not recompile). Landmark residuals are
measured in units of `landmark_sigma` × the face's size (the diagonal of the landmarks' box), so
the priors mean the same at any resolution: expression ~ N(0, `expression`²) per coefficient (the
procedural head's coefficients are "one standard deformation" per unit; 68 sparse landmarks
cannot see many components, e.g. the tongue or a cheek puff, and the prior keeps those near 0);
jaw rotation about x (opening) is free, sideways and twist are held to `jaw_side`; the neck pose
is held near 0 (from face landmarks neck and global rotation differ only by their pivot, which
translation absorbs: the global pose carries the rigid head motion); **eyes**: the iBUG markup
has no pupils, so gaze is not observable and the eye poses stay at 0 (their prior keeps the
system well-posed; a detector with iris landmarks would add them as residuals). Frames after the
first also pull towards the previous frame's fit (`temporal_*`).

**Identity.** The shape coefficients are fitted once, over the first `identity_frames` frames
with a face: a joint fit of the shared shape and those frames' unknowns (shape and expression are
coupled, so they are solved together; `fit_shape_and_frames`), shape prior N(0, `shape`²); the
per-frame fits of the whole video then use that shape.

**Jaw contour.** Landmarks 0-16 slide over the surface as the head turns: each is re-chosen at
every Gauss-Newton step where its candidate curve crosses the occluding contour seen from the
camera (`contour_choice`), and held fixed within the step.

**Smoothing.** The fitted parameters pass a one-euro filter (Casiez et al., CHI 2012): a
first-order low-pass whose cutoff rises with the signal's speed, so a still face does not jitter
while fast motion (a jaw opening) lags little; causal, so it also works on a live stream.
`SMOOTHING` holds the (min cutoff Hz, speed coefficient) per parameter group.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, UInt8

from flexavatar_jax.data import landmarks as lmk
from flexavatar_jax.data import media
from flexavatar_jax.data import motion as motion_lib
from flexavatar_jax.data.landmarks import LandmarkEmbedding
from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadModel, HeadParams
from flexavatar_jax.head.skinning import forward_kinematics, rodrigues
from flexavatar_jax.render import camera as camera_lib

PathLike = str | os.PathLike

DEFAULT_FOV_DEG = motion_lib.FRONT_FOV_DEG
# One-euro filter (min cutoff Hz, speed coefficient) per group.
SMOOTHING = dict(expression=(2.0, 0.5), jaw=(8.0, 2.0), eyes=(2.0, 0.5), neck=(3.0, 0.5), global_pose=(3.0, 0.5),
                 translation=(3.0, 5.0))
COLD_ITERATIONS = 40
WARM_ITERATIONS = 8
IDENTITY_FRAMES = 16
# A warm-started fit worse than this (reprojection RMS in face-box units) is redone from scratch.
REINIT_ERROR = 0.05


# ---------------------------------------------------------------------------------------------- the landmark head
@dataclasses.dataclass(frozen=True)
class LandmarkHead:
    """The head model restricted to the M vertices the landmarks touch (so a fit evaluates a few
    hundred vertices, not all), plus where each landmark sits on them. Joints are linear in shape
    and expression (`J_regressor` is), so their bases are precomputed on the full mesh.

    `corners [L,3]` (into the M vertices) and `barycentrics [L,3]` per landmark; `contour [C]`
    landmark ids with `contour_corners [C,K,3]`, `contour_barycentrics [C,K,3]`, `contour_level [C]`
    (see `LandmarkEmbedding`); `weights [L]`."""

    v_template: Float[Array, "M 3"]
    shapedirs: Float[Array, "M 3 S"]
    exprdirs: Float[Array, "M 3 E"]
    posedirs: Float[Array, "M 3 P"]
    lbs_weights: Float[Array, "M J"]
    joint_template: Float[Array, "J 3"]
    joint_shapedirs: Float[Array, "J 3 S"]
    joint_exprdirs: Float[Array, "J 3 E"]
    corners: Int[Array, "L 3"]
    barycentrics: Float[Array, "L 3"]
    weights: Float[Array, " L"]
    contour: Int[Array, " C"]
    contour_corners: Int[Array, "C K 3"]
    contour_barycentrics: Float[Array, "C K 3"]
    contour_level: Float[Array, " C"]
    vertex_ids: tuple[int, ...] = dataclasses.field(default=(), metadata=dict(static=True))
    parents: tuple[int, ...] = dataclasses.field(default=(-1, 0, 1, 1, 1), metadata=dict(static=True))

    @property
    def num_landmarks(self) -> int:
        return self.corners.shape[0]

    @property
    def num_shape(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_expression(self) -> int:
        return self.exprdirs.shape[-1]


jax.tree_util.register_dataclass(
    LandmarkHead,
    data_fields=[f.name for f in dataclasses.fields(LandmarkHead) if not f.metadata.get("static")],
    meta_fields=[f.name for f in dataclasses.fields(LandmarkHead) if f.metadata.get("static")],
)


def landmark_head(model: HeadModel, embedding: LandmarkEmbedding) -> LandmarkHead:
    """`model` restricted to the vertices of `embedding` (checked against the model's mesh)."""
    embedding.validate().check_model(model)
    faces = np.asarray(model.faces)
    corner_v = faces[embedding.face_index]  # [L,3]
    cand_v = faces[embedding.contour_face_index]  # [C,K,3]
    ids, inverse = np.unique(np.concatenate([corner_v.ravel(), cand_v.ravel()]), return_inverse=True)
    n = corner_v.size
    take = lambda a: jnp.asarray(np.asarray(a)[ids], jnp.float32)  # noqa: E731
    j_reg = np.asarray(model.J_regressor, np.float64)
    return LandmarkHead(
        v_template=take(model.v_template), shapedirs=take(model.shapedirs), exprdirs=take(model.exprdirs),
        posedirs=take(model.posedirs), lbs_weights=take(model.lbs_weights),
        joint_template=jnp.asarray(j_reg @ np.asarray(model.v_template, np.float64), jnp.float32),
        joint_shapedirs=jnp.asarray(np.einsum("jv,vcs->jcs", j_reg, np.asarray(model.shapedirs)), jnp.float32),
        joint_exprdirs=jnp.asarray(np.einsum("jv,vce->jce", j_reg, np.asarray(model.exprdirs)), jnp.float32),
        corners=jnp.asarray(inverse[:n].reshape(corner_v.shape), jnp.int32),
        barycentrics=jnp.asarray(embedding.barycentrics, jnp.float32),
        weights=jnp.asarray(embedding.weights, jnp.float32),
        contour=jnp.asarray(embedding.contour, jnp.int32),
        contour_corners=jnp.asarray(inverse[n:].reshape(cand_v.shape), jnp.int32),
        contour_barycentrics=jnp.asarray(embedding.contour_barycentrics, jnp.float32),
        contour_level=jnp.asarray(embedding.contour_level, jnp.float32),
        vertex_ids=tuple(int(i) for i in ids), parents=tuple(model.parents),
    )


def posed_vertices(head: LandmarkHead, params: HeadParams, index: Int[Array, "*n"] | None = None) -> Float[Array, "*n 3"]:
    """The landmark vertices `index` (into the M; default all) posed exactly as `skinning.lbs`
    poses them (unbatched params). Only the requested rows of the bases are touched."""
    take = (lambda a: a) if index is None else (lambda a: a[index])  # noqa: E731
    shaped = (take(head.v_template) + jnp.einsum("...cs,s->...c", take(head.shapedirs), params.shape)
              + jnp.einsum("...ce,e->...c", take(head.exprdirs), params.expression))
    joints = (head.joint_template + jnp.einsum("jcs,s->jc", head.joint_shapedirs, params.shape)
              + jnp.einsum("jce,e->jc", head.joint_exprdirs, params.expression))
    rotations = rodrigues(params.full_pose())
    pose_feature = (rotations[1:] - jnp.eye(3, dtype=rotations.dtype)).reshape(-1)
    posed_rest = shaped + jnp.einsum("...cp,p->...c", take(head.posedirs), pose_feature)
    world, _ = forward_kinematics(rotations, joints, head.parents)
    rel_t = world[:, :3, 3] - jnp.einsum("jab,jb->ja", world[:, :3, :3], joints)
    weights = take(head.lbs_weights)
    blended_r = jnp.einsum("...j,jab->...ab", weights, world[:, :3, :3])
    blended_t = weights @ rel_t
    return jnp.einsum("...ab,...b->...a", blended_r, posed_rest) + blended_t + params.translation


@dataclasses.dataclass(frozen=True)
class ContourChoice:
    """Per dynamic contour landmark: the candidates `first [C]` (where the facing first drops to the
    level) and `first - 1`, and the interpolation weight `t [C]` towards `first`."""

    first: Int[Array, " C"]
    t: Float[Array, " C"]


jax.tree_util.register_dataclass(ContourChoice, data_fields=["first", "t"], meta_fields=[])


def contour_choice(head: LandmarkHead, params: HeadParams, camera_center: Float[Array, "3"]) -> ContourChoice:
    """Where each contour landmark's candidate curve first turns away from the camera (its
    facing, unit normal · unit direction to the camera, drops to its level), seen from
    `camera_center` (world); curves that never get there take their last candidate. Not
    differentiated: a fit moves the chosen surface points, it does not differentiate the choice."""
    params = jax.lax.stop_gradient(params)
    tri = posed_vertices(head, params, head.contour_corners)  # [C,K,3,3]
    cand = jnp.einsum("ckn,cknd->ckd", head.contour_barycentrics, tri)
    normal = jnp.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    normal = normal / jnp.maximum(jnp.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    to_cam = camera_center - cand
    to_cam = to_cam / jnp.linalg.norm(to_cam, axis=-1, keepdims=True)
    facing = jnp.sum(normal * to_cam, -1)  # [C,K]
    level = head.contour_level
    below = facing <= level[:, None]
    found = below.any(1)
    k = cand.shape[1]
    first = jnp.where(found, jnp.argmax(below, 1), k - 1)
    prev = jnp.maximum(first - 1, 0)
    f_prev = jnp.take_along_axis(facing, prev[:, None], 1)[:, 0]
    f_first = jnp.take_along_axis(facing, first[:, None], 1)[:, 0]
    t = jnp.clip((f_prev - level) / jnp.maximum(f_prev - f_first, 1e-6), 0.0, 1.0)
    t = jnp.where(found & (first > 0), t, 1.0)
    return ContourChoice(first=first, t=t)


def landmark_points(head: LandmarkHead, params: HeadParams, camera_center: Float[Array, "3"],
                    choice: ContourChoice | None = None) -> Float[Array, "L 3"]:
    """3D landmarks of `params` seen from `camera_center` (world): the embedded points, each
    dynamic contour landmark on its curve where `choice` (default: `contour_choice` now) puts it,
    interpolated linearly between the two candidates around the crossing."""
    tri = posed_vertices(head, params, head.corners)  # [L,3,3]
    points = jnp.einsum("lk,lkc->lc", head.barycentrics, tri)
    if head.contour.shape[0] == 0:
        return points
    choice = contour_choice(head, params, camera_center) if choice is None else choice
    pick = jnp.stack([jnp.maximum(choice.first - 1, 0), choice.first], 1)  # [C,2]
    corners = jnp.take_along_axis(head.contour_corners, pick[:, :, None], 1)  # [C,2,3]
    bary = jnp.take_along_axis(head.contour_barycentrics, pick[:, :, None], 1)
    cand = jnp.einsum("cpn,cpnd->cpd", bary, posed_vertices(head, params, corners))
    contour = cand[:, 0] + choice.t[:, None] * (cand[:, 1] - cand[:, 0])
    return points.at[head.contour].set(contour)


def project(points: Float[Array, "n 3"], viewmat: Float[Array, "4 4"], K: Float[Array, "3 3"]) -> Float[Array, "n 2"]:
    """Pixel coordinates (pixel centres at +0.5), OpenCV camera."""
    return camera_lib.project_points(points, viewmat, K)[0]


def project_landmarks(head: LandmarkHead, params: HeadParams, viewmat: Float[Array, "4 4"],
                      K: Float[Array, "3 3"], choice: ContourChoice | None = None) -> Float[Array, "L 2"]:
    """The 2D landmarks of `params` in the camera (viewmat, K)."""
    return project(landmark_points(head, params, camera_lib.camera_center(viewmat), choice), viewmat, K)


# ---------------------------------------------------------------------------------------------- the fit
_GROUPS = ("expression", "jaw", "eyes", "neck", "global_pose", "translation")


def _sizes(num_expression: int) -> dict[str, int]:
    return dict(expression=num_expression, jaw=3, eyes=6, neck=3, global_pose=3, translation=3)


_POSE_UNKNOWNS = sum(_sizes(0).values())  # a frame's unknowns besides the expression (18)


def num_unknowns(num_expression: int) -> int:
    """Length of a frame's `pack` vector."""
    return num_expression + _POSE_UNKNOWNS


def pack(params: HeadParams) -> Float[Array, "... D"]:
    """Per-frame unknowns as one vector: expression, jaw, eyes, neck, global, translation."""
    return jnp.concatenate([params.expression, params.jaw_pose, params.eyes_pose, params.neck_pose,
                            params.global_pose, params.translation], -1)


def unpack(x: Float[Array, "... D"], shape: Float[Array, "... S"]) -> HeadParams:
    e = x.shape[-1] - _POSE_UNKNOWNS
    return HeadParams(shape=shape, expression=x[..., :e], jaw_pose=x[..., e:e + 3], eyes_pose=x[..., e + 3:e + 9],
                      neck_pose=x[..., e + 9:e + 12], global_pose=x[..., e + 12:e + 15],
                      translation=x[..., e + 15:e + _POSE_UNKNOWNS])


def _group_vector(num_expression: int, values: dict) -> jnp.ndarray:
    out = []
    for g, n in _sizes(num_expression).items():
        out.append(jnp.broadcast_to(jnp.asarray(values[g], jnp.float32), (n,)))
    return jnp.concatenate(out)


@dataclasses.dataclass(frozen=True)
class Priors:
    """The fit's noise model and priors (see the module docstring), a pytree of numbers (traced:
    changing them does not recompile). `landmark_sigma`: landmark noise as a fraction of the
    face's box diagonal; `expression`, `shape`: per-coefficient standard deviations; `jaw_open`,
    `jaw_side` (radians: rotation about x, and about y/z); `neck`, `eyes` (radians); `rigid`: a weak
    prior on global pose (rad) and translation (m) for conditioning only; `temporal_*`: standard
    deviation of the change from the previous frame per group."""

    landmark_sigma: float = 0.01
    expression: float = 1.0
    shape: float = 1.0
    jaw_open: float = 0.5
    jaw_side: float = 0.03
    neck: float = 0.02
    eyes: float = 0.2
    rigid: float = 10.0
    temporal_expression: float = 1.0
    temporal_jaw: float = 0.15
    temporal_eyes: float = 0.2
    temporal_neck: float = 0.05
    temporal_global: float = 0.1
    temporal_translation: float = 0.02

    def sigmas(self, num_expression: int) -> jnp.ndarray:
        """Per-unknown prior standard deviations, in `pack` order."""
        return _group_vector(num_expression, dict(
            expression=self.expression, jaw=jnp.stack([self.jaw_open, self.jaw_side, self.jaw_side]),
            eyes=self.eyes, neck=self.neck, global_pose=self.rigid, translation=self.rigid))

    def temporal_sigmas(self, num_expression: int) -> jnp.ndarray:
        return _group_vector(num_expression, dict(
            expression=self.temporal_expression, jaw=self.temporal_jaw, eyes=self.temporal_eyes,
            neck=self.temporal_neck, global_pose=self.temporal_global, translation=self.temporal_translation))


jax.tree_util.register_dataclass(Priors, data_fields=[f.name for f in dataclasses.fields(Priors)], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class FrameObservation:
    """One frame's detected landmarks `[L,2]` (pixels), per-landmark confidence `[L]` (0 drops a
    landmark; all 0 for a frame without a face) and the face's size in pixels (box diagonal)."""

    landmarks: Float[Array, "L 2"]
    confidence: Float[Array, " L"]
    scale: Float[Array, ""]


jax.tree_util.register_dataclass(FrameObservation, data_fields=["landmarks", "confidence", "scale"], meta_fields=[])


def observation(landmarks: Float[np.ndarray, "L 2"], confidence: Float[np.ndarray, " L"] | None = None) -> FrameObservation:
    """A `FrameObservation` from detected landmarks (scale = their box diagonal)."""
    lm = np.asarray(landmarks, np.float32)
    conf = np.ones(len(lm), np.float32) if confidence is None else np.asarray(confidence, np.float32)
    valid = conf > 0
    box = lm[valid].max(0) - lm[valid].min(0) if valid.any() else np.ones(2, np.float32)
    return FrameObservation(jnp.asarray(np.nan_to_num(lm)), jnp.asarray(conf), jnp.asarray(np.linalg.norm(box), jnp.float32))


def _landmark_residual(head, shape, x, obs: FrameObservation, viewmat, K, priors: Priors, choice=None):
    uv = project_landmarks(head, unpack(x, shape), viewmat, K, choice)
    w = jnp.sqrt(head.weights * obs.confidence)[:, None]
    return (w * (uv - obs.landmarks) / (priors.landmark_sigma * obs.scale)).reshape(-1)


def _frame_residual(head, shape, x, obs, viewmat, K, x_prev, temporal_weight, priors: Priors, choice=None):
    e = head.num_expression
    prior = x / priors.sigmas(e)
    temporal = jnp.sqrt(temporal_weight) * (x - x_prev) / priors.temporal_sigmas(e)
    return jnp.concatenate([_landmark_residual(head, shape, x, obs, viewmat, K, priors, choice), prior, temporal])


def levenberg_marquardt(residual: Callable, x0: Float[Array, " D"], iterations: int,
                        linearize_at: Callable = lambda x: None, damping: float = 1e-3) -> Float[Array, " D"]:
    """Minimise `sum(residual(x, aux)**2)` from `x0` with `iterations` Levenberg-Marquardt steps,
    where `aux = linearize_at(x)` is recomputed at the start of each step and held during it (here:
    the contour landmarks' choice of candidates). Marquardt's scaling (damping × diag(JᵀJ)); a
    step is kept only if it lowers the cost, the damping shrinks ×1/3 after a kept step and grows
    ×4 after a rejected one. Traceable: a fixed number of steps (`lax.fori_loop`)."""

    def step(_, state):
        x, lam = state
        aux = linearize_at(x)
        with_value = lambda x: (residual(x, aux),) * 2  # noqa: E731
        jac, r = jax.jacfwd(with_value, has_aux=True)(x)
        jtj = jac.T @ jac
        diag = jnp.diagonal(jtj) + 1e-9
        dx = jnp.linalg.solve(jtj + lam * jnp.diag(diag), -(jac.T @ r))
        better = jnp.sum(residual(x + dx, aux) ** 2) < jnp.sum(r ** 2)  # False for NaN
        return jnp.where(better, x + dx, x), jnp.where(better, lam / 3.0, lam * 4.0)

    x, _ = jax.lax.fori_loop(0, iterations, step, (x0, jnp.asarray(damping, x0.dtype)))
    return x


@functools.partial(jax.jit, static_argnames=("iterations",))
def fit_frame(head: LandmarkHead, shape: Float[Array, " S"], obs: FrameObservation, viewmat: Float[Array, "4 4"],
              K: Float[Array, "3 3"], x_init: Float[Array, " D"], x_prev: Float[Array, " D"],
              temporal_weight: Float[Array, ""], priors: Priors = Priors(),
              iterations: int = WARM_ITERATIONS) -> tuple[Float[Array, " D"], Float[Array, ""]]:
    """One frame's fit (jitted): the unknowns `x` (`pack`) from `x_init`, pulled towards `x_prev`
    with `temporal_weight` (0 on a first frame). Returns (x, reprojection RMS error in pixels over
    the landmarks with confidence > 0)."""
    center = camera_lib.camera_center(viewmat)
    x = levenberg_marquardt(
        lambda x, choice: _frame_residual(head, shape, x, obs, viewmat, K, x_prev, temporal_weight, priors, choice),
        x_init, iterations, linearize_at=lambda x: contour_choice(head, unpack(x, shape), center))
    return x, reprojection_rms(head, unpack(x, shape), obs, viewmat, K)


def reprojection_rms(head: LandmarkHead, params: HeadParams, obs: FrameObservation, viewmat, K) -> Float[Array, ""]:
    """Root-mean-square pixel distance between the projected and detected landmarks (over the
    landmarks with confidence > 0 and weight > 0)."""
    uv = project_landmarks(head, params, viewmat, K)
    use = (obs.confidence > 0) & (head.weights > 0)
    d2 = jnp.sum((uv - obs.landmarks) ** 2, -1)
    return jnp.sqrt(jnp.sum(jnp.where(use, d2, 0.0)) / jnp.maximum(use.sum(), 1))


def initial_unknowns(head: LandmarkHead, shape: Float[Array, " S"], obs: FrameObservation, viewmat, K) -> Float[Array, " D"]:
    """A starting point for a first frame: neutral face, no rotation, translated so that the
    neutral landmarks' centroid projects onto the detected one at the depth that matches their
    spread (pinhole similar triangles)."""
    zero = jnp.zeros(num_unknowns(head.num_expression), jnp.float32)
    params = unpack(zero, shape)
    pts = landmark_points(head, params, camera_lib.camera_center(viewmat))
    # A frame whose landmarks all have confidence 0 (a padding slot) starts like a real one.
    use = (jnp.where(jnp.any(obs.confidence > 0), obs.confidence > 0, True))[:, None]
    n = jnp.maximum(use.sum(), 1)
    centroid = jnp.sum(jnp.where(use, pts, 0), 0) / n
    cam_pts = pts @ viewmat[:3, :3].T + viewmat[:3, 3]
    cam_c = centroid @ viewmat[:3, :3].T + viewmat[:3, 3]
    spread3 = jnp.sqrt(jnp.sum(jnp.where(use, (cam_pts[:, :2] - cam_c[:2]) ** 2, 0)) / n)
    obs_c = jnp.sum(jnp.where(use, obs.landmarks, 0), 0) / n
    spread2 = jnp.sqrt(jnp.sum(jnp.where(use, (obs.landmarks - obs_c) ** 2, 0)) / n)
    f = 0.5 * (K[0, 0] + K[1, 1])
    z = f * spread3 / jnp.maximum(spread2, 1e-6)
    target_cam = jnp.stack([(obs_c[0] - K[0, 2]) * z / K[0, 0], (obs_c[1] - K[1, 2]) * z / K[1, 1], z])
    target = viewmat[:3, :3].T @ (target_cam - viewmat[:3, 3])
    return zero.at[-3:].set(target - centroid)


@functools.partial(jax.jit, static_argnames=("iterations",))
def _fit_frames(head, shape, obs, viewmat, K, x_init, x_prev, temporal_weight, priors, iterations):
    """`fit_frame` over a batch of frames (leading N of obs, x_init, x_prev)."""
    return jax.vmap(lambda o, xi, xp: fit_frame(head, shape, o, viewmat, K, xi, xp, temporal_weight, priors,
                                                iterations=iterations))(obs, x_init, x_prev)


@functools.partial(jax.jit, static_argnames=("iterations",))
def fit_shape_and_frames(head: LandmarkHead, shape0: Float[Array, " S"], x0: Float[Array, "N D"],
                         obs: FrameObservation, viewmat: Float[Array, "4 4"], K: Float[Array, "3 3"],
                         priors: Priors = Priors(), iterations: int = 30,
                         damping: float = 1e-3) -> tuple[Float[Array, " S"], Float[Array, "N D"]]:
    """Joint Levenberg-Marquardt fit of the shared shape and N frames' unknowns (batched
    observations, leading N). Shape and expression are coupled (a wider mouth is either), so
    they are solved together, not alternately: the normal equations are block-arrow shaped
    (one D×D block per frame, all coupled through the S shape coefficients) and are solved
    by the Schur complement on the shape block, O(N·D³ + S³) per step."""
    e = head.num_expression
    sig = priors.sigmas(e)

    center = camera_lib.camera_center(viewmat)

    def frame_residual(shape, x, o, choice):
        return jnp.concatenate([_landmark_residual(head, shape, x, o, viewmat, K, priors, choice), x / sig])

    def cost(shape, x, choices):
        per = jax.vmap(lambda xi, oi, ci: jnp.sum(frame_residual(shape, xi, oi, ci) ** 2))(x, obs, choices)
        return jnp.sum(per) + jnp.sum((shape / priors.shape) ** 2)

    def step(_, state):
        shape, x, lam = state
        choices = jax.vmap(lambda xi: contour_choice(head, unpack(xi, shape), center))(x)

        def per_frame(xi, oi, ci):
            r = frame_residual(shape, xi, oi, ci)
            jx, jb = jax.jacfwd(frame_residual, argnums=(1, 0))(shape, xi, oi, ci)
            return r, jx, jb

        r, jx, jb = jax.vmap(per_frame)(x, obs, choices)  # [N,R], [N,R,D], [N,R,S]
        hxx = jnp.einsum("nrd,nre->nde", jx, jx)
        hxb = jnp.einsum("nrd,nrs->nds", jx, jb)
        hbb = jnp.einsum("nrs,nrt->st", jb, jb) + jnp.eye(shape.shape[0]) / priors.shape ** 2
        gx = jnp.einsum("nrd,nr->nd", jx, r)
        gb = jnp.einsum("nrs,nr->s", jb, r) + shape / priors.shape ** 2
        hxx = hxx + lam * jax.vmap(jnp.diag)(jax.vmap(jnp.diagonal)(hxx) + 1e-9)
        hbb = hbb + lam * jnp.diag(jnp.diagonal(hbb) + 1e-9)
        inv_hxb = jnp.linalg.solve(hxx, hxb)  # [N,D,S]
        inv_gx = jnp.linalg.solve(hxx, gx[..., None])[..., 0]  # [N,D]
        schur = hbb - jnp.einsum("nds,ndt->st", hxb, inv_hxb)
        db = jnp.linalg.solve(schur, -gb + jnp.einsum("nds,nd->s", hxb, inv_gx))
        dx = -inv_gx - jnp.einsum("nds,s->nd", inv_hxb, db)
        c = jnp.sum(r ** 2) + jnp.sum((shape / priors.shape) ** 2)
        better = cost(shape + db, x + dx, choices) < c  # False for NaN
        return (jnp.where(better, shape + db, shape), jnp.where(better, x + dx, x),
                jnp.where(better, lam / 3.0, lam * 4.0))

    shape, x, _ = jax.lax.fori_loop(0, iterations, step, (shape0, x0, jnp.asarray(damping, jnp.float32)))
    return shape, x


def fit_identity(head: LandmarkHead, observations: FrameObservation, viewmat, K, priors: Priors = Priors(),
                 shape: Float[Array, " S"] | None = None) -> tuple[Float[Array, " S"], Float[Array, "N D"]]:
    """Shape (shared) and per-frame unknowns of N frames (batched observations): cold per-frame
    fits on the mean shape, then the joint fit (`fit_shape_and_frames`). A given `shape` is kept
    (the per-frame fits only)."""
    fixed = shape is not None
    shape = jnp.zeros(head.num_shape, jnp.float32) if shape is None else jnp.asarray(shape, jnp.float32)
    x0 = jax.vmap(lambda o: initial_unknowns(head, shape, o, viewmat, K))(observations)
    x, _ = _fit_frames(head, shape, observations, viewmat, K, x0, x0, jnp.float32(0.0), priors, COLD_ITERATIONS)
    if fixed:
        return shape, x
    return fit_shape_and_frames(head, shape, x, observations, viewmat, K, priors)


# ---------------------------------------------------------------------------------------------- smoothing
def one_euro(values: Float[np.ndarray, "T D"], fps: float, min_cutoff: Float[np.ndarray, " D"],
             beta: Float[np.ndarray, " D"], d_cutoff: float = 1.0,
             valid: Bool[np.ndarray, " T"] | None = None) -> Float[np.ndarray, "T D"]:
    """One-euro filter (Casiez, Roussel, Vogel, CHI 2012) along time, per column: cutoff
    `min_cutoff + beta·|filtered speed|` (Hz; speed in units per second), causal. Frames where
    `valid` is False are held (the filter neither reads nor advances on them)."""
    x = np.asarray(values, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"one_euro: values must be [T,D] with T >= 1, got {list(x.shape)}")
    if not fps > 0:
        raise ValueError(f"one_euro: fps must be > 0, got {fps}")
    valid = np.ones(len(x), bool) if valid is None else np.asarray(valid, bool)
    te = 1.0 / fps

    def alpha(cutoff):
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / te)

    out = x.copy()
    prev = None
    dx_prev = np.zeros(x.shape[1])
    for t in range(len(x)):
        if not valid[t]:
            if prev is not None:
                out[t] = prev
            continue
        if prev is None:
            prev = x[t]
            out[t] = prev
            continue
        dx = (x[t] - prev) / te
        dx_hat = dx_prev + alpha(d_cutoff) * (dx - dx_prev)
        a = alpha(np.asarray(min_cutoff) + np.asarray(beta) * np.abs(dx_hat))
        prev = prev + a * (x[t] - prev)
        dx_prev = dx_hat
        out[t] = prev
    return out.astype(np.float32)


def smoothing_vectors(num_expression: int, smoothing: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    s = SMOOTHING if smoothing is None else smoothing
    sizes = _sizes(num_expression)
    cut = np.concatenate([np.full(sizes[g], s[g][0]) for g in _GROUPS])
    beta = np.concatenate([np.full(sizes[g], s[g][1]) for g in _GROUPS])
    return cut, beta


# ---------------------------------------------------------------------------------------------- tracking
@dataclasses.dataclass(frozen=True)
class Tracking:
    """A tracked video. `motion`: `HeadParams [T]` (numpy; `shape` the fitted identity, tiled;
    translation recentred, see the module docstring); `landmarks [T,L,2]` detected (NaN where no
    face was found); `detected [T]`; `reprojection_px [T]` RMS landmark error of the fit (of the
    held frame where nothing was detected: NaN); `viewmat [4,4]`, `K [3,3]` the camera that
    reproduces the video with `motion`; `fps`; `scheme` the landmark scheme."""

    motion: HeadParams
    landmarks: np.ndarray
    detected: np.ndarray
    reprojection_px: np.ndarray
    viewmat: np.ndarray
    K: np.ndarray
    fps: float
    scheme: str

    @property
    def num_frames(self) -> int:
        return len(self.detected)

    def save(self, path: PathLike) -> None:
        """The motion `.npz` `animate --motion` reads (`expression`, `pose`, `translation`), plus
        `shape`, `landmarks`, `detected`, `reprojection_px`, `viewmat`, `K`, `fps`, `scheme`;
        written atomically (nothing appears under `path` unless the whole file was written)."""
        m = self.motion
        arrays = dict(expression=np.asarray(m.expression, np.float32), pose=np.asarray(m.pose_vector(), np.float32),
                      translation=np.asarray(m.translation, np.float32), shape=np.asarray(m.shape[0], np.float32),
                      landmarks=self.landmarks.astype(np.float32), detected=self.detected,
                      reprojection_px=self.reprojection_px.astype(np.float32), viewmat=self.viewmat.astype(np.float32),
                      K=self.K.astype(np.float32), fps=np.float32(self.fps), scheme=np.asarray(self.scheme))
        for name in ("expression", "pose", "translation"):
            if not np.all(np.isfinite(arrays[name])):
                raise ValueError(f"tracking result has non-finite {name}; not writing {path}")
        write_atomic(path, lambda f: np.savez(f, **arrays))


def tracking_camera(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> tuple[np.ndarray, np.ndarray]:
    """The tracker's fixed pinhole (see the module docstring): (viewmat [4,4], K [3,3])."""
    if not 1.0 <= fov_deg <= 150.0:
        raise ValueError(f"fov_deg must be in [1, 150] degrees, got {fov_deg}")
    return motion_lib.front_camera(width, fov_deg=fov_deg, height=height)


def check_landmark_track(landmarks, num_landmarks: int) -> np.ndarray:
    """`landmarks [T,L,2]` float (NaN rows: no face) as float32, or ValueError."""
    lm = np.asarray(landmarks)
    if lm.ndim != 3 or lm.shape[1:] != (num_landmarks, 2):
        raise ValueError(f"landmarks must be [T,{num_landmarks},2], got {list(lm.shape)}")
    if lm.shape[0] == 0:
        raise ValueError("landmarks: the video has 0 frames")
    if not np.issubdtype(lm.dtype, np.floating):
        raise ValueError(f"landmarks must be float pixel coordinates, got dtype {lm.dtype}")
    rows = np.isfinite(lm).all(axis=(1, 2))
    partial = ~rows & np.isfinite(lm).any(axis=(1, 2))
    if partial.any():
        raise ValueError(f"landmarks: frame {int(np.nonzero(partial)[0][0])} is partly NaN (a frame has all its "
                         "landmarks or none)")
    if not rows.any():
        raise ValueError("no face was found in any frame")
    return lm.astype(np.float32)


def fit_landmark_track(landmarks: Float[np.ndarray, "T L 2"], width: int, height: int, *, fps: float = motion_lib.FPS,
                       model: HeadModel | None = None, embedding: LandmarkEmbedding | None = None,
                       fov_deg: float = DEFAULT_FOV_DEG, identity_frames: int = IDENTITY_FRAMES,
                       shape: Float[np.ndarray, " S"] | None = None, smooth: bool = True,
                       temporal: bool = True, priors: Priors = Priors()) -> Tracking:
    """Fit the head model to a landmark track (frames without a face: NaN rows): identity once
    over the first `identity_frames` frames with a face (unless `shape` is given), then every
    frame warm-started from the previous one, then the one-euro filter (`smooth`). Frames without
    a face hold the previous fit (the first ones: the first fit)."""
    if model is None:
        from flexavatar_jax.head.procedural import load_procedural_head

        model = load_procedural_head()
    embedding = lmk.procedural_embedding(model) if embedding is None else embedding
    head = landmark_head(model, embedding)
    lm = check_landmark_track(landmarks, head.num_landmarks)
    if width < 16 or height < 16:
        raise ValueError(f"frame size {width}x{height} is too small")
    if identity_frames < 1:
        raise ValueError(f"identity_frames must be >= 1, got {identity_frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    viewmat, K = tracking_camera(width, height, fov_deg)
    vm, kk = jnp.asarray(viewmat), jnp.asarray(K)
    detected = np.isfinite(lm).all(axis=(1, 2))
    frames = np.nonzero(detected)[0]
    obs_list = [observation(lm[t]) for t in range(len(lm))]

    id_frames = frames[:identity_frames]
    # A fixed batch (padded with confidence-0 copies) so any video compiles the same program.
    pad = np.concatenate([id_frames, np.full(identity_frames - len(id_frames), id_frames[0])])
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[obs_list[t] for t in pad])
    mask = jnp.asarray(np.arange(identity_frames) < len(id_frames), jnp.float32)
    stacked = dataclasses.replace(stacked, confidence=stacked.confidence * mask[:, None])
    if shape is not None and np.shape(shape) != (head.num_shape,):
        raise ValueError(f"shape must have {head.num_shape} coefficients, got {list(np.shape(shape))}")
    shape_j, x_id = fit_identity(head, stacked, vm, kk, priors, shape=shape)

    d = num_unknowns(head.num_expression)
    xs = np.zeros((len(lm), d), np.float32)
    err = np.full(len(lm), np.nan, np.float32)
    x_prev = np.asarray(x_id[0])
    tw = jnp.float32(1.0 if temporal else 0.0)
    for t in range(len(lm)):
        if not detected[t]:
            xs[t] = x_prev
            continue
        x, e = fit_frame(head, shape_j, obs_list[t], vm, kk, jnp.asarray(x_prev), jnp.asarray(x_prev), tw, priors)
        if float(e) > REINIT_ERROR * float(obs_list[t].scale):
            x0 = initial_unknowns(head, shape_j, obs_list[t], vm, kk)
            x_cold, e_cold = fit_frame(head, shape_j, obs_list[t], vm, kk, x0, x0, jnp.float32(0.0), priors,
                                       iterations=COLD_ITERATIONS)
            if float(e_cold) < float(e):
                x, e = x_cold, e_cold
        xs[t] = x_prev = np.asarray(x)
        err[t] = float(e)
    first = frames[0]
    xs[:first] = xs[first]
    if smooth:
        cut, beta = smoothing_vectors(head.num_expression)
        xs = one_euro(xs, fps, cut, beta, valid=detected)
        xs[:first] = xs[first]
        # The reported error is that of the smoothed parameters (what the motion file holds).
        err = np.asarray(jax.vmap(lambda x, o: reprojection_rms(head, unpack(x, shape_j), o, vm, kk))(
            jnp.asarray(xs), jax.tree.map(lambda *a: jnp.stack(a), *obs_list)))
        err = np.where(detected, err, np.nan).astype(np.float32)

    # Recentre: translation relative to the identity frames' mean, the camera moved along.
    offset = xs[id_frames, -3:].mean(0)
    xs[:, -3:] -= offset
    viewmat_out = viewmat.copy()
    viewmat_out[:3, 3] += viewmat[:3, :3] @ offset
    params = unpack(xs, np.tile(np.asarray(shape_j), (len(lm), 1)))
    motion = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    return Tracking(motion=motion, landmarks=lm, detected=detected, reprojection_px=err, viewmat=viewmat_out, K=K,
                    fps=float(fps), scheme=embedding.scheme)


# ---------------------------------------------------------------------------------------------- video
def detect_landmarks(frames: UInt8[np.ndarray, "t h w 3"], detector: Callable | None = None,
                     cnn_fallback: bool = False) -> Float[np.ndarray, "t L 2"]:
    """Per frame, the landmarks of one face (`portrait.detect_faces`; NaN rows where none was
    found): in the first frame with faces the best-scoring one, afterwards the one whose box
    overlaps the previous face's box most (a second person walking by is not followed)."""
    if detector is None:
        from flexavatar_jax.data import portrait

        detector = functools.partial(portrait.detect_faces, cnn_fallback=cnn_fallback)
    out = None
    prev_box = None
    for t, frame in enumerate(frames):
        faces = detector(frame)
        if out is None:
            n = faces[0].landmarks.shape[0] if faces else None
            if n is not None:
                out = np.full((len(frames), n, 2), np.nan, np.float32)
        if not faces:
            continue
        face = faces[0] if prev_box is None else max(faces, key=lambda f: _iou(f.box, prev_box))
        out[t] = face.landmarks
        prev_box = face.box
    if out is None:
        raise ValueError(f"no face was found in any of the {len(frames)} frames")
    return out


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def track_video(video: PathLike | np.ndarray, out: PathLike | None = None, *, fps: float | None = None,
                model: HeadModel | None = None, embedding: LandmarkEmbedding | None = None,
                fov_deg: float = DEFAULT_FOV_DEG, identity_frames: int = IDENTITY_FRAMES, smooth: bool = True,
                max_frames: int | None = None, detector: Callable | None = None, priors: Priors = Priors()) -> Tracking:
    """Track a video (a path, or frames `[T,H,W,3]` uint8 / float in [0,1]) and, with `out`, write
    the motion `.npz` (atomically, only after everything succeeded). `fps` defaults to the file's
    (frames: 25). `model` defaults to the procedural head; a FLAME head needs its `embedding`."""
    if out is not None and Path(out).suffix.lower() != ".npz":
        raise ValueError(f"{out}: the motion file must be a .npz")
    if isinstance(video, (str, os.PathLike)):
        frames, file_fps = media.read_video(video, max_frames, motion_lib.FPS)
        fps = file_fps if fps is None else fps
    else:
        frames = media.check_frames(video)
        if max_frames is not None:
            frames = frames[:max_frames]
        fps = motion_lib.FPS if fps is None else fps
    if model is not None and embedding is None and not model.name.startswith("procedural"):
        raise ValueError(f"head model {model.name!r} needs a landmark embedding (LandmarkEmbedding.load); only "
                         "the procedural head ships one")
    landmarks = detect_landmarks(frames, detector)
    h, w = frames.shape[1:3]
    result = fit_landmark_track(landmarks, w, h, fps=fps, model=model, embedding=embedding, fov_deg=fov_deg,
                                identity_frames=identity_frames, smooth=smooth, priors=priors)
    if out is not None:
        result.save(out)
    return result


# ---------------------------------------------------------------------------------------------- known truth
def synthetic_clip(world, identity_id: int, num_frames: int | None = None, image_size: int = 256, clip: int = 0,
                   render: bool = True) -> tuple[np.ndarray | None, HeadParams, np.ndarray, np.ndarray]:
    """A synthetic identity's clip seen by the tracker's own camera (`tracking_camera`, which is
    the synthetic front camera): (frames uint8 `[T,S,S,3]` rendered by `world.render`, or None
    without `render`; the ground-truth `HeadParams [T]` (numpy); viewmat; K)."""
    ident = world.identity(int(identity_id))
    c = ident.clips[clip]
    t = len(c) if num_frames is None else int(num_frames)
    if not 1 <= t <= len(c):
        raise ValueError(f"clip {clip} of identity {identity_id} has {len(c)} frames, asked for {num_frames}")
    truth = HeadParams(shape=np.tile(np.asarray(ident.shape, np.float32), (t, 1)), expression=c.expression[:t],
                       global_pose=c.global_pose[:t], neck_pose=c.neck_pose[:t], jaw_pose=c.jaw_pose[:t],
                       eyes_pose=c.eyes_pose[:t], translation=c.translation[:t])
    viewmat, K = tracking_camera(image_size, image_size)
    if not render:
        return None, truth, viewmat, K
    frames = []
    for i in range(t):
        rgb, _, _ = world.render(ident, jax.tree.map(lambda a: a[i], truth), viewmat[None], K[None])
        frames.append(np.round(np.clip(np.asarray(rgb[0]), 0, 1) * 255).astype(np.uint8))
    return np.stack(frames), truth, viewmat, K


def head_rotation(params: HeadParams) -> np.ndarray:
    """The head's rotation (global ∘ neck) `[...,3,3]`: what face landmarks see of the two."""
    return np.asarray(rodrigues(jnp.asarray(params.global_pose)) @ rodrigues(jnp.asarray(params.neck_pose)))


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 1e-8) & (nb > 1e-8)
    return float(np.mean(np.sum(a * b, 1)[ok] / (na * nb)[ok])) if ok.any() else float("nan")


def _angle_deg(rel: np.ndarray) -> np.ndarray:
    return np.rad2deg(np.arccos(np.clip((np.trace(rel, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def motion_errors(fitted: HeadParams, truth: HeadParams) -> dict[str, float]:
    """Known-truth errors of a tracked motion (both `[T]`): `jaw_deg` mean |jaw opening error|
    (rotation about x) in degrees, `jaw_bias_deg` its mean signed value; `expression_cosine` mean
    cosine similarity of the expression codes (frames with a non-zero code) and
    `expression_change_cosine` that of the codes minus their clip means (does the tracker follow
    the *changes*, whatever constant offset it has); `head_rotation_deg` mean angle between the
    fitted and true head rotations (global ∘ neck) and `head_motion_deg` the same for the rotations
    relative to each clip's first frame (the motion, without a constant offset)."""
    jaw = np.rad2deg(np.asarray(fitted.jaw_pose)[:, 0] - np.asarray(truth.jaw_pose)[:, 0])
    a, b = np.asarray(fitted.expression, np.float64), np.asarray(truth.expression, np.float64)
    rf, rt = head_rotation(fitted), head_rotation(truth)
    motion_f = np.swapaxes(rf[:1], -1, -2) @ rf  # relative to the first frame
    motion_t = np.swapaxes(rt[:1], -1, -2) @ rt
    return dict(jaw_deg=float(np.mean(np.abs(jaw))), jaw_bias_deg=float(np.mean(jaw)),
                expression_cosine=_mean_cosine(a, b),
                expression_change_cosine=_mean_cosine(a - a.mean(0), b - b.mean(0)),
                head_rotation_deg=float(np.mean(_angle_deg(np.swapaxes(rf, -1, -2) @ rt))),
                head_motion_deg=float(np.mean(_angle_deg(np.swapaxes(motion_f, -1, -2) @ motion_t))))


# ---------------------------------------------------------------------------------------------- side by side
