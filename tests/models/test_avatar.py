"""FlexAvatar's API (tiny config): shapes, invariances the lifter promises (view order, padding,
no cameras), gradient reach, the dynamic mask, LBS of a global rotation, driving variants, and
errors for bad input. Everything is jitted and compiled once per module (module fixtures)."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from flexavatar_jax.config import Config, ModelConfig
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.head import POSE_SIZE, HeadParams, lbs
from flexavatar_jax.head.rotations import quat_to_matrix
from flexavatar_jax.models.avatar import Avatar, FlexAvatar
from flexavatar_jax.models.views import InputViews
from flexavatar_jax.render.camera import intrinsics_from_fov, look_at

RENDER_SIZE = 32
LOOK_AT = (0.0, 0.02, 0.0)  # roughly the head centre (metres, +y up)


def _max_abs(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _frame(shape, expression, pose, translation) -> HeadParams:
    """One driving frame (no leading axis); `animate` replaces its shape by the avatar's."""
    return HeadParams.from_pose(shape, expression, pose, translation)


def _batched(tree, axes: int = 1):
    """Leading singleton axes (a batch of one avatar [1], a driving batch of one frame [1, 1])."""
    return jax.tree.map(lambda x: x[(None,) * axes], tree)


def _camera(size: int, eye=(0.0, 0.02, 0.6)):
    viewmats = look_at(jnp.asarray([eye], jnp.float32), jnp.asarray([LOOK_AT], jnp.float32))
    Ks = intrinsics_from_fov(30.0, size, size)[None]
    return viewmats, Ks


@pytest.fixture(scope="module")
def cfg():
    return Config.from_dict(flexavatar.get_config("tiny"))


@pytest.fixture(scope="module")
def system(cfg, procedural_head):
    return FlexAvatar(cfg.model, procedural_head)


@pytest.fixture(scope="module")
def params(system):
    return flax.linen.meta.unbox(system.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def images(system):
    s = system.image_size
    return jax.random.uniform(jax.random.key(1), (4, s, s, 3))


@pytest.fixture(scope="module")
def jitted(system):
    return dict(reconstruct=jax.jit(system.reconstruct), reconstruct_views=jax.jit(system.reconstruct_views),
                animate=jax.jit(system.animate), animated_maps=jax.jit(system.animated_maps))


@pytest.fixture(scope="module")
def expression(system):
    return 1.5 * jax.random.normal(jax.random.key(2), (system.head.num_expression,))


@pytest.fixture(scope="module")
def avatar(jitted, params, images):
    return jitted["reconstruct"](params, images[:2])


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("num_views", [1, 2, 3, 4])
def test_shapes_for_one_to_four_views(system, params, images, jitted, expression, num_views):
    k, s = system.cfg.uv_resolution, system.head.num_shape
    avatar = jitted["reconstruct"](params, images[:num_views])
    assert avatar.raw_maps.shape == (k, k, 14)
    assert avatar.identity_features.shape == (k, k, system.cfg.decoder.id_channels)
    assert avatar.shape_coeffs.shape == (s,)
    g = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs, expression, jnp.zeros(POSE_SIZE), jnp.zeros(3)))
    n = system.num_gaussians
    expected = dict(means=(n, 3), quats=(n, 4), scales=(n, 3), opacities=(n,), colors=(n, 3))
    assert {key: v.shape for key, v in g.items()} == expected
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in g.values())


# ----------------------------------------------------------------------------- invariances


def test_invariant_to_the_order_of_the_views(params, images, jitted):
    three = images[:3]
    a = jitted["reconstruct"](params, three)
    b = jitted["reconstruct"](params, three[jnp.array([2, 0, 1])])
    assert _max_abs(a, b) < 1e-5
    # The views differ, so the invariance is not vacuous: dropping one changes the avatar.
    c = jitted["reconstruct"](params, three[jnp.array([0, 1, 1])])
    assert _max_abs(a, c) > 1e-4


