"""Held-out evaluation sets: self- and cross-reenactment from 1–4 input views of synthetic identities,
with rendered ground truth (scored by `train.evaluate`).

An *eval set* is a dict of stacked numpy arrays, one row per held-out identity, with the keys of the
training examples (`data/pipeline.py`), so a trainer's `batch -> model` path runs on it unchanged:

    input_images [N,4,H,W,3]   input_mask [N,4]   input_alphas [N,4,H,W,1]
    input_viewmats [N,4,4,4]   input_Ks [N,4,3,3] input_<param> [N,4,...]     (padding: 0 / eye)
    target_images [N,T,H,W,3]  target_alphas [N,T,H,W,1]  target_depths [N,T,H,W,1]
    target_viewmats [N,T,4,4]  target_Ks [N,T,3,3]
    target_<param> [N,T,...]   target_marginal [N,T]  target_azimuth_deg [N,T]  target_backgrounds [N,T,3]

plus bookkeeping: `identity [N]`, `driver_identity [N]`, `num_inputs [N]`, `input_frame [N,4]` (-1 =
padding), `target_frame [N,T]` (flat frame index into the *driver's* frames), `input_azimuth_deg`.
`<param>` runs over `pipeline.PARAM_FIELDS`; `target_depths` is the expected camera-space depth
Σ zᵢαᵢTᵢ / alpha of the ground-truth Gaussians (metres, 0 where nothing is hit), for geometry
metrics. The input annotations (cameras, tracked params) are
only read by the projection lifters; the default lifter sees images and mask.

Modes:

* **self** reenactment: the targets are other frames of the identity itself (never one of its input
  frames), from new cameras.
* **cross** reenactment: identity i is driven by another held-out identity j (the next one in the
  list): expression, jaw, eyes, global/neck pose and translation come from j's frames, the shape
  stays i's. The ground truth is identity i rendered by the synthetic world under those parameters
  — only possible because the data are synthetic: on real video nobody ever recorded person i
  making person j's expressions, which is why real-data papers report cross-reenactment with
  reference-free metrics only.

Every draw is seeded from `(seed, identity id, stream)` and independent of the number of input
views, so the 1-view set is the 4-view set with its last three inputs masked out and both share
their targets exactly (`with_num_views`): view-count comparisons are on identical targets.

Targets: half of them (rounded down) show *marginal* driving frames (`Identity.marginal`, the rare
extreme expressions) when the driver has enough of them, the rest ordinary ones; the first
ceil(T/2) cameras are frontal (|azimuth| ≤ `FRONTAL_MAX_AZIMUTH_DEG`), the rest side or back views,
stratified in azimuth. Fields of view, elevations, distances and aim jitter come from the data
engine's `motion.sample_cameras`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from flexavatar_jax.data import cache, ground_truth, motion
from flexavatar_jax.data.pipeline import MAX_INPUTS, SPEC_PARAM_FIELDS
from flexavatar_jax.data.synthetic import ENGINE_VERSION, SyntheticWorld

MODES = ("self", "cross")
# A view is "frontal" when the camera is within ±45° of the face direction (azimuth 0); beyond
# that one cheek/ear dominates and the far side of the face is hidden.
FRONTAL_MAX_AZIMUTH_DEG = 45.0

# Seed streams (third entry of the numpy seed sequence).
_INPUTS, _TARGET_FRAMES, _TARGET_CAMERAS, _BACKGROUNDS = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------- eval set
def _rng(seed: int, identity_id: int, stream: int, mode: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(identity_id), stream, MODES.index(mode)])


def _choose(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    """k entries of `candidates`, distinct while there are enough of them."""
    if k == 0:
        return np.zeros(0, np.int64)
    return rng.choice(candidates, size=k, replace=k > len(candidates))


def _about_head(rot: np.ndarray) -> np.ndarray:
    """The world map p -> c + R(p - c), a rotation `rot [..., 3, 3]` about c = HEAD_CENTER, as
    4×4 matrices [..., 4, 4] (float64)."""
    centre = motion.HEAD_CENTER.astype(np.float64)
    out = np.broadcast_to(np.eye(4), (*rot.shape[:-2], 4, 4)).copy()
    out[..., :3, :3] = rot
    out[..., :3, 3] = centre - rot @ centre
    return out


def _rotate_about_head(viewmat: np.ndarray, delta_deg: float) -> np.ndarray:
    """The camera moved by `delta_deg` of azimuth around the vertical axis through HEAD_CENTER.

    Seeing the rotated world p' = c + R(p - c) as the old camera saw p means composing the old
    world->camera map with the inverse rotation."""
    a = np.deg2rad(delta_deg)
    rot = np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])
    return (viewmat.astype(np.float64) @ _about_head(rot.T)).astype(np.float32)


def wrap_deg(a):
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


def target_azimuths(rng: np.random.Generator, num_targets: int) -> np.ndarray:
    """ceil(T/2) azimuths stratified over the frontal band [-45°, 45°], the rest stratified over the
    side/back arc (45°, 315°); a margin keeps every draw off the band edges. Degrees in [-180, 180)."""
    n_front = (num_targets + 1) // 2
    n_side = num_targets - n_front
    u_front = rng.uniform(0.05, 0.95, n_front)
    u_side = rng.uniform(0.05, 0.95, n_side)
    band = FRONTAL_MAX_AZIMUTH_DEG
    front = -band + 2.0 * band * (np.arange(n_front) + u_front) / max(n_front, 1)
    side = band + (360.0 - 2.0 * band) * (np.arange(n_side) + u_side) / max(n_side, 1)
    return wrap_deg(np.concatenate([front, side])).astype(np.float32)


def _spec(world: SyntheticWorld, identity_id: int, driver_id: int, num_views: int, num_targets: int,
          mode: str, seed: int) -> dict[str, np.ndarray]:
    """One row without its images: the draws (host, small numbers) and the views' specs."""
    size = world.config.image_size
    ident = world.identity_motion(int(identity_id))
    driver = world.identity_motion(int(driver_id))

    # Inputs: MAX_INPUTS ordinary frames and cameras are drawn whatever num_views is (so fewer views
    # are a prefix of more); the first camera is frontal so a single view shows the face.
    rng = _rng(seed, identity_id, _INPUTS, mode)
    ordinary = np.flatnonzero(~ident.marginal)
    pool = ordinary if len(ordinary) >= MAX_INPUTS else np.arange(ident.num_frames)
    in_frames = _choose(rng, pool, MAX_INPUTS)
    first = motion.sample_cameras(rng, 1, size, size, frontal_fraction=1.0)
    rest = motion.sample_cameras(rng, MAX_INPUTS - 1, size, size)
    in_viewmats = np.concatenate([first.viewmats, rest.viewmats])
    in_Ks = np.concatenate([first.Ks, rest.Ks])
    in_azimuths = np.concatenate([first.azimuth_deg, rest.azimuth_deg])

    # Target driving frames: about half marginal (where the driver has them), never an input frame
    # of the identity itself.
    rng = _rng(seed, identity_id, _TARGET_FRAMES, mode)
    candidates = np.arange(driver.num_frames)
    if driver_id == identity_id:
        rest_frames = np.setdiff1d(candidates, in_frames)
        candidates = rest_frames if len(rest_frames) else candidates
    marginal_pool = candidates[driver.marginal[candidates]]
    ordinary_pool = candidates[~driver.marginal[candidates]]
    n_marginal = min(len(marginal_pool), num_targets // 2)
    if len(ordinary_pool) == 0:
        n_marginal = num_targets
    tgt_frames = np.concatenate([_choose(rng, marginal_pool, n_marginal),
                                 _choose(rng, ordinary_pool, num_targets - n_marginal)])
    tgt_frames = tgt_frames[rng.permutation(num_targets)]  # marginal-ness independent of the camera

    rng = _rng(seed, identity_id, _TARGET_CAMERAS, mode)
    cams = motion.sample_cameras(rng, num_targets, size, size)
    tgt_azimuths = target_azimuths(rng, num_targets)
    tgt_viewmats = np.stack([_rotate_about_head(v, float(want - have))
                             for v, want, have in zip(cams.viewmats, tgt_azimuths, cams.azimuth_deg)])

    rng = _rng(seed, identity_id, _BACKGROUNDS, mode)
    in_backgrounds = world.backgrounds(rng, MAX_INPUTS)
    tgt_backgrounds = world.backgrounds(rng, num_targets)

    real = np.arange(MAX_INPUTS) < num_views
    no_shape = np.zeros(world.model.num_shape, np.float32)
    # Cross mode: the driver's whole frame (expression, jaw, eyes, poses, translation) on identity
    # i's shape (filled in by the renderer) and appearance.
    in_params = [ident.flat_frame_params(int(f), no_shape) for f in in_frames]
    tgt_params = [driver.flat_frame_params(int(f), no_shape) for f in tgt_frames]
    ex: dict[str, np.ndarray] = {
        "identity": np.int64(identity_id),
        "driver_identity": np.int64(driver_id),
        "num_inputs": np.int32(num_views),
        "input_mask": real,
        "input_frame": np.where(real, in_frames, -1).astype(np.int32),
        "input_viewmats": np.where(real[:, None, None], in_viewmats, np.eye(4, dtype=np.float32)).astype(np.float32),
        "input_Ks": np.where(real[:, None, None], in_Ks, np.eye(3, dtype=np.float32)).astype(np.float32),
        "input_azimuth_deg": np.where(real, in_azimuths, np.nan).astype(np.float32),
        "input_backgrounds": np.where(real[:, None], in_backgrounds, 0.0).astype(np.float32),
        "target_frame": tgt_frames.astype(np.int32),
        "target_viewmats": tgt_viewmats.astype(np.float32),
        "target_Ks": cams.Ks.astype(np.float32),
        "target_marginal": driver.marginal[tgt_frames],
        "target_azimuth_deg": tgt_azimuths,
        "target_backgrounds": tgt_backgrounds,
    }
    for f in SPEC_PARAM_FIELDS:
        values = np.stack([np.asarray(getattr(p, f), np.float32) for p in in_params])
        ex[f"input_{f}"] = np.where(real[:, None], values, 0.0).astype(np.float32)
        ex[f"target_{f}"] = np.stack([np.asarray(getattr(p, f), np.float32) for p in tgt_params])
    return ex


# What the engine adds to a row of specs (`ground_truth.render_example_batch`).
_RENDERED = ("input_images", "input_alphas", "input_shape", "target_images", "target_alphas", "target_depths",
             "target_shape")


@functools.lru_cache(maxsize=4)
def _renderer(world: SyntheticWorld) -> ground_truth.GroundTruthRenderer:
    """The training batches' renderer, with input annotations and target depths (compiled once
    per world and chunk shape)."""
    return ground_truth.GroundTruthRenderer(world, input_annotations=True, with_depth=True)


def _render_rows(world: SyntheticWorld, rows: dict[str, np.ndarray], chunk: int) -> dict[str, np.ndarray]:
    """The images of stacked spec rows, `chunk` rows per engine call."""
    read = ("mask", "viewmats", "Ks", "backgrounds", *SPEC_PARAM_FIELDS)  # what the renderer reads of a row
    specs = {k: v for k, v in rows.items() if k.split("_", 1)[0] in ("input", "target") and k.split("_", 1)[1] in read}
    parts = []
    for start in range(0, len(rows["identity"]), chunk):
        batch = {k: v[start:start + chunk] for k, v in specs.items()}
        batch["world_id"] = rows["identity"][start:start + chunk].astype(np.int32)
        out = _renderer(world)(batch)
        parts.append(jax.device_get({k: out[k] for k in _RENDERED}))
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in _RENDERED}


