"""Held-out evaluation: eval-set contract and determinism, cross-reenactment ground truth, metric
closed forms per split, reports, turntable geometry."""

import json

import numpy as np
import pytest

from flexavatar_jax.data import pipeline
from flexavatar_jax.data.motion import HEAD_CENTER
from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld, heldout_ids
from flexavatar_jax.head import HeadParams
from flexavatar_jax.render.camera import camera_center
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train.perceptual import LPIPSLoss, expected_shapes, params_from_arrays

NUM_TARGETS = 4


@pytest.fixture(scope="module")
def world():
    # A high event rate so the few frames contain marginal (rare-expression) ones.
    return SyntheticWorld(SyntheticConfig(uv_resolution=32, image_size=32, frames_per_clip=16, clips_per_identity=1,
                                          event_rate=0.15))


@pytest.fixture(scope="module")
def ids():
    return heldout_ids(3)


@pytest.fixture(scope="module")
def self_set(world, ids):
    return ev.build_eval_set(world, ids, num_views=4, num_targets=NUM_TARGETS, mode="self", seed=0)


@pytest.fixture(scope="module")
def cross_set(world, ids):
    return ev.build_eval_set(world, ids, num_views=2, num_targets=NUM_TARGETS, mode="cross", seed=0)


def oracle(batch):
    return batch["target_images"], batch["target_alphas"]


def test_eval_set_has_the_training_example_contract(world, self_set):
    frames = pipeline.SyntheticFrames(world, ids=heldout_ids(1))
    example = pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=1, num_targets=NUM_TARGETS,
                                                                    input_annotations=True))[0]
    for key, value in example.items():
        if key in ("identity", "reconstruction_mode"):
            continue
        assert key in self_set, key
        assert self_set[key].shape[1:] == np.shape(value) and self_set[key].dtype == np.asarray(value).dtype, key
    n = len(self_set["identity"])
    assert np.all(self_set["input_mask"]) and np.all(self_set["num_inputs"] == 4)
    # Every identity: ordinary and marginal targets occur across the set, frontal and side/back in every row.
    assert self_set["target_marginal"].any() and not self_set["target_marginal"].all()
    frontal = np.abs(self_set["target_azimuth_deg"]) <= ev.FRONTAL_MAX_AZIMUTH_DEG
    assert np.all(frontal.any(axis=1)) and np.all((~frontal).any(axis=1))
    for r in range(n):
        ident = world.identity(int(self_set["identity"][r]))
        # Self reenactment: targets are the identity's own frames, none of them an input frame.
        assert not set(self_set["target_frame"][r]) & set(self_set["input_frame"][r])
        np.testing.assert_array_equal(self_set["target_expression"][r], ident.expressions[self_set["target_frame"][r]])
        np.testing.assert_array_equal(self_set["target_marginal"][r], ident.marginal[self_set["target_frame"][r]])


def test_recorded_azimuth_matches_the_camera_position(self_set):
    centers = np.asarray(camera_center(self_set["target_viewmats"])) - HEAD_CENTER
    measured = np.rad2deg(np.arctan2(centers[..., 0], centers[..., 2]))
    diff = (measured - self_set["target_azimuth_deg"] + 180.0) % 360.0 - 180.0
    # Only the sampler's ~1 cm aim jitter at ~1 m separates the two.
    assert np.max(np.abs(diff)) < 3.0


def test_eval_set_is_deterministic_and_view_counts_share_targets(world, ids, self_set):
    again = ev.build_eval_set(world, ids, num_views=4, num_targets=NUM_TARGETS, mode="self", seed=0)
    assert again.keys() == self_set.keys()
    for key in self_set:
        np.testing.assert_array_equal(again[key], self_set[key], err_msg=key)
    one_view = ev.build_eval_set(world, ids, num_views=1, num_targets=NUM_TARGETS, mode="self", seed=0)
    masked = ev.with_num_views(self_set, 1)
    for key in one_view:
        np.testing.assert_array_equal(masked[key], one_view[key], err_msg=key)
    assert np.all(one_view["input_images"][:, 1:] == 0) and one_view["input_mask"].sum() == len(ids)
    other = ev.build_eval_set(world, ids[:1], num_views=1, num_targets=NUM_TARGETS, mode="self", seed=1)
    assert not np.array_equal(other["target_viewmats"][0], self_set["target_viewmats"][0])


