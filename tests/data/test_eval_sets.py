"""Held-out eval sets: the training-example contract, determinism and shared targets across view
counts, recorded azimuths, cross-reenactment ground truth, and bad requests."""

import numpy as np
import pytest

from flexavatar_jax.data import eval_sets, ground_truth, pipeline
from flexavatar_jax.data.motion import HEAD_CENTER
from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld, heldout_ids
from flexavatar_jax.head import HeadParams
from flexavatar_jax.render.camera import camera_center

NUM_TARGETS = 4


def eval_world() -> SyntheticWorld:
    # A high event rate so the few frames contain marginal (rare-expression) ones.
    return SyntheticWorld(SyntheticConfig(uv_resolution=32, image_size=32, frames_per_clip=16, clips_per_identity=1,
                                          event_rate=0.15))


@pytest.fixture(scope="module")
def world():
    return eval_world()


@pytest.fixture(scope="module")
def ids():
    return heldout_ids(3)


@pytest.fixture(scope="module")
def self_set(world, ids):
    return eval_sets.build_eval_set(world, ids, num_views=4, num_targets=NUM_TARGETS, mode="self", seed=0)


@pytest.fixture(scope="module")
def cross_set(world, ids):
    return eval_sets.build_eval_set(world, ids, num_views=2, num_targets=NUM_TARGETS, mode="cross", seed=0)


def test_eval_set_has_the_training_example_contract(world, self_set):
    frames = pipeline.SyntheticFrames(world, ids=heldout_ids(1))
    spec = pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=1, num_targets=NUM_TARGETS,
                                                                 input_annotations=True))[0]
    batch = ground_truth.GroundTruthRenderer(world, input_annotations=True)({k: np.asarray(v)[None] for k, v in spec.items()})
    example = {k: np.asarray(v[0]) for k, v in batch.items()}
    for key, value in example.items():
        # `input_view_directions` is the pose head's training label; an eval set carries the input
        # cameras and poses it follows from.
        if key in ("identity", "reconstruction_mode", "input_view_directions"):
            continue
        assert key in self_set, key
        assert self_set[key].shape[1:] == np.shape(value) and self_set[key].dtype == np.asarray(value).dtype, key
    n = len(self_set["identity"])
    assert np.all(self_set["input_mask"]) and np.all(self_set["num_inputs"] == 4)
    # Every identity: ordinary and marginal targets occur across the set, frontal and side/back in every row.
    assert self_set["target_marginal"].any() and not self_set["target_marginal"].all()
    frontal = np.abs(self_set["target_azimuth_deg"]) <= eval_sets.FRONTAL_MAX_AZIMUTH_DEG
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
    again = eval_sets.build_eval_set(world, ids, num_views=4, num_targets=NUM_TARGETS, mode="self", seed=0)
    assert again.keys() == self_set.keys()
    for key in self_set:
        np.testing.assert_array_equal(again[key], self_set[key], err_msg=key)
    one_view = eval_sets.build_eval_set(world, ids, num_views=1, num_targets=NUM_TARGETS, mode="self", seed=0)
    masked = eval_sets.with_num_views(self_set, 1)
    for key in one_view:
        np.testing.assert_array_equal(masked[key], one_view[key], err_msg=key)
    assert np.all(one_view["input_images"][:, 1:] == 0) and one_view["input_mask"].sum() == len(ids)
    other = eval_sets.build_eval_set(world, ids[:1], num_views=1, num_targets=NUM_TARGETS, mode="self", seed=1)
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
    # The set renders rows of views in one batched call: equal to one view's render up to float32 rounding.
    np.testing.assert_allclose(cross_set["target_images"][r, t], rgb[0], atol=2e-5)
    np.testing.assert_allclose(cross_set["target_alphas"][r, t], alpha[0], atol=2e-5)
    # ... and not the driver itself making that expression.
    driver_rgb, _, _ = world.render(driver, driver.frame_params(0, frame), *view)
    assert np.abs(cross_set["target_images"][r, t] - driver_rgb[0]).max() > 0.1