def build_eval_set(world: SyntheticWorld, identity_ids: Sequence[int], num_views: int, num_targets: int,
                   mode: str = "self", seed: int = 0, chunk: int = 8) -> dict[str, np.ndarray]:
    """The eval set (module docstring) of `identity_ids` (normally `synthetic.heldout_ids(n)`):
    one row per identity with `num_views` (1–4) inputs and `num_targets` targets. Deterministic in
    (world config, ids, mode, seed). Cross mode drives identity k by identity k+1 (cyclically), so it
    needs at least two distinct ids. The host draws every row's frames and cameras; the engine
    renders `chunk` rows (all their views) per call."""
    ids = [int(i) for i in identity_ids]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 1 <= num_views <= MAX_INPUTS:
        raise ValueError(f"num_views must be in [1, {MAX_INPUTS}], got {num_views}")
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    if not ids:
        raise ValueError("build_eval_set: no identity ids given")
    if len(set(ids)) != len(ids):
        raise ValueError(f"identity ids must be distinct, got {ids}")
    if mode == "cross" and len(ids) < 2:
        raise ValueError("cross reenactment needs at least two identities (one drives the other)")
    drivers = ids if mode == "self" else ids[1:] + ids[:1]
    specs = [_spec(world, i, j, num_views, num_targets, mode, seed) for i, j in zip(ids, drivers)]
    rows = {k: np.stack([r[k] for r in specs]) for k in specs[0]}
    rows.update(_render_rows(world, rows, chunk))
    return rows