def test_padding_slots_do_not_matter(params, images, jitted):
    s = images.shape[1]
    mask = jnp.array([[True, True, False, False]])
    clean = jnp.concatenate([images[:2], jnp.zeros((2, s, s, 3))])[None]
    garbage = clean.at[0, 2:].set(jax.random.uniform(jax.random.key(7), (2, s, s, 3)) * 50.0 - 20.0)
    a = jitted["reconstruct_views"](params, InputViews(clean, mask))
    b = jitted["reconstruct_views"](params, InputViews(garbage, mask))
    assert _max_abs(a, b) <= 1e-6
    # `reconstruct` pads the same way: equal to the hand-padded batch.
    c = jitted["reconstruct"](params, images[:2])
    assert _max_abs(jax.tree.map(lambda x: x[0], a), c) <= 1e-6


def test_queries_lifter_ignores_cameras_and_tracking(system, params, images, jitted):
    assert not system.needs_cameras()
    v = 2
    viewmats = jnp.stack([look_at(jnp.array([x, 0.02, 0.6]), jnp.array(LOOK_AT)) for x in (-0.3, 0.4)])
    Ks = jnp.broadcast_to(intrinsics_from_fov(25.0, system.image_size, system.image_size), (v, 3, 3))
    head = system.head
    rng = np.random.default_rng(3)
    tracked = HeadParams(*(jnp.asarray(rng.normal(size=(v, n)) * 0.1, jnp.float32)
                           for n in (head.num_shape, head.num_expression, 3, 3, 3, 6, 3)))
    plain = jitted["reconstruct"](params, images[:v])
    annotated = jitted["reconstruct"](params, images[:v], viewmats=viewmats, Ks=Ks, tracked=tracked)
    assert _max_abs(plain, annotated) == 0.0


def test_jitted_calls_are_deterministic(params, images, jitted, avatar, expression):
    again = jitted["reconstruct"](params, images[:2])
    assert _max_abs(avatar, again) == 0.0
    frame = _frame(avatar.shape_coeffs, expression, jnp.zeros(POSE_SIZE).at[6].set(0.2), jnp.zeros(3))
    g1 = jitted["animate"](params, avatar, frame)
    g2 = jitted["animate"](params, avatar, frame)
    assert _max_abs(g1, g2) == 0.0


# ----------------------------------------------------------------------------- gradients


def test_gradients_reach_every_parameter(system, params, images, jitted, avatar, expression):
    """A photometric loss through reconstruct_views + animated_maps + gaussians_from_maps + render
    has a non-zero gradient in every leaf. The forward Gaussians (aux) must equal `animate`."""
    s = images.shape[1]
    views = InputViews(jnp.concatenate([images[:2], jnp.zeros((2, s, s, 3))])[None],
                       jnp.array([[True, True, False, False]]))
    pose = jnp.zeros(POSE_SIZE).at[0:3].set(jnp.array([0.05, 0.2, 0.0])).at[6].set(0.15)
    translation = jnp.array([0.0, 0.01, 0.0])
    viewmats, Ks = _camera(RENDER_SIZE)
    target = jax.random.uniform(jax.random.key(4), (1, RENDER_SIZE, RENDER_SIZE, 3))

    def loss(p):
        batch = system.reconstruct_views(p, views)  # a batch of one avatar, leaves [1, ...]
        av = jax.tree.map(lambda x: x[0], batch)
        driving = system.driving_frame(av, _frame(av.shape_coeffs, expression, pose, translation))
        maps = system.animated_maps(p, batch, _batched(driving, 2))[0, 0]
        gaussians = system.gaussians_from_maps(maps, driving)
        rgb, alpha = system.render(gaussians, viewmats, Ks, width=RENDER_SIZE, height=RENDER_SIZE)
        return jnp.mean((rgb - target) ** 2) + 0.1 * jnp.mean(alpha), (gaussians, alpha)

    grads, (gaussians, alpha) = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert float(jnp.mean(alpha)) > 0.05, "the head should be in view of the camera"
    flat = flax.traverse_util.flatten_dict(grads, sep="/")
    norms = {key: float(jnp.linalg.norm(g)) for key, g in flat.items()}
    assert all(np.isfinite(v) for v in norms.values())
    dead = sorted(key for key, v in norms.items() if v == 0.0)
    assert not dead, f"no gradient reaches {dead}"
    assert {key.split("/")[0] for key in flat} == {"encoder", "lifter", "decoder", "shape_head", "unet"}
    # jit(animate) on the same avatar and driving gives the same Gaussians as the composed path.
    animated = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs, expression, pose, translation))
    assert _max_abs(animated, gaussians) < 1e-5


