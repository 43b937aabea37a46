"""Held-out evaluation: metrics of a predictor on `data.eval_sets` (self- and cross-reenactment from
1–4 input views), split by expression rarity and by viewpoint, and markdown/JSON reports.

Splits: `all`, `ordinary` / `marginal` driving frames (the rare extreme expressions), `frontal` /
`side_back` target cameras (|azimuth| ≤ `eval_sets.FRONTAL_MAX_AZIMUTH_DEG`).

Metrics per target: PSNR of the whole image, `psnr_head` (PSNR inside the union of the true and
the predicted silhouette: the background, the same for every identity, does not dilute it),
`psnr_mouth` (PSNR inside the box around the driving mesh's projected mouth — the box FlexAvatar's
mouth loss uses; given the head model), SSIM, LPIPS (with weights), the silhouette IoU, and with a
geometry-aware predictor `depth_err_mm` (mean |expected depth − true expected depth| over the
pixels both silhouettes cover, mm; FHAvatar's 3D TV claim) and `offset_mm` (mean distance of the
Gaussians from their anchor on the head-model surface, mm). A per-target value that does not exist
(no mouth in front of the camera, no shared silhouette pixel) is NaN and left out of the means. With the *input-shuffle control* every target is also
predicted from another held-out identity's inputs (`eval_sets.with_inputs_of_next`); the
*identity gain* (own − shuffled, per metric) is what the model learned about the person rather
than about an average head: plain PSNR can fall while it rises, when a model that ignores its
inputs renders a smooth mean head.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flexavatar_jax.data.eval_sets import (
    FRONTAL_MAX_AZIMUTH_DEG,
    MODES,
    cached_eval_set,
    with_inputs_of_next,
    with_num_views,
    wrap_deg,
)
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.data.synthetic import SyntheticWorld
from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadParams
from flexavatar_jax.train import losses, metrics
from flexavatar_jax.train.perceptual import LPIPSLoss

# Per-target PSNR is capped so a perfect reconstruction (MSE 0, PSNR +inf) keeps means finite and
# eval.json strict JSON. 100 dB is an MSE of 1e-10, far below float32 rendering noise.
PSNR_CAP_DB = 100.0
SPLITS = ("all", "ordinary", "marginal", "frontal", "side_back")
METRICS = ("psnr", "psnr_head", "psnr_mouth", "ssim", "lpips", "iou", "depth_err_mm", "offset_mm")
# Written into eval_gain.json: a study point scored by an older evaluator (fewer metrics) is
# re-evaluated by `sweep run` (version 2 added psnr_mouth, depth_err_mm, offset_mm).
EVALUATOR_VERSION = 2

# batch -> (rgb [B,T,H,W,3], alpha [B,T,H,W,1]) or (rgb, alpha, {"depth": [B,T,H,W,1], "offset_m": [B,T]}).
PredictFn = Callable[[dict[str, np.ndarray]], tuple]


# ---------------------------------------------------------------------------------------------- metrics
@jax.jit
def _image_metrics(pred_rgb, pred_alpha, rgb, alpha):
    psnr = jnp.minimum(metrics.psnr(pred_rgb, rgb), PSNR_CAP_DB)
    head = (alpha > 0.5) | (pred_alpha > 0.5)
    psnr_head = jnp.minimum(metrics.psnr(pred_rgb, rgb, head), PSNR_CAP_DB)
    return psnr, psnr_head, metrics.ssim(pred_rgb, rgb), metrics.alpha_iou(pred_alpha, alpha)


@jax.jit
def _mouth_psnr(pred_rgb, rgb, box):
    inside = jnp.sum(box, axis=(-3, -2, -1)) > 0
    return jnp.where(inside, jnp.minimum(metrics.psnr(pred_rgb, rgb, box), PSNR_CAP_DB), jnp.nan)


@jax.jit
def _depth_error_mm(pred_depth, pred_alpha, depth, alpha):
    """Mean |expected depth − true expected depth| (mm) over pixels inside both silhouettes (NaN
    when there are none)."""
    both = (pred_alpha > 0.5) & (alpha > 0.5)
    err = jnp.abs(pred_depth - depth) * 1000.0
    n = jnp.sum(both, axis=(-3, -2, -1))
    return jnp.where(n > 0, jnp.sum(jnp.where(both, err, 0.0), axis=(-3, -2, -1)) / jnp.maximum(n, 1), jnp.nan)


_MOUTH_BOXES: dict = {}


def with_mouth_boxes(eval_set: dict[str, np.ndarray], head) -> dict[str, np.ndarray]:
    """The eval set with `target_mouth_boxes [N,T,H,W,1]` (bool): `losses.mouth_boxes` of every
    target under `head`, the head model the set was rendered with. Computed once per set: every
    view count and the shuffle control score the same targets."""
    size = eval_set["target_images"].shape[-2]
    key = (id(head), size)
    if key not in _MOUTH_BOXES:  # jitted once per head model and image size (the entry keeps `head` alive)
        _MOUTH_BOXES[key] = (head, jax.jit(lambda p, v, k: losses.mouth_boxes(head, p, v, k, size)))
    params = HeadParams(**{f: jnp.asarray(eval_set[f"target_{f}"]) for f in PARAM_FIELDS})
    boxes = _MOUTH_BOXES[key][1](params, jnp.asarray(eval_set["target_viewmats"]), jnp.asarray(eval_set["target_Ks"]))
    return {**eval_set, "target_mouth_boxes": np.asarray(boxes) > 0}


@jax.jit
def _lpips_pytree(loss: LPIPSLoss, pred, target):
    # The LPIPS weights enter as arguments, not as ~60 MB of baked-in HLO constants.
    return loss(pred, target)


def _summary(values: dict[str, np.ndarray], select: np.ndarray) -> dict[str, Any]:
    count = int(select.sum())
    out: dict[str, Any] = {"count": count}
    for name in METRICS:
        v = values.get(name)
        picked = None if v is None else v[select]
        ok = None if picked is None else picked[np.isfinite(picked)]
        out[name] = None if ok is None or ok.size == 0 else float(np.mean(ok))
    return out


def split_masks(marginal: np.ndarray, azimuth_deg: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks (same shape as the inputs) of every split in `SPLITS`."""
    frontal = np.abs(wrap_deg(azimuth_deg)) <= FRONTAL_MAX_AZIMUTH_DEG
    marginal = np.asarray(marginal, bool)
    return {"all": np.ones_like(marginal), "ordinary": ~marginal, "marginal": marginal, "frontal": frontal,
            "side_back": ~frontal}


