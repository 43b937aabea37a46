"""The example contract, determinism, resume, sharding, and the on-disk path."""

import jax
import numpy as np
import pytest

from flexavatar_jax.data import balance, ground_truth, pipeline
from flexavatar_jax.data.make_dataset import make_dataset
from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models.batch import MODEL_INPUT_KEYS


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SyntheticConfig(uv_resolution=40, image_size=32, frames_per_clip=12, clips_per_identity=1))


def rendered(world, examples, annotations=True):
    """Spec examples -> the model's batch (numpy), through the device engine."""
    batch = {k: np.stack([ex[k] for ex in examples]) for k in examples[0]}
    return jax.tree.map(np.asarray, ground_truth.GroundTruthRenderer(world, annotations)(batch))


@pytest.fixture(scope="module")
def source(world):
    frames = pipeline.SyntheticFrames(world, num_identities=3)
    return pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=4, num_targets=2,
                                                                 reconstruction_prob=0.5, input_annotations=True),
                                  seed=0, anchors=balance.named_anchor_codes(world.expression_names))


def test_example_contract(source, world):
    seen_counts, modes = set(), set()
    batch = rendered(world, [source[i] for i in range(len(source))])
    for i in range(len(source)):
        ex = {k: v[i] for k, v in batch.items()}
        n = int(ex["num_inputs"])
        seen_counts.add(n)
        modes.add(bool(ex["reconstruction_mode"]))
        assert 1 <= n <= 4 and ex["input_mask"].sum() == n
        assert ex["input_images"].shape == (4, 32, 32, 3) and np.all(ex["input_images"][n:] == 0)
        assert ex["target_images"].shape == (2, 32, 32, 3) and ex["target_alphas"].shape == (2, 32, 32, 1)
        assert ex["identity"] == i // 4
        # Targets belong to the same identity: the same shape coefficients as the inputs.
        shape = world.identity(int(ex["identity"])).shape
        assert np.array_equal(ex["target_shape"], np.broadcast_to(shape, ex["target_shape"].shape))
        assert np.array_equal(ex["input_shape"][:n], np.broadcast_to(shape, (n, shape.size)))
        if ex["reconstruction_mode"]:
            # Each target shows one of the inputs' own frames (same expression) from another camera.
            for t in range(2):
                same = np.all(ex["input_expression"][:n] == ex["target_expression"][t], axis=1)
                assert same.any()
                assert not any(np.array_equal(ex["input_viewmats"][k], ex["target_viewmats"][t]) for k in np.nonzero(same)[0])
    assert len(seen_counts) >= 3 and modes == {True, False}


def test_inputs_carry_no_annotations_by_default(world):
    frames = pipeline.SyntheticFrames(world, num_identities=1)
    ex = pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=1))[0]
    batch = rendered(world, [ex], annotations=False)
    # Only the pose head's training label rides along; the model reads neither it nor any camera.
    assert not any(k.startswith("input_") and k not in ("input_images", "input_mask", "input_view_directions")
                   for k in batch)
    assert "input_view_directions" not in MODEL_INPUT_KEYS and batch["input_view_directions"].shape == (1, 4, 3)


def test_spec_examples_are_small_numbers(source):
    """The host sends the device ids, parameters, cameras and backgrounds: no images."""
    ex = source[3]
    assert not any(k.endswith(("_images", "_alphas")) for k in ex)
    assert sum(np.asarray(v).nbytes for v in ex.values()) < 8_000
    assert int(ex["world_id"]) == int(ex["identity"])  # training ids are [0, N)


def test_batched_render_equals_per_view_renders(source, world):
    """One engine call for a batch of examples (all their views) gives what one call per view gives."""
    examples = [source[i] for i in (0, 5, 9)]
    batch = rendered(world, examples)
    for b, ex in enumerate(examples):
        n = int(ex["num_inputs"])
        views = [("input", k) for k in range(n)] + [("target", t) for t in range(2)]
        for side, k in views:
            params = HeadParams(shape=None, **{f: ex[f"{side}_{f}"][k][None, None] for f in pipeline.SPEC_PARAM_FIELDS})
            one = world.render_views([int(ex["world_id"])], params, ex[f"{side}_viewmats"][k][None, None],
                                     ex[f"{side}_Ks"][k][None, None], ex[f"{side}_backgrounds"][k][None, None])
            # Equal up to float32 rounding, which can swap the depth order of two Gaussians at
            # (almost) the same depth: then a pixel they share differs by up to ~1e-3.
            for got, want in ((batch[f"{side}_images"][b, k], one["rgb"][0, 0]),
                              *(((batch["target_alphas"][b, k], one["alpha"][0, 0]),) if side == "target" else ())):
                diff = np.abs(got - np.asarray(want))
                assert diff.max() < 2e-3 and np.mean(diff > 2e-5) < 0.005, (side, k, diff.max(), np.mean(diff > 2e-5))