def test_bad_requests_are_rejected(world, ids):
    with pytest.raises(ValueError, match="at least two identities"):
        eval_sets.build_eval_set(world, ids[:1], 1, 2, mode="cross")
    with pytest.raises(ValueError, match="mode must be one of"):
        eval_sets.build_eval_set(world, ids, 1, 2, mode="mirror")
    with pytest.raises(ValueError, match="num_views"):
        eval_sets.build_eval_set(world, ids, 5, 2)


def test_target_azimuths_are_stratified_frontal_then_side():
    rng = np.random.default_rng(0)
    for num in (1, 4, 7):
        az = eval_sets.target_azimuths(rng, num)
        assert az.shape == (num,) and az.dtype == np.float32
        assert np.all((az >= -180.0) & (az < 180.0))
        front = (num + 1) // 2
        assert np.all(np.abs(az[:front]) < eval_sets.FRONTAL_MAX_AZIMUTH_DEG)
        assert np.all(np.abs(az[front:]) > eval_sets.FRONTAL_MAX_AZIMUTH_DEG)
    np.testing.assert_allclose(eval_sets.wrap_deg([190.0, -190.0, 45.0, 180.0]), [-170.0, 170.0, 45.0, -180.0])
    assert eval_sets.MODES == ("self", "cross")


def test_eval_set_views_are_the_engines_renders_of_the_host_identity(world, self_set):
    """The batched eval-set render (identities synthesised on the device) equals `world.render` of
    the identity brought to the host, one view at a time."""
    r, t = 0, 1
    ident = world.identity(int(self_set["identity"][r]))
    params = HeadParams(**{f: self_set[f"target_{f}"][r, t] for f in pipeline.PARAM_FIELDS})
    np.testing.assert_array_equal(params.shape, ident.shape)
    rgb, alpha, depth = world.render(ident, params, self_set["target_viewmats"][r, t][None],
                                     self_set["target_Ks"][r, t][None], self_set["target_backgrounds"][r, t][None])
    assert self_set["target_images"].dtype == self_set["target_alphas"].dtype == np.float32
    np.testing.assert_allclose(np.asarray(rgb[0]), self_set["target_images"][r, t], atol=2e-5)
    np.testing.assert_allclose(np.asarray(alpha[0]), self_set["target_alphas"][r, t], atol=2e-5)
    np.testing.assert_allclose(np.asarray(depth[0]), self_set["target_depths"][r, t], atol=2e-5)


def test_target_depths_are_the_heads_distance_from_the_camera(self_set):
    """The expected depth of every covered pixel lies within the head's extent (~0.3 m) around the
    distance of the camera from the head centre, and is 0 where nothing is hit."""
    n, t = self_set["target_alphas"].shape[:2]
    for r in range(n):
        for k in range(t):
            alpha, depth = self_set["target_alphas"][r, k], self_set["target_depths"][r, k]
            centre = HEAD_CENTER @ self_set["target_viewmats"][r, k][:3, :3].T + self_set["target_viewmats"][r, k][:3, 3]
            covered = alpha > 0.5
            assert covered.any() and np.all(np.abs(depth[covered] - centre[2]) < 0.2), (r, k)
            np.testing.assert_allclose(depth[alpha == 0.0], 0.0)


def test_input_shuffle_control_moves_inputs_only(self_set):
    shuffled = eval_sets.with_inputs_of_next(self_set)
    n = len(self_set["identity"])
    for key, value in self_set.items():
        if key.startswith("input_") or key == "num_inputs":
            for k in range(n):
                np.testing.assert_array_equal(shuffled[key][k], value[(k + 1) % n], err_msg=key)
        else:
            np.testing.assert_array_equal(shuffled[key], value, err_msg=key)
    with pytest.raises(ValueError, match="at least two identities"):
        eval_sets.with_inputs_of_next({k: v[:1] for k, v in self_set.items()})


