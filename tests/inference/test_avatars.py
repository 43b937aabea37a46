"""The inference library behind the user commands: avatar files round-trip exactly and refuse the
wrong model, photo reconstruction equals the model on the same pixels, and the rendered videos /
turntables / PLY equal direct calls of the avatar API (micro config, random params: nothing here
needs a trained model). Motions themselves: tests/data/test_driving.py."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flexavatar_jax import inference
from flexavatar_jax.config import to_dict
from flexavatar_jax.data import driving, eval_sets, media
from flexavatar_jax.data import motion as motion_lib
from flexavatar_jax.head import POSE_SIZE, HeadParams
from flexavatar_jax.inference import avatars
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.render import ply
from flexavatar_jax.train import inputs
from tests.train.test_loop import micro_config

BATCH = 2  # frames per animate_frames chunk: every call below shares one compiled program


@pytest.fixture(scope="module")
def config():
    return micro_config()


@pytest.fixture(scope="module")
def system(config, procedural_head):
    return inference.make_system(config.model, procedural_head)


@pytest.fixture(scope="module")
def params(system, config):
    return inference.initial_params(system, config.seed)


@pytest.fixture(scope="module")
def world(config, procedural_head):
    return inputs.make_world(config, procedural_head)


@pytest.fixture(scope="module")
def reconstructed(system, params, world):
    return inference.reconstruct_from_dataset(system, params, world,
                                              identity_id=int(inputs.heldout(micro_config())[0]), num_views=2)


@pytest.fixture(scope="module")
def avatar(reconstructed):
    return reconstructed[0]


def _direct_frame(system, params, avatar, frame: HeadParams, viewmat, K, background):
    g = jax.jit(system.animate)(params, avatar, jax.tree.map(jnp.asarray, frame))
    rgb, _ = jax.jit(system.render)(g, jnp.asarray(viewmat)[None], jnp.asarray(K)[None],
                                    backgrounds=jnp.asarray(background, jnp.float32)[None])
    return np.clip(np.asarray(rgb[0]), 0.0, 1.0)


def _other_system(config, procedural_head, **model_fields):
    return FlexAvatar(dataclasses.replace(config.model, **model_fields), procedural_head)


# ---------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_is_exact(tmp_path, system, avatar):
    path = tmp_path / "sub" / "me.avatar"  # any suffix: the file is written where asked
    inference.save_avatar(path, avatar, system, source="synthetic:test")
    loaded, meta = inference.load_avatar(path)
    for name in avatars.AVATAR_ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), np.asarray(getattr(avatar, name)))
        assert getattr(loaded, name).dtype == jnp.float32
    assert meta["source"] == "synthetic:test" and meta["image_size"] == 32
    assert meta["model"]["uv_resolution"] == system.cfg.uv_resolution
    assert meta["model"] == json.loads(json.dumps(to_dict(system.cfg)))  # the system's model config
    again, _ = inference.load_avatar(path, system)  # its own model: no complaint
    system.check_avatar(loaded)
    for name in avatars.AVATAR_ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(again, name)), np.asarray(getattr(avatar, name)))


def test_save_avatar_rejects_a_system_that_does_not_describe_it(tmp_path, system, avatar, config, procedural_head):
    # The model config is the system's: an avatar of another UV resolution does not fit it.
    with pytest.raises(ValueError, match="uv_resolution"):
        inference.save_avatar(tmp_path / "a.npz", avatar, _other_system(config, procedural_head, uv_resolution=64))
    batched = jax.tree.map(lambda x: x[None], avatar)
    with pytest.raises(ValueError, match="unbatched"):
        inference.save_avatar(tmp_path / "a.npz", batched, system)


def test_load_avatar_errors_name_the_file(tmp_path, system, avatar):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        inference.load_avatar(tmp_path / "nothere.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        inference.load_avatar(garbage)
    partial = tmp_path / "partial.npz"
    np.savez(partial, raw_maps=np.asarray(avatar.raw_maps))
    with pytest.raises(ValueError, match="partial.npz.*missing"):
        inference.load_avatar(partial)
    # Arrays edited behind the metadata's back.
    good = tmp_path / "good.npz"
    inference.save_avatar(good, avatar, system)
    with np.load(good) as f:
        contents = dict(f)
    contents["shape"] = contents["shape"][:-1]
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **contents)
    with pytest.raises(ValueError, match="tampered.npz.*metadata records"):
        inference.load_avatar(tampered)


def test_load_avatar_with_a_system_names_the_mismatch(tmp_path, system, avatar, config, procedural_head):
    path = tmp_path / "me.npz"
    inference.save_avatar(path, avatar, system)
    # Arrays that do not fit the system (K): the file is named, then the mismatch.
    other = _other_system(config, procedural_head, uv_resolution=64)
    with pytest.raises(ValueError, match=r"me.npz: avatar does not match the model: .*UV resolution K .* is 64"):
        inference.load_avatar(path, other)
    # Same shapes, but the recorded model animates the maps differently.
    with np.load(path) as f:
        contents = dict(f)
    meta = json.loads(str(contents["metadata"][()]))
    meta["model"]["driving_scale"] *= 2
    contents["metadata"] = np.asarray(json.dumps(meta))
    edited = tmp_path / "edited.npz"
    np.savez(edited, **contents)
    inference.load_avatar(edited)  # without a system: nothing to compare with
    with pytest.raises(ValueError, match="edited.npz: .*model.driving_scale"):
        inference.load_avatar(edited, system)
    assert "driving_scale" in inference.ANIMATION_CONFIG_KEYS


# ---------------------------------------------------------------------------------------------- reconstruct
def _write_png(path, seed, size):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_reconstruct_from_images_equals_the_model_on_the_loaded_pixels(tmp_path, system, params):
    # One portrait at the model's size, one larger square one that load_portraits resizes.
    paths = [_write_png(tmp_path / "front.png", 0, 32), _write_png(tmp_path / "side.png", 1, 48)]
    got = inference.reconstruct_from_images(system, params, paths)
    images, alphas = media.load_portraits(paths, size=system.image_size)
    assert alphas is None
    want = jax.jit(system.reconstruct)(params, jnp.asarray(images))
    for name in avatars.AVATAR_ARRAYS:
        np.testing.assert_allclose(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), atol=1e-6)


def test_reconstruct_from_images_rejects_bad_inputs(tmp_path, system, params, config, procedural_head):
    with pytest.raises(ValueError, match="between 1 and 4"):
        inference.reconstruct_from_images(system, params, [])
    five = [_write_png(tmp_path / f"{i}.png", i, 32) for i in range(5)]
    with pytest.raises(ValueError, match="got 5 portrait"):
        inference.reconstruct_from_images(system, params, five)
    projecting = _other_system(config, procedural_head, lifter_type="dual_uv")
    with pytest.raises(ValueError, match="no cameras|do not carry"):
        inference.reconstruct_from_images(projecting, None, five[:1])


def test_reconstruct_from_dataset_uses_the_eval_inputs(system, reconstructed, world):
    avatar, images = reconstructed
    es = eval_sets.build_eval_set(world, [int(inputs.heldout(micro_config())[0])], 2, num_targets=1, mode="self",
                                  seed=0)
    np.testing.assert_array_equal(images, es["input_images"][0, :2])
    system.check_avatar(avatar)


# ---------------------------------------------------------------------------------------------- render
def test_animate_frames_equal_direct_animate_and_render(system, params, avatar, world):
    motion = driving.driving_sequence(world, 1, count=3)
    frames = inference.animate_frames(system, params, avatar, motion, batch=BATCH)
    s = system.image_size
    assert frames.shape == (3, s, s, 3) and frames.dtype == np.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    viewmat, K = motion_lib.front_camera(s)
    for t in (0, 2):  # frame 2 sits in the padded last chunk
        frame = jax.tree.map(lambda x, t=t: x[t], motion)
        want = _direct_frame(system, params, avatar, frame, viewmat, K, avatars.WHITE)
        np.testing.assert_allclose(frames[t], want, atol=1e-5)
    assert np.abs(frames[0] - 1.0).max() > 0.1  # something was drawn over the white background


def test_translation_moves_the_silhouette_right_in_the_image(system, params, avatar):
    e = system.head.num_expression
    translation = np.array([[0.0, 0.0, 0.0], [0.04, 0.0, 0.0], [-0.04, 0.0, 0.0]], np.float32)
    motion = HeadParams.from_pose(np.zeros((3, 0), np.float32), np.zeros((3, e), np.float32),
                                  np.zeros((3, POSE_SIZE), np.float32), translation)
    white = inference.animate_frames(system, params, avatar, motion, batch=BATCH, background=(1.0, 1.0, 1.0))
    black = inference.animate_frames(system, params, avatar, motion, batch=BATCH, background=(0.0, 0.0, 0.0))
    # rgb = colour + (1 - alpha) * background, so white - black = 1 - alpha.
    alpha = 1.0 - (white - black).mean(-1)
    cols = np.arange(system.image_size) + 0.5
    centroid_x = (alpha * cols[None, None]).sum((1, 2)) / alpha.sum((1, 2))
    assert alpha[0].sum() > 10.0
    # +4 cm on x at 0.6 m with the 32° field of view is about 0.04 / (0.6 tan 16°) * 16 ≈ 3.7 px.
    assert centroid_x[1] - centroid_x[0] > 2.0
    assert centroid_x[0] - centroid_x[2] > 2.0


def test_animate_frames_rejects_a_motion_of_another_head(system, params, avatar):
    e = system.head.num_expression
    motion = HeadParams.from_pose(np.zeros((2, 0), np.float32), np.zeros((2, e + 1), np.float32),
                                  np.zeros((2, POSE_SIZE), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=rf"motion.expression must be \[T,{e}\]"):
        inference.animate_frames(system, params, avatar, motion, batch=BATCH)


def test_turntable_first_frame_is_the_first_turntable_camera(system, params, avatar):
    frames = inference.turntable_frames(system, params, avatar, num_frames=3, batch=BATCH)
    assert frames.shape == (3, system.image_size, system.image_size, 3)
    viewmats, Ks = motion_lib.turntable_cameras(3, system.image_size)
    want = _direct_frame(system, params, avatar, system.head.zero_params(), viewmats[0], Ks[0], avatars.WHITE)
    np.testing.assert_allclose(frames[0], want, atol=1e-5)
    assert np.abs(frames[1] - frames[0]).max() > 0.05  # the camera really moves


def test_export_avatar_ply_writes_the_neutral_gaussians(tmp_path, system, params, avatar):
    path = tmp_path / "avatar.ply"
    n = inference.export_avatar_ply(system, params, avatar, path)
    assert n == system.num_gaussians
    back = ply.read_ply(path)
    assert back["means"].shape == (system.num_gaussians, 3)
    g = jax.jit(system.animate)(params, avatar, system.head.zero_params())
    np.testing.assert_allclose(back["means"], np.asarray(g["means"]), atol=1e-6)
    np.testing.assert_allclose(back["colors"], np.asarray(g["colors"]), atol=1e-5)