# ----------------------------------------------------------------------------- animation


def test_unet_deltas_stay_inside_the_dynamic_mask(system, params, jitted, avatar, expression):
    driving = system.driving_frame(avatar, _frame(avatar.shape_coeffs, expression,
                                                  jnp.zeros(POSE_SIZE).at[6].set(0.2), jnp.zeros(3)))
    maps = jitted["animated_maps"](params, _batched(avatar), _batched(driving, 2))
    assert maps.shape == (1, 1, *avatar.raw_maps.shape)
    deltas = np.asarray(maps[0, 0] - avatar.raw_maps)
    inside = np.asarray(system.dynamic_uv_mask)
    assert 0 < inside.sum() < inside.size
    assert np.all(deltas[~inside] == 0.0)
    assert np.abs(deltas[inside]).max() > 0.0


def test_without_unet_animated_maps_are_the_static_maps(cfg, procedural_head, params, avatar, expression):
    off = dataclasses.replace(cfg.model, unet=dataclasses.replace(cfg.model.unet, enabled=False))
    system = FlexAvatar(off, procedural_head)
    shapes = flax.linen.meta.unbox(jax.eval_shape(system.init, jax.random.key(0)))
    assert "unet" not in shapes
    static = {key: v for key, v in params.items() if key != "unet"}
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == jax.tree.map(lambda x: (x.shape, x.dtype), static)
    driving = system.driving_frame(avatar, _frame(avatar.shape_coeffs, expression,
                                                  jnp.zeros(POSE_SIZE).at[6].set(0.2), jnp.zeros(3)))
    maps = jax.jit(system.animated_maps)(static, _batched(avatar), _batched(driving, 2))[0, 0]
    assert _max_abs(maps, avatar.raw_maps) == 0.0


def test_global_rotation_rotates_the_avatar_about_the_root_joint(system, params, jitted, avatar, expression):
    """Pure global pose R: every joint's rest->posed transform is x -> R (x - J_root) + J_root
    (the root turns about its own rest position, children follow), the UNet input removes the
    global pose, so means rotate about the root, rotations pick up q(R), the rest is unchanged."""
    axis_angle = np.array([0.0, np.deg2rad(30.0), 0.0])
    rot = Rotation.from_rotvec(axis_angle).as_matrix()
    pose_r = jnp.zeros(POSE_SIZE).at[0:3].set(jnp.asarray(axis_angle, jnp.float32))
    g0 = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs, expression, jnp.zeros(POSE_SIZE), jnp.zeros(3)))
    gr = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs, expression, pose_r, jnp.zeros(3)))
    rest = system.driving_frame(avatar, _frame(avatar.shape_coeffs, expression, jnp.zeros(POSE_SIZE), jnp.zeros(3)))
    root = np.asarray(lbs(system.head, rest).joints[0], np.float64)
    means0 = np.asarray(g0["means"], np.float64)
    expected = (means0 - root) @ rot.T + root
    np.testing.assert_allclose(np.asarray(gr["means"]), expected, atol=2e-6)
    assert np.abs(expected - means0).max() > 0.01  # a 30° turn moves the head by centimetres
    np.testing.assert_allclose(np.asarray(quat_to_matrix(gr["quats"])),
                               rot @ np.asarray(quat_to_matrix(g0["quats"]), np.float64), atol=2e-5)
    for key in ("scales", "opacities", "colors"):
        np.testing.assert_allclose(np.asarray(gr[key]), np.asarray(g0[key]), atol=1e-6, err_msg=key)