def evaluate(predict_fn: PredictFn, eval_set: dict[str, np.ndarray], *,
             perceptual: Callable[[Any, Any], Any] | None = None, batch_size: int = 4) -> dict[str, Any]:
    """Metrics of `predict_fn` on an eval set.

    `predict_fn(batch) -> (rgb [B,T,H,W,3], alpha [B,T,H,W,1])` gets `batch_size` rows of the eval
    set (the last batch is padded by repeating the final row, so a jitted predictor compiles once)
    and renders every target; predictions are scored as given (no clipping). Per target: PSNR (dB,
    full image, capped at `PSNR_CAP_DB`), `psnr_head` (module docstring), `psnr_mouth` (only when
    the eval set has `target_mouth_boxes`, see `with_mouth_boxes`), SSIM, LPIPS (only with `perceptual(pred, target) -> [...]`,
    e.g. an `LPIPSLoss`), the silhouette IoU of alpha, and `depth_err_mm`, `offset_mm` when
    `predict_fn` also returns its geometry dict (and the eval set has `target_depths`).

    Returns `{split: {"count", *METRICS}}` for every split in `SPLITS` (a
    metric is None for an empty split or, for LPIPS, without `perceptual`), and `"per_target"`:
    lists [N][T] of every metric, `marginal` and `azimuth_deg`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, t = eval_set["target_images"].shape[:2]
    per: dict[str, list] = {name: [] for name in METRICS}
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        real = rows < n
        batch = {k: v[np.minimum(rows, n - 1)] for k, v in eval_set.items()}
        rgb, alpha, *rest = predict_fn(batch)
        geometry = rest[0] if rest else None
        gt_rgb, gt_alpha = batch["target_images"], batch["target_alphas"]
        if tuple(rgb.shape) != gt_rgb.shape or tuple(alpha.shape) != gt_alpha.shape:
            raise ValueError(f"predict_fn returned rgb {tuple(rgb.shape)} and alpha {tuple(alpha.shape)}, expected "
                             f"{gt_rgb.shape} and {gt_alpha.shape}")
        rgb, alpha = jnp.asarray(rgb, jnp.float32), jnp.asarray(alpha, jnp.float32)
        values = dict(zip(("psnr", "psnr_head", "ssim", "iou"), _image_metrics(rgb, alpha, gt_rgb, gt_alpha)))
        if "target_mouth_boxes" in batch:
            values["psnr_mouth"] = _mouth_psnr(rgb, gt_rgb, batch["target_mouth_boxes"])
        if geometry is not None and "target_depths" in batch:
            values["depth_err_mm"] = _depth_error_mm(jnp.asarray(geometry["depth"], jnp.float32), alpha,
                                                     batch["target_depths"], gt_alpha)
            values["offset_mm"] = 1000.0 * jnp.asarray(geometry["offset_m"], jnp.float32)
        if perceptual is not None:
            pytree = isinstance(perceptual, LPIPSLoss)
            values["lpips"] = _lpips_pytree(perceptual, rgb, gt_rgb) if pytree else perceptual(rgb, gt_rgb)
        for name, v in values.items():
            per[name].append(np.asarray(v, np.float64).reshape(batch_size, t)[real])
    per_target = {name: np.concatenate(v) for name, v in per.items() if v}
    masks = split_masks(eval_set["target_marginal"], eval_set["target_azimuth_deg"])
    results: dict[str, Any] = {split: _summary(per_target, masks[split]) for split in SPLITS}
    results["per_target"] = {
        **{name: v.tolist() for name, v in per_target.items()},
        "marginal": np.asarray(eval_set["target_marginal"], bool).tolist(),
        "azimuth_deg": np.asarray(eval_set["target_azimuth_deg"], np.float64).tolist(),
    }
    return results


def _difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"count": a["count"], **{m: None if a[m] is None or b[m] is None else a[m] - b[m] for m in METRICS}}


def evaluate_with_control(predict_fn: PredictFn, eval_set: dict[str, np.ndarray], *, shuffle_control: bool,
                          perceptual: Callable[[Any, Any], Any] | None = None, batch_size: int = 4) -> dict[str, Any]:
    """`evaluate`, and with `shuffle_control` also `"shuffled"` (the same targets from the next
    identity's inputs: `{split: summary}`), `"identity_gain"` (own − shuffled, `{split: summary}`)
    and the per-target `<metric>_shuffled` lists."""
    own = evaluate(predict_fn, eval_set, perceptual=perceptual, batch_size=batch_size)
    if not shuffle_control:
        return own
    other = evaluate(predict_fn, with_inputs_of_next(eval_set), perceptual=perceptual, batch_size=batch_size)
    own["shuffled"] = {split: other[split] for split in SPLITS}
    own["identity_gain"] = {split: _difference(own[split], other[split]) for split in SPLITS}
    own["per_target"].update({f"{name}_shuffled": other["per_target"][name] for name in METRICS
                              if name in other["per_target"]})
    return own


def run_evaluation(predict_fn: PredictFn, world: SyntheticWorld, identity_ids: Sequence[int],
                   views: Sequence[int] = (1, 4), modes: Sequence[str] = MODES, num_targets: int = 8,
                   perceptual: Callable[[Any, Any], Any] | None = None, seed: int = 0,
                   batch_size: int = 4, shuffle_control: bool = False,
                   cache_dir: str | None = None) -> dict[str, dict[str, dict]]:
    """`results[mode][f"{v}_views"] = evaluate_with_control(...)` for every mode and input-view
    count; each mode's set is rendered once (with max(views) inputs; kept in `cache_dir` when
    given) and the smaller view counts mask it down, so every view count is scored on the same
    targets. The mouth box comes from the world's head model."""
    if not views:
        raise ValueError("run_evaluation: no view counts given")
    results: dict[str, dict[str, dict]] = {}
    for mode in modes:
        full = with_mouth_boxes(cached_eval_set(world, identity_ids, max(views), num_targets, mode, seed, cache_dir),
                                world.model)
        results[mode] = {f"{v}_views": evaluate_with_control(predict_fn, with_num_views(full, v),
                                                             shuffle_control=shuffle_control, perceptual=perceptual,
                                                             batch_size=batch_size) for v in views}
    return results