def test_lateral_input_first_puts_the_widest_view_in_slot_0_and_keeps_everything_else(self_set):
    lateral = eval_sets.with_lateral_input_first(self_set)
    widest = np.abs(eval_sets.wrap_deg(self_set["input_azimuth_deg"])).max(axis=1)
    np.testing.assert_array_equal(np.abs(eval_sets.wrap_deg(lateral["input_azimuth_deg"][:, 0])), widest)
    assert np.all(widest > eval_sets.FRONTAL_MAX_AZIMUTH_DEG / 4)  # the probe's premise on this draw
    for k in range(len(self_set["identity"])):
        # A permutation of the row's inputs: every array moves with its frame.
        order = [int(np.flatnonzero(self_set["input_frame"][k] == f)[0]) for f in lateral["input_frame"][k]]
        assert sorted(order) == [0, 1, 2, 3]
        for key, value in self_set.items():
            if key.startswith("input_"):
                np.testing.assert_array_equal(lateral[key][k], value[k][order], err_msg=key)
    for key, value in self_set.items():
        if not key.startswith("input_"):
            np.testing.assert_array_equal(lateral[key], value, err_msg=key)
    one = eval_sets.with_num_views(lateral, 1)
    np.testing.assert_array_equal(one["input_images"][:, 0], lateral["input_images"][:, 0])
    assert one["input_mask"].sum() == len(self_set["identity"])


def test_input_camera_error_turns_each_real_input_camera_by_the_angle_about_the_head(self_set):
    angle = 7.5
    two = eval_sets.with_num_views(self_set, 2)
    moved = eval_sets.with_input_camera_error(two, angle, seed=3)
    old, new = two["input_viewmats"].astype(np.float64), moved["input_viewmats"].astype(np.float64)
    centre = np.append(HEAD_CENTER, 1.0)
    turned = []
    for k in range(len(two["identity"])):
        for slot in range(4):
            if not two["input_mask"][k, slot]:
                np.testing.assert_array_equal(new[k, slot], old[k, slot])  # padding untouched
                continue
            relative = old[k, slot, :3, :3].T @ new[k, slot, :3, :3]
            cos = np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0)
            assert np.rad2deg(np.arccos(cos)) == pytest.approx(angle, abs=1e-3)
            # A rotation about the head centre: the centre stays where the camera saw it.
            np.testing.assert_allclose(new[k, slot] @ centre, old[k, slot] @ centre, atol=1e-5)
            np.testing.assert_allclose(new[k, slot, 3], [0, 0, 0, 1])
            turned.append(relative)
    assert len({tuple(np.round(r, 6).ravel()) for r in turned}) == len(turned)  # a fresh axis per view
    for key, value in two.items():
        if key != "input_viewmats":
            np.testing.assert_array_equal(moved[key], value, err_msg=key)
    np.testing.assert_allclose(eval_sets.with_input_camera_error(two, 0.0)["input_viewmats"], two["input_viewmats"],
                               atol=1e-7)
    again = eval_sets.with_input_camera_error(two, angle, seed=3)["input_viewmats"]
    np.testing.assert_array_equal(again, moved["input_viewmats"])
    assert not np.array_equal(eval_sets.with_input_camera_error(two, angle, seed=4)["input_viewmats"], again)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="angle_deg"):
            eval_sets.with_input_camera_error(two, bad)


def test_cached_eval_set_equals_a_fresh_one_and_is_keyed_by_the_draw(world, ids, self_set, tmp_path):
    first = eval_sets.cached_eval_set(world, ids, 4, NUM_TARGETS, "self", 0, str(tmp_path))
    again = eval_sets.cached_eval_set(world, ids, 4, NUM_TARGETS, "self", 0, str(tmp_path))  # read from disk
    assert len(list((tmp_path / "eval_sets").iterdir())) == 1
    for key, value in self_set.items():
        np.testing.assert_array_equal(first[key], value, err_msg=key)
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    other = eval_sets.cached_eval_set(world, ids, 4, NUM_TARGETS, "self", 1, str(tmp_path))
    assert len(list((tmp_path / "eval_sets").iterdir())) == 2
    assert not np.array_equal(other["target_images"], self_set["target_images"])