def with_num_views(eval_set: dict[str, np.ndarray], num_views: int) -> dict[str, np.ndarray]:
    """The same eval set with only its first `num_views` inputs (equal to building it with
    `num_views`, since the draws do not depend on the view count). Needs that many inputs."""
    have = int(np.min(eval_set["num_inputs"]))
    if not 1 <= num_views <= have:
        raise ValueError(f"num_views must be in [1, {have}] for this eval set, got {num_views}")
    out = dict(eval_set)
    keep = np.arange(MAX_INPUTS) < num_views
    out["num_inputs"] = np.full_like(eval_set["num_inputs"], num_views)
    out["input_mask"] = np.broadcast_to(keep, eval_set["input_mask"].shape).copy()
    for key, value in eval_set.items():
        if not key.startswith("input_") or key == "input_mask":
            continue
        pad = {"input_viewmats": np.eye(4, dtype=value.dtype), "input_Ks": np.eye(3, dtype=value.dtype),
               "input_frame": -1, "input_azimuth_deg": np.nan}.get(key, 0)
        sel = keep.reshape(1, MAX_INPUTS, *([1] * (value.ndim - 2)))
        out[key] = np.where(sel, value, pad).astype(value.dtype)
    return out


def with_inputs_of_next(eval_set: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The input-shuffle control: row k keeps its targets but gets the inputs (images, masks,
    cameras, tracked parameters) of row k+1 (cyclically), i.e. of another identity. A model that
    reconstructs the person in the photos scores worse on it; one that renders an average head
    scores the same. Needs at least two rows."""
    n = len(eval_set["num_inputs"])
    if n < 2:
        raise ValueError("the input-shuffle control needs at least two identities in the eval set")
    out = dict(eval_set)
    for key, value in eval_set.items():
        if key.startswith("input_") or key == "num_inputs":
            out[key] = np.roll(value, -1, axis=0)
    return out


def with_lateral_input_first(eval_set: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same eval set with each row's inputs reordered so that slot 0 holds the most lateral
    real input view (largest |azimuth|; the others keep their order after it): `with_num_views(.., 1)`
    of it scores a single side view instead of the protocol's frontal one, where a lifter that
    fills the unseen half of the face (symmetric fusion) has something to add. Targets unchanged."""
    azimuth = np.where(eval_set["input_mask"], np.abs(wrap_deg(eval_set["input_azimuth_deg"])), -1.0)
    first = np.argmax(azimuth, axis=1)
    slots = np.arange(MAX_INPUTS)
    order = np.stack([np.concatenate([[k], slots[slots != k]]) for k in first])  # [N, 4]
    out = dict(eval_set)
    for key, value in eval_set.items():
        if key.startswith("input_"):
            index = order.reshape(*order.shape, *([1] * (value.ndim - 2)))
            out[key] = np.take_along_axis(value, index, axis=1)
    return out


def with_input_camera_error(eval_set: dict[str, np.ndarray], angle_deg: float, seed: int = 0
                            ) -> dict[str, np.ndarray]:
    """The same eval set whose real input cameras are each turned by exactly `angle_deg` about an
    axis through `motion.HEAD_CENTER`, uniformly random in direction (seeded; one draw per row and
    slot): a head-pose tracking error of that size, as the projection lifters would get from a
    tracker (the images, and what the other lifters see, are unchanged). Padding slots stay eye."""
    if not np.isfinite(angle_deg) or angle_deg < 0:
        raise ValueError(f"angle_deg must be a finite angle >= 0 (degrees), got {angle_deg}")
    viewmats = eval_set["input_viewmats"].astype(np.float64)
    axes = np.random.default_rng(seed).normal(size=(*viewmats.shape[:2], 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    # Rodrigues in float64 on the host (`head.rodrigues` is float32 under jax's default precision).
    a = np.deg2rad(angle_deg)
    cross = np.zeros((*axes.shape, 3))
    cross[..., 0, 1], cross[..., 0, 2], cross[..., 1, 2] = -axes[..., 2], axes[..., 1], -axes[..., 0]
    cross -= np.swapaxes(cross, -1, -2)
    rot = np.eye(3) + np.sin(a) * cross + (1.0 - np.cos(a)) * (cross @ cross)
    out = dict(eval_set)
    out["input_viewmats"] = np.where(eval_set["input_mask"][..., None, None], viewmats @ _about_head(rot),
                                     viewmats).astype(eval_set["input_viewmats"].dtype)
    return out


def cached_eval_set(world: SyntheticWorld, identity_ids: Sequence[int], num_views: int, num_targets: int,
                    mode: str = "self", seed: int = 0, cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """`build_eval_set`, kept in `cache_dir` (when given) so runs that share the world and the draw
    render it once."""
    build = lambda: build_eval_set(world, identity_ids, num_views, num_targets, mode, seed)  # noqa: E731
    if not cache_dir:
        return build()
    # `format` names the eval-set layout: 2 added target_depths, 3 input/target_backgrounds (an
    # older entry is not reused); `engine` what an id renders to.
    key = {"world": dataclasses.asdict(world.config), "ids": [int(i) for i in identity_ids], "views": num_views,
           "targets": num_targets, "mode": mode, "seed": seed, "format": 3, "engine": ENGINE_VERSION}
    return cache.cached_arrays(cache.keyed_directory(cache_dir, "eval_sets", key), "eval_set", build)


__all__ = ["FRONTAL_MAX_AZIMUTH_DEG", "MODES", "build_eval_set", "cached_eval_set", "target_azimuths",
           "with_input_camera_error", "with_inputs_of_next", "with_lateral_input_first", "with_num_views", "wrap_deg"]
