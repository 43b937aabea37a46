"""Held-out evaluation: metric closed forms per split, LPIPS with a perceptual callable, and the
per-mode / per-view-count reports (the eval sets themselves: tests/data/test_eval_sets.py)."""

import json
import math

import numpy as np
import pytest

from flexavatar_jax.data import eval_sets
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.data.synthetic import heldout_ids
from flexavatar_jax.head import HeadParams
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train.perceptual import LPIPSLoss, expected_shapes, params_from_arrays
# The eval-set fixtures (module-scoped world, held-out ids, self-reenactment set) are shared.
from tests.data.test_eval_sets import NUM_TARGETS, ids, self_set, world  # noqa: F401


SELF_IDS = heldout_ids(3)  # the ids of the shared `self_set` fixture


def oracle(batch):
    return batch["target_images"], batch["target_alphas"]


def test_oracle_is_perfect_and_a_constant_offset_gives_the_closed_form_psnr(self_set):
    seen = []

    def recording_oracle(batch):
        seen.append(batch["target_images"].shape[0])
        return oracle(batch)

    perfect = ev.evaluate(recording_oracle, self_set, batch_size=2)
    assert seen == [2, 2]  # 3 rows: the last batch is padded to the fixed size
    for split in ev.SPLITS:
        s = perfect[split]
        assert s["count"] > 0 and s["lpips"] is None
        assert s["psnr"] == ev.PSNR_CAP_DB and s["iou"] == 1.0
        assert s["ssim"] == pytest.approx(1.0, abs=1e-6)

    delta = 0.05
    offset = ev.evaluate(lambda b: (b["target_images"] + delta, b["target_alphas"]), self_set, batch_size=2)
    for split in ev.SPLITS:
        assert offset[split]["psnr"] == pytest.approx(10 * np.log10(1 / delta**2), abs=1e-3), split
        assert offset[split]["iou"] == 1.0


def test_split_means_and_counts_match_the_flags_and_azimuths(self_set):
    # A per-target error that grows with the azimuth, so every split has its own closed-form mean.
    def biased(batch):
        delta = 0.02 + 0.1 * np.abs(batch["target_azimuth_deg"]) / 180.0
        return batch["target_images"] + delta[..., None, None, None], batch["target_alphas"]

    result = ev.evaluate(biased, self_set, batch_size=3)
    az, marginal = self_set["target_azimuth_deg"], self_set["target_marginal"]
    expected_psnr = -20.0 * np.log10(0.02 + 0.1 * np.abs(az.astype(np.float64)) / 180.0)
    frontal = np.abs(az) <= 45.0
    masks = {"all": np.ones_like(frontal), "ordinary": ~marginal, "marginal": marginal, "frontal": frontal,
             "side_back": ~frontal}
    for split, mask in masks.items():
        assert result[split]["count"] == mask.sum(), split
        assert result[split]["psnr"] == pytest.approx(expected_psnr[mask].mean(), abs=1e-3), split
    assert result["ordinary"]["count"] + result["marginal"]["count"] == result["all"]["count"] == az.size
    assert result["frontal"]["count"] + result["side_back"]["count"] == az.size
    np.testing.assert_allclose(result["per_target"]["psnr"], expected_psnr, atol=1e-3)

    no_marginal = dict(self_set, target_marginal=np.zeros_like(marginal))
    empty = ev.evaluate(oracle, no_marginal, batch_size=3)["marginal"]
    assert empty == {"count": 0, **{name: None for name in ev.METRICS}}


