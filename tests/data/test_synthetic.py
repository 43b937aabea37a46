"""Synthetic identities: determinism, disjoint splits, appearance, long-tailed motion, GT renders."""

import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.data import appearance, motion
from flexavatar_jax.data.synthetic import HELDOUT_OFFSET, SyntheticConfig, SyntheticWorld, heldout_ids, train_ids


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SyntheticConfig(uv_resolution=48, image_size=48, frames_per_clip=16, clips_per_identity=2))


def test_identity_is_a_deterministic_function_of_its_id(world):
    other = SyntheticWorld(world.config)  # a separate world: no shared cache
    a, b = world.identity(5), other.identity(5)
    for f in ("shape", "colors", "wrinkles", "opacity", "hair_offset", "base_scale"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    for ca, cb in zip(a.clips, b.clips):
        assert np.array_equal(ca.expression, cb.expression) and np.array_equal(ca.marginal, cb.marginal)
    c = world.identity(6)
    assert not np.array_equal(a.shape, c.shape) and not np.array_equal(a.colors, c.colors)
    # A different world seed gives different people.
    d = SyntheticWorld(SyntheticConfig(**{**world.config.__dict__, "seed": 1})).identity(5)
    assert not np.array_equal(a.shape, d.shape)


def test_train_and_heldout_ids_are_disjoint_and_prefix_stable():
    assert set(train_ids(1000)).isdisjoint(heldout_ids(1000))
    assert np.array_equal(train_ids(10), train_ids(100)[:10])  # N identities = the first N ids
    assert heldout_ids(3)[0] == HELDOUT_OFFSET


def test_render_is_deterministic_and_covers_the_head(world):
    ident = world.identity(1)
    cams = motion.sample_cameras(np.random.default_rng(0), 2, 48, 48, frontal_fraction=1.0)
    p = ident.frame_params(0, 3)
    rgb, alpha, depth = world.render(ident, p, cams.viewmats, cams.Ks)
    rgb2, _, _ = world.render(ident, p, cams.viewmats, cams.Ks)
    assert np.array_equal(np.asarray(rgb), np.asarray(rgb2))
    a = np.asarray(alpha)[..., 0]
    assert 0.1 < (a > 0.5).mean() < 0.9  # a head, not an empty or full frame
    d = np.asarray(depth)[..., 0][a > 0.99]
    assert np.all((d > 0.3) & (d < 3.0))  # the head sits at the camera distance
    # White background outside the head.
    np.testing.assert_allclose(np.asarray(rgb)[a < 1e-4], 1.0, atol=1e-5)


def test_hair_is_off_the_surface(world):
    for i in range(12):
        ident = world.identity(i)
        covered = ident.opacity[world.num_surface:] > 0
        if ident.hair_style == "bald":
            assert not covered.any()
        else:
            assert covered.any() and np.all(ident.hair_offset[world.num_surface:][covered] > 0.002)
    assert {world.identity(i).hair_style for i in range(24)} >= {"bald", "short", "long", "fringe"}


def test_wrinkles_darken_only_under_their_expression(world):
    ident = world.identity(2)
    names = world.expression_names
    neutral = ident.frame_params(0, 0).replace(expression=jnp.zeros(len(names)), jaw_pose=jnp.zeros(3))
    raised = neutral.replace(expression=jnp.zeros(len(names)).at[names.index("brow_raise_inner")].set(2.5))
    g0 = world.gaussians(ident, neutral)["colors"]
    g1 = world.gaussians(ident, raised)["colors"]
    forehead = ident.wrinkles[:, appearance.WRINKLES.index("forehead_lines")] > 0.05
    assert forehead.sum() > 5
    assert np.all(np.asarray(g1)[forehead].sum(1) < np.asarray(g0)[forehead].sum(1))
    np.testing.assert_allclose(np.asarray(g1)[~forehead & (ident.wrinkles.sum(1) == 0)],
                               np.asarray(g0)[~forehead & (ident.wrinkles.sum(1) == 0)])
    opened = neutral.replace(jaw_pose=jnp.array([0.4, 0.0, 0.0]))
    interior = ident.wrinkles[:, appearance.WRINKLES.index("mouth_interior_shadow")] > 0
    assert np.all(np.asarray(world.gaussians(ident, opened)["colors"])[interior].sum(1)
                  < np.asarray(g0)[interior].sum(1))


def test_clips_are_long_tailed(world):
    rng = np.random.default_rng(0)
    clips = [motion.sample_clip(rng, 96, world.expression_names) for _ in range(150)]
    share = np.mean([c.marginal.mean() for c in clips])
    assert 0.02 < share < 0.3  # mostly neutral/talking
    counts = np.bincount(np.concatenate([c.event[c.marginal] for c in clips]), minlength=len(motion.ANCHOR_EXPRESSIONS))
    half = len(counts) // 2
    assert counts[:half].sum() > 3 * counts[half:].sum()  # the most extreme anchors are the rarest
    # Smooth trajectories: frame-to-frame changes are much smaller than the spread.
    e = clips[0].expression
    assert np.abs(np.diff(e, axis=0)).mean() < 0.3 * e.std(0).mean()


def test_cameras_cover_360_degrees():
    cams = motion.sample_cameras(np.random.default_rng(1), 2000, 64, 64)
    az = np.abs(cams.azimuth_deg)
    assert (az < 30).mean() > 0.3 and (az > 150).mean() > 0.03  # frontal-heavy, back views present
    assert cams.distance.min() > 0.3 and len(np.unique(np.round(cams.Ks[:, 0, 0]))) > 10


def test_bad_config_raises():
    with pytest.raises(ValueError, match="background"):
        SyntheticConfig(background="green")
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=0)
    with pytest.raises(ValueError, match="image_size=40 is not a multiple of the renderer's 16-pixel tile"):
        SyntheticConfig(image_size=40)
    with pytest.raises(ValueError, match="hair_style_probs"):
        SyntheticConfig(hair_style_probs=(0.5, 0.5, 0.5, 0.5))


def test_bad_identity_ids_raise_naming_the_value(world):
    with pytest.raises(ValueError, match="-3"):
        world.identity_arrays([1, -3])
    with pytest.raises(ValueError, match=str(2**31)):
        world.identity_arrays([2**31])
    with pytest.raises(ValueError, match="-1"):
        world.identity(-1)
    with pytest.raises(ValueError, match="-2"):
        world.render_views([-2], None, np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)))


def test_identity_arrays_are_the_host_identity(world):
    """`identity(i)` is a host copy of what the device synthesises (the one engine)."""
    arrays = world.identity_arrays([4, 9])
    ident = world.identity(9)
    for f in ("shape", "colors", "wrinkles", "opacity", "hair_offset", "base_scale"):
        np.testing.assert_array_equal(np.asarray(arrays[f][1]), getattr(ident, f), err_msg=f)
    assert appearance.HAIR_STYLES[int(arrays["hair_style"][1])] == ident.hair_style
