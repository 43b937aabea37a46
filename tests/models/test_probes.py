"""Attention probes of the Structured Head Queries: the mass per view is a distribution over the
real views (padding gets none), follows a permutation of the views, and the angle binning agrees
with a direct count."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.models import probes
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.models.views import InputViews


@pytest.fixture(scope="module")
def system(procedural_head):
    cfg = Config.from_dict(flexavatar.get_config("tiny"))
    return FlexAvatar(cfg.model, procedural_head)


@pytest.fixture(scope="module")
def params(system):
    return flax.linen.meta.unbox(system.init(jax.random.key(0)))


def test_view_attention_is_a_distribution_over_the_real_views(system, params):
    s = system.image_size
    images = jax.random.uniform(jax.random.key(1), (2, 4, s, s, 3))
    mask = jnp.array([[True, True, True, False], [True, True, True, True]])
    mass = np.asarray(probes.view_attention(system, params, InputViews(images, mask)))
    assert mass.shape == (system.cfg.lifter.depth, 2, system.cfg.grid**2, 4)
    np.testing.assert_allclose(mass.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(mass[:, 0, :, 3], 0.0, atol=1e-7)  # the padding slot
    perm = jnp.array([2, 0, 3, 1])
    permuted = np.asarray(probes.view_attention(system, params, InputViews(images[:, perm], mask[:, perm])))
    np.testing.assert_allclose(permuted, mass[..., np.asarray(perm)], atol=1e-5)


def test_the_probe_refuses_other_lifters(procedural_head):
    cfg = Config.from_dict(flexavatar.get_config("tiny"))
    other = FlexAvatar(dataclasses.replace(cfg.model, lifter_type="dual_uv"), procedural_head)
    with pytest.raises(ValueError, match="queries"):
        probes.view_attention(other, {}, None)


def test_mass_by_angle_against_a_direct_count():
    rng = np.random.default_rng(0)
    b, q, v = 3, 50, 4
    mass = rng.dirichlet(np.ones(v), size=(b, q))
    q_az, q_valid = rng.uniform(-180, 180, q), rng.uniform(size=q) < 0.8
    v_az, v_mask = rng.uniform(-180, 180, (b, v)), np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], bool)
    bins = np.array([0.0, 90.0, 180.001])
    out = probes.mass_by_angle(mass, q_az, q_valid, v_az, v_mask, bins)
    near, far, share_near = [], [], []
    for i in range(b):
        for j in range(q):
            for k in range(v):
                if not (q_valid[j] and v_mask[i, k]):
                    continue
                d = abs((q_az[j] - v_az[i, k] + 180) % 360 - 180)
                (near if d < 90 else far).append(mass[i, j, k])
                if d < 90:
                    share_near.append(1 / v_mask[i].sum())
    np.testing.assert_allclose(out["mass"], [np.mean(near), np.mean(far)])
    np.testing.assert_array_equal(out["count"], [len(near), len(far)])
    np.testing.assert_allclose(out["uniform"][0], np.mean(share_near))


def _front_views(system, head, batch: int = 1, views: int = 2):
    from flexavatar_jax.data import motion
    from flexavatar_jax.head import HeadParams

    rng = np.random.default_rng(0)
    cams = motion.sample_cameras(rng, views, system.image_size, system.image_size, frontal_fraction=1.0)
    s = system.image_size
    params = HeadParams.zeros(head.num_shape, head.num_expression, (batch, views))
    return InputViews(jnp.zeros((batch, views, s, s, 3)), jnp.ones((batch, views), bool),
                      jnp.broadcast_to(jnp.asarray(cams.viewmats), (batch, views, 4, 4)),
                      jnp.broadcast_to(jnp.asarray(cams.Ks), (batch, views, 3, 3)), params)


def test_query_pixels_project_the_template_points_and_see_the_face_not_the_back(system, procedural_head):
    from flexavatar_jax.models.head_queries import query_directions, template_points
    from flexavatar_jax.render.camera import project_points

    views = _front_views(system, procedural_head)
    pixels, seen = probes.query_pixels(system, views)
    points, valid = template_points(procedural_head, system.cfg.grid)
    for k in range(2):  # zero params: the posed mesh is the template mesh
        expected, _ = project_points(jnp.asarray(points.reshape(-1, 3)), views.viewmats[0, k], views.Ks[0, k])
        np.testing.assert_allclose(np.asarray(pixels[0, k])[valid.reshape(-1)],
                                   np.asarray(expected)[valid.reshape(-1)], atol=1e-3)
    facing_z = query_directions(procedural_head, system.cfg.grid)[:, 2]
    seen = np.asarray(seen)
    assert not seen[..., ~valid.reshape(-1)].any()
    assert seen[..., facing_z > 0.7].mean() > 0.9  # the face, seen by frontal cameras
    assert seen[..., facing_z < -0.7].mean() < 0.1  # the back of the head, not
    padded = views._replace(mask=jnp.array([[True, False]]))
    assert not np.asarray(probes.query_pixels(system, padded)[1])[:, 1].any()


def test_localisation_is_one_on_the_points_patch_and_chance_when_blind():
    rng = np.random.default_rng(1)
    b, q, v, hp, wp, patch = 2, 5, 3, 4, 4, 8
    pixels = rng.uniform(0, hp * patch, (b, v, q, 2))
    seen = rng.uniform(size=(b, v, q)) < 0.7
    on_point = np.zeros((b, q, v, hp, wp))
    for i in range(b):
        for j in range(q):
            for k in range(v):
                on_point[i, j, k, int(pixels[i, k, j, 1] // patch), int(pixels[i, k, j, 0] // patch)] = 0.3
    assert probes.localisation(on_point, pixels, seen, patch)["mass"] == pytest.approx(1.0)
    blind = np.full((b, q, v, hp, wp), 1.0 / (v * hp * wp))
    out = probes.localisation(blind, pixels, seen, patch, radius=1)
    assert out["mass"] == pytest.approx(out["chance"])
    assert 4 / 16 <= out["chance"] <= 9 / 16  # 2×2 at a corner … 3×3 inside
    assert out["count"] == int(seen.sum())
    with pytest.raises(ValueError, match="seen"):
        probes.localisation(blind, pixels, np.zeros_like(seen), patch)