def test_lpips_is_reported_with_a_perceptual_callable(self_set):
    widths = (4, 4, 4, 4, 4)
    rng = np.random.default_rng(0)
    arrays = {k: rng.uniform(0.0, 0.3, shape).astype(np.float32) for k, shape in expected_shapes(widths).items()}
    loss = LPIPSLoss(widths=widths, variables=params_from_arrays(arrays, widths))
    subset = {k: v[:1] for k, v in self_set.items()}
    perfect = ev.evaluate(oracle, subset, perceptual=loss, batch_size=1)
    assert perfect["all"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    # Any callable works: a mean absolute error stands in for LPIPS.
    mae = lambda p, t: np.mean(np.abs(np.asarray(p) - np.asarray(t)), axis=(-3, -2, -1))  # noqa: E731
    shifted = ev.evaluate(lambda b: (b["target_images"] - 0.25, b["target_alphas"]), subset, perceptual=mae)
    assert shifted["all"]["lpips"] == pytest.approx(0.25, abs=1e-5)


def test_run_evaluation_reports_every_mode_and_view_count(world, ids, tmp_path):
    results = ev.run_evaluation(oracle, world, ids[:2], views=(1, 4), modes=("self", "cross"), num_targets=2)
    assert set(results) == {"self", "cross"} and all(set(r) == {"1_views", "4_views"} for r in results.values())
    table = ev.markdown_table(results)
    for mode in ("self", "cross"):
        for v in (1, 4):
            for split in ev.SPLITS:
                row = f"| {mode} | {v} | {split} |"
                assert any(line.startswith(row) for line in table.splitlines()), row
    json_path, md_path = ev.write_results(results, tmp_path / "eval")

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    with open(json_path) as f:
        loaded = json.load(f, parse_constant=reject)
    assert loaded["cross"]["4_views"]["all"]["psnr"] == ev.PSNR_CAP_DB
    assert loaded["self"]["1_views"]["all"]["count"] == 2 * 2
    assert open(md_path).read() == table


def test_split_masks_wrap_the_azimuth():
    marginal = np.array([[True, False, False, True]])
    azimuth = np.array([[0.0, 44.0, 350.0, -100.0]])  # 350° is -10°: frontal
    masks = ev.split_masks(marginal, azimuth)
    assert set(masks) == set(ev.SPLITS)
    np.testing.assert_array_equal(masks["frontal"], [[True, True, True, False]])
    np.testing.assert_array_equal(masks["side_back"], ~masks["frontal"])
    np.testing.assert_array_equal(masks["marginal"], marginal)
    np.testing.assert_array_equal(masks["ordinary"], ~marginal)
    assert masks["all"].all()
    assert eval_sets.FRONTAL_MAX_AZIMUTH_DEG == 45.0


def test_finite_or_none_makes_strict_json():
    tree = {"a": [1.0, math.nan, {"b": math.inf}], "c": (-math.inf, 2), "d": "x"}
    assert ev.finite_or_none(tree) == {"a": [1.0, None, {"b": None}], "c": [None, 2], "d": "x"}
    assert ev.METRICS == ("psnr", "psnr_head", "psnr_mouth", "ssim", "lpips", "iou", "depth_err_mm", "offset_mm")


def _mean_input_colour(batch):
    """A predictor that paints every target with the mean colour of its first input image: it uses
    the inputs, so the shuffle control changes its score."""
    colour = batch["input_images"][:, 0].mean(axis=(1, 2))  # [B,3]
    rgb = np.broadcast_to(colour[:, None, None, None, :], batch["target_images"].shape)
    return rgb, batch["target_alphas"]


def test_identity_gain_is_own_minus_shuffled_in_closed_form(self_set):
    result = ev.evaluate_with_control(_mean_input_colour, self_set, shuffle_control=True, batch_size=2)
    n = len(self_set["identity"])
    targets = self_set["target_images"].astype(np.float64)
    colours = self_set["input_images"][:, 0].astype(np.float64).mean(axis=(1, 2))

    def psnr(rows):  # per-target PSNR of painting row k's targets with colours[rows[k]]
        err = (targets - colours[rows][:, None, None, None, :]) ** 2
        return -10 * np.log10(err.mean(axis=(2, 3, 4)))

    own, other = psnr(np.arange(n)), psnr((np.arange(n) + 1) % n)
    np.testing.assert_allclose(result["per_target"]["psnr_shuffled"], other, atol=1e-3)
    assert result["identity_gain"]["all"]["psnr"] == pytest.approx((own - other).mean(), abs=1e-3)
    assert result["shuffled"]["all"]["psnr"] == pytest.approx(other.mean(), abs=1e-3)
    flat = ev.flat_summary(result)
    assert flat["heldout/identity_gain_psnr"] == pytest.approx((own - other).mean(), abs=1e-3)


def test_a_predictor_that_ignores_its_inputs_has_no_identity_gain(self_set):
    grey = lambda b: (np.full_like(b["target_images"], 0.5), b["target_alphas"])  # noqa: E731
    result = ev.evaluate_with_control(grey, self_set, shuffle_control=True, batch_size=3)
    for split in ev.SPLITS:
        for name in ("psnr", "psnr_head", "ssim", "iou"):
            value = result["identity_gain"][split][name]
            assert value is None or value == 0.0, (split, name)
    assert "shuffled" not in ev.evaluate_with_control(grey, self_set, shuffle_control=False)


def test_head_psnr_ignores_background_errors(self_set):
    def background_error(batch):
        off_head = batch["target_alphas"] <= 0.5
        return batch["target_images"] + 0.1 * off_head, batch["target_alphas"]

    result = ev.evaluate(background_error, self_set, batch_size=2)
    off = (self_set["target_alphas"] <= 0.5).astype(np.float64)
    expected = -10 * np.log10((0.01 * off).mean(axis=(2, 3, 4)))  # the error is the same on all 3 channels
    np.testing.assert_allclose(result["per_target"]["psnr"], expected, atol=1e-3)
    np.testing.assert_allclose(result["per_target"]["psnr_head"], ev.PSNR_CAP_DB)


def _mouth_box_reference(world, eval_set) -> np.ndarray:
    """[N,T,H,W,1] mouth boxes built independently in float64 numpy: the mouth vertices of the
    posed mesh, projected with the OpenCV pinhole model, the box of those in front of the camera
    grown by 4 pixels, pixel centres at +0.5."""
    from flexavatar_jax.head import lbs
    from flexavatar_jax.train.losses import MOUTH_REGIONS

    head = world.model
    idx = np.flatnonzero(head.vertex_mask(*MOUTH_REGIONS))
    n, t, size = eval_set["target_images"].shape[:3]
    boxes = np.zeros((n, t, size, size, 1))
    centres = np.arange(size) + 0.5
    for r in range(n):
        for k in range(t):
            params = HeadParams(**{f: eval_set[f"target_{f}"][r, k] for f in PARAM_FIELDS})
            verts = np.asarray(lbs(head, params).vertices, np.float64)[idx]
            cam = verts @ eval_set["target_viewmats"][r, k][:3, :3].T.astype(np.float64) + eval_set["target_viewmats"][r, k][:3, 3]
            front = cam[:, 2] > 1e-3
            if not front.any():
                continue
            pix = cam[front] @ eval_set["target_Ks"][r, k].T.astype(np.float64)
            x, y = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
            in_x = (centres >= x.min() - 4) & (centres <= x.max() + 4)
            in_y = (centres >= y.min() - 4) & (centres <= y.max() + 4)
            boxes[r, k, ..., 0] = in_y[:, None] & in_x[None, :]
    return boxes


def test_mouth_psnr_is_the_psnr_inside_the_projected_mouth_box(world, self_set):
    boxes = _mouth_box_reference(world, self_set)
    assert boxes.any(axis=(2, 3, 4)).sum() >= self_set["target_images"].shape[1]  # mouths are in view
    delta = 0.1
    inside = ev.evaluate(lambda b: (b["target_images"] + delta * _rows_of(boxes, b), b["target_alphas"]),
                         ev.with_mouth_boxes(self_set, world.model), batch_size=3)
    has_box = boxes.any(axis=(2, 3, 4))
    per = np.asarray(inside["per_target"]["psnr_mouth"], np.float64)
    np.testing.assert_allclose(per[has_box], 20 * np.log10(1 / delta), atol=1e-3)
    assert np.all(np.isnan(per[~has_box]))  # no mouth in front of the camera: no value
    # The whole-image PSNR of the same prediction: the error covers exactly the box's share.
    share = boxes.mean(axis=(2, 3, 4))
    expected = np.where(share > 0, -10 * np.log10(np.maximum(delta**2 * share, 1e-30)), ev.PSNR_CAP_DB)
    np.testing.assert_allclose(inside["per_target"]["psnr"], np.minimum(expected, ev.PSNR_CAP_DB), atol=1e-3)
    outside = ev.evaluate(lambda b: (b["target_images"] + delta * (1 - _rows_of(boxes, b)), b["target_alphas"]),
                          ev.with_mouth_boxes(self_set, world.model), batch_size=3)
    np.testing.assert_allclose(np.asarray(outside["per_target"]["psnr_mouth"])[has_box], ev.PSNR_CAP_DB)
    assert ev.evaluate(oracle, self_set)["all"]["psnr_mouth"] is None  # no mouth boxes: not computed


def _rows_of(per_row: np.ndarray, batch) -> np.ndarray:
    """The rows of an [N,...] array that a (padded) evaluation batch holds, found by identity id."""
    order = {int(i): k for k, i in enumerate(SELF_IDS)}
    return per_row[[order[int(i)] for i in batch["identity"]]]


def test_depth_error_and_offset_spread_from_a_geometry_predictor(self_set):
    shift_m, offset_m = 0.003, 0.002

    def geometric(batch):
        depth = batch["target_depths"] + shift_m  # 3 mm further everywhere
        n, t = batch["target_images"].shape[:2]
        return batch["target_images"], batch["target_alphas"], {"depth": depth, "offset_m": np.full((n, t), offset_m)}

    result = ev.evaluate(geometric, self_set, batch_size=2)
    np.testing.assert_allclose(result["per_target"]["depth_err_mm"], 1000 * shift_m, rtol=1e-3)
    np.testing.assert_allclose(result["per_target"]["offset_mm"], 1000 * offset_m, rtol=1e-6)
    assert result["all"]["depth_err_mm"] == pytest.approx(3.0, rel=1e-3)

    def empty_silhouette(batch):
        rgb, alpha, geo = geometric(batch)
        return rgb, np.zeros_like(alpha), geo

    none_shared = ev.evaluate(empty_silhouette, self_set, batch_size=2)
    assert np.all(np.isnan(none_shared["per_target"]["depth_err_mm"])) and none_shared["all"]["depth_err_mm"] is None
    assert ev.evaluate(oracle, self_set)["all"]["depth_err_mm"] is None  # no geometry: not computed