def test_expression_code_driving(cfg, procedural_head, params, avatar, expression):
    code = dataclasses.replace(cfg.model, driving="expression_code")
    system = FlexAvatar(code, procedural_head)
    head = procedural_head
    assert system.driving_channels == head.num_expression + 9
    shapes = flax.linen.meta.unbox(jax.eval_shape(system.init, jax.random.key(0)))
    # Only the UNet's input width changes; fill its params at random to run it.
    # (numpy draws: a jax.random draw compiles per leaf shape, ~0.5 s each on CPU).
    rng = np.random.default_rng(5)
    unet = jax.tree.map(lambda x: jnp.asarray(0.05 * rng.standard_normal(x.shape), x.dtype), shapes["unet"])
    p = {**params, "unet": unet}
    assert jax.tree.map(jnp.shape, {key: v for key, v in shapes.items() if key != "unet"}) == \
        jax.tree.map(jnp.shape, {key: v for key, v in params.items() if key != "unet"})
    pose = jnp.zeros(POSE_SIZE).at[6].set(0.2).at[9].set(0.1)
    driving = system.driving_frame(avatar, _frame(avatar.shape_coeffs, expression, pose, jnp.zeros(3)))
    k = code.uv_resolution
    signal = system.driving_signal(avatar.shape_coeffs, driving)
    assert signal.shape == (k, k, head.num_expression + 9)
    valid = np.asarray(system.uv_valid)
    code_vec = np.concatenate([np.asarray(expression), np.asarray(pose[6:POSE_SIZE])])
    np.testing.assert_allclose(np.asarray(signal)[valid], np.broadcast_to(code_vec, (valid.sum(), code_vec.size)))
    assert np.all(np.asarray(signal)[~valid] == 0.0)
    maps = jax.jit(system.animated_maps)(p, _batched(avatar), _batched(driving, 2))[0, 0]
    assert maps.shape == avatar.raw_maps.shape and bool(jnp.all(jnp.isfinite(maps)))
    assert float(jnp.max(jnp.abs(maps - avatar.raw_maps))) > 0.0


# ----------------------------------------------------------------------------- bad input


def test_wrong_image_size_is_rejected(system, params):
    s = system.image_size
    with pytest.raises(ValueError, match=f"{s}, {s}, 3"):
        system.reconstruct(params, jnp.zeros((2, s + 8, s, 3)))
    with pytest.raises(ValueError, match=f"{s}, {s}, 3"):
        system.reconstruct(params, jnp.zeros((2, s, s)))


@pytest.mark.parametrize("num_views", [0, 5])
def test_view_count_outside_one_to_four_is_rejected(system, params, num_views):
    s = system.image_size
    with pytest.raises(ValueError, match="1 to 4 input views"):
        system.reconstruct(params, jnp.zeros((num_views, s, s, 3)))


def test_wrong_expression_length_is_rejected(system, params, avatar):
    e = system.head.num_expression
    shape = avatar.shape_coeffs
    with pytest.raises(ValueError, match=f"expects {e}"):
        system.animate(params, avatar, _frame(shape, jnp.zeros(e + 1), jnp.zeros(POSE_SIZE), jnp.zeros(3)))
    with pytest.raises(ValueError, match="pose must be"):
        system.animate(params, avatar, _frame(shape, jnp.zeros(e), jnp.zeros(12), jnp.zeros(3)))