def flat_summary(result: dict[str, Any], prefix: str = "heldout/") -> dict[str, float]:
    """One `evaluate_with_control` result's `all` split as flat scalars (for metrics.jsonl):
    `<prefix><metric>`, `<prefix><metric>_shuffled`, `<prefix>identity_gain_<metric>`."""
    out = {}
    for name in METRICS:
        for key, section in (("", result), ("_shuffled", result.get("shuffled")),):
            v = None if section is None else section["all"][name]
            if v is not None:
                out[f"{prefix}{name}{key}"] = float(v)
        gain = result.get("identity_gain")
        if gain is not None and gain["all"][name] is not None:
            out[f"{prefix}identity_gain_{name}"] = float(gain["all"][name])
    return out


# ---------------------------------------------------------------------------------------------- reports
def _cell(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """One row per (mode, views, split) of `run_evaluation`'s results."""
    lines = ["| mode | views | split | PSNR ↑ | head PSNR ↑ | mouth PSNR ↑ | SSIM ↑ | LPIPS ↓ | IoU ↑ | depth error mm ↓ | "
             "identity gain (PSNR) ↑ | count |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, by_views in results.items():
        for views_key, result in by_views.items():
            for split in SPLITS:
                s = result[split]
                gain = result.get("identity_gain", {}).get(split, {}).get("psnr")
                lines.append(f"| {mode} | {views_key.removesuffix('_views')} | {split} | {_cell(s['psnr'], 2)} | "
                             f"{_cell(s['psnr_head'], 2)} | {_cell(s['psnr_mouth'], 2)} | {_cell(s['ssim'], 4)} | "
                             f"{_cell(s['lpips'], 4)} | {_cell(s['iou'], 4)} | {_cell(s['depth_err_mm'], 1)} | "
                             f"{_cell(gain, 2)} | {s['count']} |")
    return "\n".join(lines) + "\n"


def finite_or_none(tree):
    if isinstance(tree, dict):
        return {k: finite_or_none(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite_or_none(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def write_results(results: dict, out_dir: str | os.PathLike, appendix: str = "") -> tuple[str, str]:
    """Writes `eval.json` (strict JSON: any non-finite number becomes null) and `eval.md` (the
    table, then `appendix`) into `out_dir` (created), each atomically; returns their paths.
    Multi-host callers write from process 0 only."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "eval.json"), os.path.join(out_dir, "eval.md")
    write_atomic(json_path, json.dumps(finite_or_none(results), indent=1, allow_nan=False))
    write_atomic(md_path, markdown_table(results) + appendix)
    return json_path, md_path


__all__ = ["METRICS", "PSNR_CAP_DB", "SPLITS", "evaluate", "evaluate_with_control", "finite_or_none", "flat_summary",
           "markdown_table", "run_evaluation", "split_masks", "with_mouth_boxes", "write_results"]