def test_cross_mode_drives_each_identity_by_another(world, ids, cross_set):
    assert set(cross_set["driver_identity"]) == set(ids)
    assert np.all(cross_set["driver_identity"] != cross_set["identity"])
    for r in range(len(ids)):
        ident = world.identity(int(cross_set["identity"][r]))
        driver = world.identity(int(cross_set["driver_identity"][r]))
        frames = cross_set["target_frame"][r]
        np.testing.assert_array_equal(cross_set["target_shape"][r],
                                      np.broadcast_to(ident.shape, (NUM_TARGETS, ident.shape.size)))
        np.testing.assert_array_equal(cross_set["target_expression"][r], driver.expressions[frames])
        np.testing.assert_array_equal(cross_set["target_marginal"][r], driver.marginal[frames])
        # None of the driving expressions is one of the identity's own.
        own = ident.expressions
        assert not any(np.any(np.all(own == e, axis=1)) for e in cross_set["target_expression"][r])
        # The inputs stay the identity's own frames.
        np.testing.assert_array_equal(cross_set["input_expression"][r, :2], own[cross_set["input_frame"][r, :2]])


def test_cross_ground_truth_is_the_identity_under_the_drivers_parameters(world, cross_set):
    r, t = 1, 2
    ident = world.identity(int(cross_set["identity"][r]))
    driver = world.identity(int(cross_set["driver_identity"][r]))
    frame = int(cross_set["target_frame"][r, t])
    clip = driver.clips[0]  # one clip per identity in this world
    params = HeadParams(shape=ident.shape, expression=clip.expression[frame], global_pose=clip.global_pose[frame],
                        neck_pose=clip.neck_pose[frame], jaw_pose=clip.jaw_pose[frame],
                        eyes_pose=clip.eyes_pose[frame], translation=clip.translation[frame])
    view = (cross_set["target_viewmats"][r, t:t + 1], cross_set["target_Ks"][r, t:t + 1],
            cross_set["target_backgrounds"][r, t:t + 1])
    rgb, alpha, _ = world.render(ident, params, *view)
    np.testing.assert_allclose(cross_set["target_images"][r, t], rgb[0], atol=1e-6)
    np.testing.assert_allclose(cross_set["target_alphas"][r, t], alpha[0], atol=1e-6)
    # ... and not the driver itself making that expression.
    driver_rgb, _, _ = world.render(driver, driver.frame_params(0, frame), *view)
    assert np.abs(cross_set["target_images"][r, t] - driver_rgb[0]).max() > 0.1


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
    assert empty == {"count": 0, "psnr": None, "ssim": None, "lpips": None, "iou": None}


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


def test_bad_requests_are_rejected(world, ids):
    with pytest.raises(ValueError, match="at least two identities"):
        ev.build_eval_set(world, ids[:1], 1, 2, mode="cross")
    with pytest.raises(ValueError, match="mode must be one of"):
        ev.build_eval_set(world, ids, 1, 2, mode="mirror")
    with pytest.raises(ValueError, match="num_views"):
        ev.build_eval_set(world, ids, 5, 2)


def test_turntable_cameras_orbit_the_head_centre():
    num, radius = 12, 0.9
    viewmats, Ks = ev.turntable_cameras(num, image_size=64, radius=radius, elevation_deg=10.0, fov_deg=20.0)
    assert viewmats.shape == (num, 4, 4) and Ks.shape == (num, 3, 3)
    # The head centre lies on every optical axis (camera x = y = 0), at the orbit radius in front.
    in_camera = viewmats[:, :3, :3] @ HEAD_CENTER + viewmats[:, :3, 3]
    np.testing.assert_allclose(in_camera[:, :2], 0.0, atol=1e-5)
    np.testing.assert_allclose(in_camera[:, 2], radius, atol=1e-5)
    offsets = np.asarray(camera_center(viewmats)) - HEAD_CENTER
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), radius, atol=1e-5)
    azimuth = np.rad2deg(np.arctan2(offsets[:, 0], offsets[:, 2]))
    steps = np.diff(np.unwrap(np.deg2rad(azimuth)))
    np.testing.assert_allclose(np.rad2deg(steps), 360.0 / num, atol=1e-3)  # a full circle in equal steps
    assert azimuth[0] == pytest.approx(0.0, abs=1e-4)  # starts frontal
    np.testing.assert_allclose(Ks[:, :2, 2], 32.0)
    np.testing.assert_allclose(Ks[:, 1, 1], Ks[:, 0, 0])