def test_animate_ignores_the_frames_shape(params, jitted, avatar, expression):
    """A driving frame carries no identity: its `shape` is replaced by the avatar's own."""
    pose = jnp.zeros(POSE_SIZE).at[6].set(0.2)
    own = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs, expression, pose, jnp.zeros(3)))
    other = jitted["animate"](params, avatar, _frame(avatar.shape_coeffs + 3.0, expression, pose, jnp.zeros(3)))
    assert _max_abs(own, other) == 0.0


def test_check_avatar_names_the_mismatch(system, avatar):
    system.check_avatar(avatar)  # its own model: no complaint
    k = system.cfg.uv_resolution
    half = k // 2
    with pytest.raises(ValueError, match=rf"avatar does not match the model: .*UV resolution K .* is {k}"):
        system.check_avatar(Avatar(avatar.raw_maps[:half, :half], avatar.identity_features[:half, :half],
                                   avatar.shape_coeffs))
    with pytest.raises(ValueError, match="channels model.decoder.id_channels"):
        system.check_avatar(Avatar(avatar.raw_maps, jnp.zeros((k, k, 3)), avatar.shape_coeffs))
    with pytest.raises(ValueError, match="S=.*shape coefficients"):
        system.check_avatar(Avatar(avatar.raw_maps, avatar.identity_features, avatar.shape_coeffs[:-2]))


def test_the_system_takes_a_typed_model_config(cfg, procedural_head):
    with pytest.raises(TypeError, match="ModelConfig"):
        FlexAvatar(flexavatar.get_config("tiny").model, procedural_head)
    with pytest.raises(ValueError, match="unknown lifter 'nope'"):
        FlexAvatar(dataclasses.replace(cfg.model, lifter_type="nope"), procedural_head)
    with pytest.raises(ValueError, match="model.driving"):
        ModelConfig(driving="audio")


# ----------------------------------------------------------------------------- evaluation geometry


def test_offset_spread_is_the_mean_offset_norm(system):
    from flexavatar_jax.models.batch import offset_spread
    from flexavatar_jax.models.uv_decoder import ATTRIBUTE_SLICES, NUM_ATTRIBUTES

    k = system.cfg.uv_resolution
    raw = np.zeros((2, k, k, NUM_ATTRIBUTES), np.float32)
    raw[0, ..., ATTRIBUTE_SLICES["offset"]] = (3.0, 4.0, 0.0)  # |offset| = 5 raw units everywhere
    spread = np.asarray(offset_spread(system, jnp.asarray(raw)))
    assert spread.shape == (2,)
    np.testing.assert_allclose(spread, [5.0 * system.cfg.offset_scale, 0.0], rtol=1e-5, atol=1e-9)


def test_depth_rendering_matches_a_direct_depth_render(system, params, avatar, expression):
    from flexavatar_jax.models.batch import render_target
    from flexavatar_jax.render import rasterize

    frame = system.driving_frame(avatar, system.head.zero_params().replace(expression=expression))
    maps = system.animated_maps(params, _batched(avatar), _batched(frame, 2))[0, 0]
    viewmats, Ks = _camera(RENDER_SIZE)
    rgb, alpha, _, depth = render_target(system, maps, frame, viewmats[0], Ks[0], RENDER_SIZE, False, with_depth=True)
    rgb_only, alpha_only, _, none = render_target(system, maps, frame, viewmats[0], Ks[0], RENDER_SIZE, False)
    assert none is None and depth.shape == (RENDER_SIZE, RENDER_SIZE, 1)
    np.testing.assert_allclose(rgb, rgb_only, atol=1e-6)
    np.testing.assert_allclose(alpha, alpha_only, atol=1e-6)
    g = system.gaussians_from_maps(maps, frame)
    direct, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                          RENDER_SIZE, RENDER_SIZE, render_mode="D")
    np.testing.assert_allclose(depth, direct[0], atol=1e-5)
    covered = np.asarray(alpha) > 0.5
    assert covered.any() and np.all(np.abs(np.asarray(depth)[covered] - 0.6) < 0.2)  # camera 0.6 m away