def test_examples_are_deterministic(source):
    a, b = source[5], source[5]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_loader_resume_and_sharding(source):
    it = pipeline.make_loader(source, batch_size=2, seed=3, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    b1, b2 = next(it), next(it)
    it.set_state(state)
    c1, c2 = next(it), next(it)
    for x, y in ((b1, c1), (b2, c2)):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    # Two processes see disjoint halves of one global permutation.
    p0 = pipeline.make_loader(source, 1, seed=3, num_epochs=1, process_index=0, process_count=2)
    p1 = pipeline.make_loader(source, 1, seed=3, num_epochs=1, process_index=1, process_count=2)
    e0 = [b["target_viewmats"].tobytes() for b in p0]
    e1 = [b["target_viewmats"].tobytes() for b in p1]
    assert len(e0) == len(e1) == len(source) // 2 and not set(e0) & set(e1)


def test_on_disk_dataset_serves_the_same_contract(world, tmp_path):
    folders = make_dataset(world, tmp_path, num_identities=2, cameras_per_frame=2, frame_stride=3)
    frames = pipeline.VHAPFrames([str(f) for f in folders], image_size=32)
    assert frames.num_identities() == 2 and frames.num_frames(0) == 4 and frames.num_cameras(0, 0) == 2
    src = pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=2, num_targets=2))
    ex = src[3]
    assert ex["target_images"].shape == (2, 32, 32, 3) and ex["identity"] == 1
    # The written params are the generator's ground truth.
    ident = world.identity(1)
    np.testing.assert_array_equal(frames.sequences[1].head_params(0).expression, ident.clips[0].expression[0])
    with pytest.raises(ValueError, match="expects"):
        pipeline.VHAPFrames([str(folders[0])], image_size=64)


def test_an_unfinished_identity_folder_is_rewritten_from_empty(world, tmp_path):
    """What a killed run leaves in an identity folder without transforms.json (a temporary file of
    an interrupted atomic write, a frame of another config) is gone after the re-run, which equals
    an uninterrupted run file for file."""
    whole = make_dataset(world, tmp_path / "whole", num_identities=1, cameras_per_frame=2, frame_stride=3)[0]
    unfinished = tmp_path / "cut" / whole.name
    (unfinished / "fg_masks").mkdir(parents=True)
    (unfinished / "fg_masks" / ".00000_00.tmp-1-deadbeef.png").write_bytes(b"half a png")
    (unfinished / "images").mkdir()
    (unfinished / "images" / "00099_07.png").write_bytes(b"another config's frame")
    resumed = make_dataset(world, tmp_path / "cut", num_identities=1, cameras_per_frame=2, frame_stride=3)[0]
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}  # noqa: E731
    assert files(resumed) == files(whole)


def test_bad_example_config_raises():
    with pytest.raises(ValueError, match="inputs"):
        pipeline.ExampleConfig(max_inputs=5)
    with pytest.raises(ValueError, match="reconstruction_prob"):
        pipeline.ExampleConfig(reconstruction_prob=1.5)


def test_input_count_weights_follow_the_config(world):
    """Uniform by default (the same draw as before the option existed); with weights, the input
    counts follow them (binomial 4-SE bounds over 2,000 examples); a weight of 0 never occurs."""
    frames = pipeline.SyntheticFrames(world, num_identities=2)
    uniform = pipeline.ExampleSource(frames, pipeline.ExampleConfig(examples_per_identity=40), seed=3)
    for i in range(0, 80, 7):
        assert int(uniform[i]["num_inputs"]) == int(np.random.default_rng([3, i]).integers(1, 5))
    weights = (1.0, 0.0, 1.0, 2.0)
    cfg = pipeline.ExampleConfig(examples_per_identity=1000, input_count_weights=weights)
    src = pipeline.ExampleSource(frames, cfg, seed=0)
    counts = np.bincount([int(src[i]["num_inputs"]) for i in range(len(src))], minlength=5)[1:]
    p = np.asarray(weights) / sum(weights)
    n = counts.sum()
    assert counts[1] == 0
    assert np.all(np.abs(counts / n - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12), counts
    narrow = pipeline.ExampleConfig(min_inputs=3, max_inputs=4, input_count_weights=(0.0, 1.0))
    assert all(narrow.draw_num_inputs(np.random.default_rng(k)) == 4 for k in range(20))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, -1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0), (1.0, float("nan"), 1.0, 1.0)])
def test_bad_input_count_weights_are_refused(weights):
    with pytest.raises(ValueError, match="input_count_weights"):
        pipeline.ExampleConfig(input_count_weights=weights)


def test_hidden_views_are_their_background_and_leave_the_others_unchanged(source, world):
    """`visible=False` views (padded input slots) come out as what culling every Gaussian gives:
    the background (a non-finite one as 0), alpha 0, depth 0; the visible views are those of a
    call where every view is visible."""
    ex = source[0]
    params = HeadParams(shape=None, **{f: np.stack([ex[f"target_{f}"]] * 2) for f in pipeline.SPEC_PARAM_FIELDS})
    viewmats, Ks = np.stack([ex["target_viewmats"]] * 2), np.stack([ex["target_Ks"]] * 2)
    backgrounds = np.array([[[0.2, 0.5, 0.9], [np.nan, 1.0, 0.0]], [[1.0, 1.0, 1.0], [0.0, 0.3, 0.6]]], np.float32)
    visible = np.array([[True, False], [False, True]])
    ids = [int(ex["world_id"]), 2]
    got = world.render_views(ids, params, viewmats, Ks, backgrounds, with_depth=True, visible=visible)
    every = world.render_views(ids, params, viewmats, Ks, backgrounds, with_depth=True)
    for b, v in ((0, 1), (1, 0)):
        want_rgb = np.broadcast_to(np.nan_to_num(backgrounds[b, v], nan=0.0), got["rgb"].shape[2:])
        np.testing.assert_array_equal(np.asarray(got["rgb"][b, v]), want_rgb)
        assert not np.asarray(got["alpha"][b, v]).any() and not np.asarray(got["depth"][b, v]).any()
    for b, v in ((0, 0), (1, 1)):
        assert np.asarray(got["alpha"][b, v]).mean() > 0.05  # the head is there
        for key in ("rgb", "alpha", "depth"):
            np.testing.assert_allclose(np.asarray(got[key][b, v]), np.asarray(every[key][b, v]), atol=1e-6)
