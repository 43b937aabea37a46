"""The user-command library: avatar files round-trip exactly and refuse the wrong model, photo
reconstruction equals the model on the same pixels, motions load or fail by name, and the
rendered videos / turntables / PLY equal direct calls of the avatar API (micro config, random
params: nothing here needs a trained model)."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flexavatar_jax.data import media
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models.avatar import Avatar, FlexAvatar
from flexavatar_jax.render import ply
from flexavatar_jax.train import avatars
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import inputs
from tests.train.test_loop import micro_config

BATCH = 2  # frames per animate_frames chunk: every call below shares one compiled program


@pytest.fixture(scope="module")
def config():
    return micro_config()


@pytest.fixture(scope="module")
def system(config, procedural_head):
    return FlexAvatar(config.model, procedural_head)


@pytest.fixture(scope="module")
def params(system):
    return flax.linen.meta.unbox(system.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def world(config, procedural_head):
    return inputs.make_world(config, procedural_head)


@pytest.fixture(scope="module")
def reconstructed(system, params, world):
    return avatars.reconstruct_from_dataset(system, params, world, identity_id=int(inputs.heldout(micro_config())[0]),
                                            num_views=2)


@pytest.fixture(scope="module")
def avatar(reconstructed):
    return reconstructed[0]


def _model_json(system):
    return system.cfg.to_dict()


def _direct_frame(system, params, avatar, expression, pose, translation, viewmat, K, background):
    g = jax.jit(system.animate)(params, avatar, jnp.asarray(expression), jnp.asarray(pose), jnp.asarray(translation))
    rgb, _ = jax.jit(system.render)(g, jnp.asarray(viewmat)[None], jnp.asarray(K)[None],
                                    backgrounds=jnp.asarray(background, jnp.float32)[None])
    return np.clip(np.asarray(rgb[0]), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- files
def test_save_load_round_trip_is_exact(tmp_path, system, avatar):
    path = tmp_path / "sub" / "me.avatar"  # any suffix: the file is written where asked
    avatars.save_avatar(path, avatar, config_json=_model_json(system), image_size=32, source="synthetic:test")
    loaded, meta = avatars.load_avatar(path)
    for name in avatars.AVATAR_ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), np.asarray(getattr(avatar, name)))
        assert getattr(loaded, name).dtype == jnp.float32
    assert meta["source"] == "synthetic:test" and meta["image_size"] == 32
    assert meta["model"]["uv_resolution"] == system.cfg.uv_resolution
    avatars.check_avatar(system, loaded, meta)  # its own model: no complaint


def test_save_avatar_rejects_a_config_that_does_not_describe_it(tmp_path, system, avatar, config):
    with pytest.raises(ValueError, match="uv_resolution"):
        avatars.save_avatar(tmp_path / "a.npz", avatar, config_json=config.to_dict(), image_size=32, source="")
    batched = jax.tree.map(lambda x: x[None], avatar)
    with pytest.raises(ValueError, match="unbatched"):
        avatars.save_avatar(tmp_path / "a.npz", batched, config_json=_model_json(system), image_size=32, source="")


def test_load_avatar_errors_name_the_file(tmp_path, system, avatar):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        avatars.load_avatar(tmp_path / "nothere.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        avatars.load_avatar(garbage)
    partial = tmp_path / "partial.npz"
    np.savez(partial, raw_maps=np.asarray(avatar.raw_maps))
    with pytest.raises(ValueError, match="partial.npz.*missing"):
        avatars.load_avatar(partial)
    # Arrays edited behind the metadata's back.
    good = tmp_path / "good.npz"
    avatars.save_avatar(good, avatar, config_json=_model_json(system), image_size=32, source="")
    with np.load(good) as f:
        contents = dict(f)
    contents["shape"] = contents["shape"][:-1]
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **contents)
    with pytest.raises(ValueError, match="tampered.npz.*metadata records"):
        avatars.load_avatar(tampered)


def test_check_avatar_names_the_mismatch(system, avatar):
    k = system.cfg.uv_resolution
    with pytest.raises(ValueError, match=r"UV resolution K .* is 32"):
        avatars.check_avatar(system, Avatar(avatar.raw_maps[:16, :16], avatar.identity_features[:16, :16],
                                            avatar.shape))
    with pytest.raises(ValueError, match="channels model.decoder.id_channels"):
        avatars.check_avatar(system, Avatar(avatar.raw_maps, jnp.zeros((k, k, 3)), avatar.shape))
    with pytest.raises(ValueError, match="S=.*shape coefficients"):
        avatars.check_avatar(system, Avatar(avatar.raw_maps, avatar.identity_features, avatar.shape[:-2]))
    meta = {"model": json.loads(json.dumps(_model_json(system)))}
    meta["model"]["driving_scale"] *= 2
    with pytest.raises(ValueError, match="model.driving_scale"):
        avatars.check_avatar(system, avatar, meta)


# ---------------------------------------------------------------------------------------------- reconstruct
def _write_png(path, seed, size):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_reconstruct_from_images_equals_the_model_on_the_loaded_pixels(tmp_path, system, params):
    # One portrait at the model's size, one larger square one that load_portraits resizes.
    paths = [_write_png(tmp_path / "front.png", 0, 32), _write_png(tmp_path / "side.png", 1, 48)]
    got = avatars.reconstruct_from_images(system, params, paths)
    images, alphas = media.load_portraits(paths, size=system.image_size)
    assert alphas is None
    want = jax.jit(system.reconstruct)(params, jnp.asarray(images))
    for name in avatars.AVATAR_ARRAYS:
        np.testing.assert_allclose(np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), atol=1e-6)


def test_reconstruct_from_images_rejects_bad_inputs(tmp_path, system, params, config, procedural_head):
    with pytest.raises(ValueError, match="between 1 and 4"):
        avatars.reconstruct_from_images(system, params, [])
    five = [_write_png(tmp_path / f"{i}.png", i, 32) for i in range(5)]
    with pytest.raises(ValueError, match="got 5 portrait"):
        avatars.reconstruct_from_images(system, params, five)
    projecting = config.model.copy_and_resolve_references()
    projecting.lifter_type = "dual_uv"
    with pytest.raises(ValueError, match="no cameras|do not carry"):
        avatars.reconstruct_from_images(FlexAvatar(projecting, procedural_head), None, five[:1])


def test_reconstruct_from_dataset_uses_the_eval_inputs(system, reconstructed, world):
    avatar, images = reconstructed
    es = ev.build_eval_set(world, [int(inputs.heldout(micro_config())[0])], 2, num_targets=1, mode="self", seed=0)
    np.testing.assert_array_equal(images, es["input_images"][0, :2])
    avatars.check_avatar(system, avatar)


# ---------------------------------------------------------------------------------------------- motion
def test_driving_sequence_is_the_identitys_own_frames(world):
    driving = avatars.driving_sequence(world, 3, num_frames=4, clip=0)
    ident = world.identity(3)
    for t in range(4):
        frame = ident.frame_params(0, t)
        for field in ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation"):
            np.testing.assert_array_equal(getattr(driving, field)[t], np.asarray(getattr(frame, field)))
    with pytest.raises(ValueError, match="has 6 frames, asked for 7"):
        avatars.driving_sequence(world, 3, num_frames=7)
    with pytest.raises(ValueError, match=r"got clip=\d"):
        avatars.driving_sequence(world, 3, clip=len(ident.clips))
    whole = avatars.driving_sequence(world, 3)
    assert isinstance(whole, HeadParams) and whole.expression.shape[0] == len(ident.clips[0])


def test_load_motion_round_trip_and_vhap_keys(tmp_path, world, system):
    driving = avatars.driving_sequence(world, 2, num_frames=5)
    expression, pose, translation = avatars.motion_arrays(driving)
    avatars.save_motion(tmp_path / "m.npz", expression, pose, translation)
    loaded = avatars.load_motion(tmp_path / "m.npz", system.head.num_expression)
    for a, b in zip(avatars.motion_arrays(loaded), (expression, pose, translation)):
        np.testing.assert_array_equal(a, b)
    assert loaded.shape.shape == (5, 0)
    # VHAP's tracked-parameter layout of the same motion.
    np.savez(tmp_path / "vhap.npz", expr=expression, rotation=driving.global_pose, neck_pose=driving.neck_pose,
             jaw_pose=driving.jaw_pose, eyes_pose=driving.eyes_pose, translation=translation,
             shape=np.zeros(7, np.float32))
    vhap = avatars.load_motion(tmp_path / "vhap.npz", system.head.num_expression)
    for a, b in zip(avatars.motion_arrays(vhap), (expression, pose, translation)):
        np.testing.assert_array_equal(a, b)


def test_load_motion_rejects_bad_files_by_name(tmp_path, system):
    e = system.head.num_expression
    good = dict(expression=np.zeros((4, e)), pose=np.zeros((4, 15)), translation=np.zeros((4, 3)))
    cases = {
        "no_pose": ({k: v for k, v in good.items() if k != "pose"}, r"missing \['pose'\]"),
        "short_translation": (dict(good, translation=np.zeros((3, 3))), r"frame counts T.*'translation': 3"),
        "wrong_e": (dict(good, expression=np.zeros((4, e + 1))), rf"expression must be \[T,{e}\]"),
        "pose_14": (dict(good, pose=np.zeros((4, 14))), r"pose must be \[T,15\]"),
        "nan": (dict(good, translation=np.full((4, 3), np.nan)), "translation has non-finite"),
        "empty": ({k: v[:0] for k, v in good.items()}, "0 frames"),
        "unrelated": (dict(foo=np.zeros(3)), "missing 'expression'"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=f"{name}.npz.*{message}"):
            avatars.load_motion(path, e)
    with pytest.raises(FileNotFoundError):
        avatars.load_motion(tmp_path / "absent.npz", e)


# ---------------------------------------------------------------------------------------------- render
def test_animate_frames_equal_direct_animate_and_render(system, params, avatar, world):
    expression, pose, translation = avatars.motion_arrays(avatars.driving_sequence(world, 1, num_frames=3))
    frames = avatars.animate_frames(system, params, avatar, expression, pose, translation, batch=BATCH)
    s = system.image_size
    assert frames.shape == (3, s, s, 3) and frames.dtype == np.float32
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    viewmat, K = avatars.front_camera(s)
    for t in (0, 2):  # frame 2 sits in the padded last chunk
        want = _direct_frame(system, params, avatar, expression[t], pose[t], translation[t], viewmat, K,
                             avatars.WHITE)
        np.testing.assert_allclose(frames[t], want, atol=1e-5)
    assert np.abs(frames[0] - 1.0).max() > 0.1  # something was drawn over the white background


def test_translation_moves_the_silhouette_right_in_the_image(system, params, avatar):
    e = system.head.num_expression
    translation = np.array([[0.0, 0.0, 0.0], [0.04, 0.0, 0.0], [-0.04, 0.0, 0.0]], np.float32)
    args = (np.zeros((3, e), np.float32), np.zeros((3, 15), np.float32), translation)
    white = avatars.animate_frames(system, params, avatar, *args, batch=BATCH, background=(1.0, 1.0, 1.0))
    black = avatars.animate_frames(system, params, avatar, *args, batch=BATCH, background=(0.0, 0.0, 0.0))
    # rgb = colour + (1 - alpha) * background, so white - black = 1 - alpha.
    alpha = 1.0 - (white - black).mean(-1)
    cols = np.arange(system.image_size) + 0.5
    centroid_x = (alpha * cols[None, None]).sum((1, 2)) / alpha.sum((1, 2))
    assert alpha[0].sum() > 10.0
    # +4 cm on x at 0.6 m with the 32° field of view is about 0.04 / (0.6 tan 16°) * 16 ≈ 3.7 px.
    assert centroid_x[1] - centroid_x[0] > 2.0
    assert centroid_x[0] - centroid_x[2] > 2.0


def test_turntable_first_frame_is_the_first_turntable_camera(system, params, avatar):
    frames = avatars.turntable_frames(system, params, avatar, num_frames=3, batch=BATCH)
    assert frames.shape == (3, system.image_size, system.image_size, 3)
    viewmats, Ks = ev.turntable_cameras(3, system.image_size)
    e = system.head.num_expression
    want = _direct_frame(system, params, avatar, np.zeros(e), np.zeros(15), np.zeros(3), viewmats[0], Ks[0],
                         avatars.WHITE)
    np.testing.assert_allclose(frames[0], want, atol=1e-5)
    assert np.abs(frames[1] - frames[0]).max() > 0.05  # the camera really moves


def test_export_avatar_ply_writes_the_neutral_gaussians(tmp_path, system, params, avatar):
    path = tmp_path / "avatar.ply"
    n = avatars.export_avatar_ply(system, params, avatar, path)
    assert n == system.num_gaussians
    back = ply.read_ply(path)
    assert back["means"].shape == (system.num_gaussians, 3)
    e = system.head.num_expression
    g = jax.jit(system.animate)(params, avatar, jnp.zeros(e), jnp.zeros(15), jnp.zeros(3))
    np.testing.assert_allclose(back["means"], np.asarray(g["means"]), atol=1e-6)
    np.testing.assert_allclose(back["colors"], np.asarray(g["colors"]), atol=1e-5)
