"""View-pose weighting of the Structured Head Queries (`LifterConfig.view_pose`): the camera-direction
label against a float64 closed form, the pose head's contract (one direction per view, from that
view alone, order-equivariant, blind to padding), attention mass that follows how squarely a view
faces each query's surface point, the loss term, and the label on every training batch."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flexavatar_jax.config import Config
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.data import ground_truth, motion
from flexavatar_jax.models import head_queries, probes
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.models.views import InputViews
from flexavatar_jax.render import camera
from flexavatar_jax.train import inputs as train_inputs
from flexavatar_jax.train import loop
from flexavatar_jax.train import losses as L
from flexavatar_jax.train import step as step_lib
from tests.train.test_loop import micro_dict


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rodrigues64(w: np.ndarray) -> np.ndarray:
    t = np.linalg.norm(w)
    if t == 0:
        return np.eye(3)
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]]) / t
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def test_view_directions_match_the_camera_azimuth_and_elevation():
    az = np.deg2rad(np.array([0.0, 35.0, -90.0, 150.0, 180.0]))
    el = np.deg2rad(np.array([0.0, 10.0, -20.0, 5.0, 30.0]))
    unit = np.stack([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], -1)
    eyes = motion.HEAD_CENTER + 0.9 * unit
    viewmats = camera.look_at(eyes.astype(np.float32), np.broadcast_to(motion.HEAD_CENTER, eyes.shape))
    zero = np.zeros((5, 3), np.float32)
    got = np.asarray(motion.view_directions(viewmats, zero, zero, zero))
    np.testing.assert_allclose(got, unit, atol=1e-5)


def test_view_directions_follow_the_head_pose_and_translation():
    rng = np.random.default_rng(0)
    eyes = motion.HEAD_CENTER + rng.normal(size=(6, 3)) * 0.6
    viewmats = np.asarray(camera.look_at(eyes.astype(np.float32), np.broadcast_to(motion.HEAD_CENTER, eyes.shape)))
    global_pose = rng.normal(0, 0.3, (6, 3))
    neck_pose = rng.normal(0, 0.3, (6, 3))
    translation = rng.normal(0, 0.02, (6, 3))
    got = np.asarray(motion.view_directions(viewmats, global_pose.astype(np.float32), neck_pose.astype(np.float32),
                                            translation.astype(np.float32)))
    for k in range(6):  # float64 reference: the camera's offset from the moved centre, in the head's frame
        rot = _rodrigues64(global_pose[k]) @ _rodrigues64(neck_pose[k])
        offset = eyes[k] - (motion.HEAD_CENTER + translation[k])
        want = rot.T @ offset / np.linalg.norm(offset)
        np.testing.assert_allclose(got[k], want, atol=2e-5)
    # A head turned by +θ about the vertical sees a camera at azimuth a at a − θ.
    turned = np.asarray(motion.view_directions(viewmats[:1], np.array([[0.0, 0.4, 0.0]], np.float32),
                                               np.array([[0.0, 0.3, 0.0]], np.float32), np.zeros((1, 3), np.float32)))
    base = np.asarray(motion.view_directions(viewmats[:1], *(np.zeros((1, 3), np.float32),) * 3))
    np.testing.assert_allclose(turned[0], _rot_y(-0.7) @ base[0], atol=2e-5)


def test_view_pose_loss_closed_form_and_errors():
    x, y = jnp.array([1.0, 0, 0]), jnp.array([0, 1.0, 0])
    pred = jnp.stack([jnp.stack([x, x, y, x])])
    true = jnp.stack([jnp.stack([x, -x, x, -x])])
    mask = jnp.array([[True, True, True, False]])  # the last (opposite) pair is padding
    np.testing.assert_allclose(float(L.view_pose_loss(pred, true, mask)), (0.0 + 2.0 + 1.0) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="view_pose_loss"):
        L.view_pose_loss(pred[..., :2], true, mask)


def _system(procedural_head, **lifter):
    cfg = Config.from_dict(flexavatar.get_config("tiny"))
    model = dataclasses.replace(cfg.model, lifter=dataclasses.replace(cfg.model.lifter, **lifter))
    return FlexAvatar(model, procedural_head)


@pytest.fixture(scope="module")
def posed(procedural_head):
    system = _system(procedural_head, view_pose=True)
    return system, flax.linen.meta.unbox(system.init(jax.random.key(0)))


@pytest.fixture(scope="module")
def views(posed):
    s = posed[0].image_size
    images = jax.random.uniform(jax.random.key(1), (2, 4, s, s, 3))
    return InputViews(images, jnp.array([[True, True, True, False], [True, True, True, True]]))


def test_the_pose_head_predicts_one_unit_direction_per_view_from_that_view_alone(posed, views):
    system, params = posed
    avatar, aux = system.reconstruct_views_aux(params, views)
    d = np.asarray(aux["view_directions"])
    assert d.shape == (2, 4, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    # Changing view 1 changes view 1's direction only; permuting views permutes the directions and
    # leaves the avatar unchanged; the padded view's content changes nothing.
    other = views.images.at[:, 1].set(jax.random.uniform(jax.random.key(5), views.images.shape[2:]))
    d2 = np.asarray(system.reconstruct_views_aux(params, views._replace(images=other))[1]["view_directions"])
    np.testing.assert_allclose(d2[:, [0, 2, 3]], d[:, [0, 2, 3]], atol=1e-6)
    assert np.abs(d2[:, 1] - d[:, 1]).max() > 1e-3
    perm = jnp.array([2, 0, 3, 1])
    permuted = InputViews(views.images[:, perm], views.mask[:, perm])
    p_avatar, p_aux = system.reconstruct_views_aux(params, permuted)
    np.testing.assert_allclose(np.asarray(p_aux["view_directions"])[1], d[1, np.asarray(perm)], atol=1e-5)
    np.testing.assert_allclose(np.asarray(p_avatar.raw_maps[1]), np.asarray(avatar.raw_maps[1]), atol=1e-4)
    padded = views.images.at[0, 3].set(0.3)
    np.testing.assert_allclose(np.asarray(system.reconstruct_views(params, views._replace(images=padded)).raw_maps[0]),
                               np.asarray(avatar.raw_maps[0]), atol=1e-5)
    # Without view_pose the lifter predicts nothing on the side.
    plain = _system(posed[0].head)
    assert plain.reconstruct_views_aux(flax.linen.meta.unbox(plain.init(jax.random.key(0))), views)[1] == {}


def _with_sharpness(params, value):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: (jnp.full_like(v, value) if k[-1].startswith("view_pose_sharpness_") else v)
                                         for k, v in flat.items()})


def test_attention_mass_follows_how_squarely_each_view_faces_the_query(procedural_head, posed, views):
    system, params = posed
    flat = traverse_util.flatten_dict(params)
    sharp = [k for k in flat if k[-1].startswith("view_pose_sharpness_")]
    assert len(sharp) == system.cfg.lifter.depth
    assert all(float(flat[k]) == head_queries.VIEW_POSE_SHARPNESS for k in sharp)
    directions = np.asarray(system.reconstruct_views_aux(params, views)[1]["view_directions"])
    normals = head_queries.query_directions(system.head, system.cfg.grid)
    np.testing.assert_allclose(np.linalg.norm(normals[np.linalg.norm(normals, axis=-1) > 0], axis=-1), 1.0, atol=1e-5)
    facing = np.where(np.asarray(views.mask)[:, None], np.einsum("sc,bvc->bsv", normals, directions), -np.inf)
    # Sharpened, each query puts nearly all its mass on the view that faces its point most squarely
    # (where that view leads the next by a clear margin).
    mass = np.asarray(probes.view_attention(system, _with_sharpness(params, 30.0), views))  # [blocks, b, q, v]
    top2 = np.sort(facing, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 0.2
    assert clear.sum() > 50
    best = np.argmax(facing, axis=-1)
    for block in mass:
        on_best = np.take_along_axis(block, best[..., None], -1)[..., 0]
        assert np.all(on_best[clear] > 0.9)
        np.testing.assert_allclose(block[0, :, 3], 0.0, atol=1e-7)  # padding gets nothing
    # With κ = 0 the weighting is a no-op: the same avatar as the plain lifter with the same weights.
    plain = _system(procedural_head)
    without = traverse_util.unflatten_dict({k: v for k, v in flat.items()
                                            if not any(p.startswith("view_pose") for p in k)})
    np.testing.assert_allclose(np.asarray(system.reconstruct_views(_with_sharpness(params, 0.0), views).raw_maps),
                               np.asarray(plain.reconstruct_views(without, views).raw_maps), atol=1e-5)


def test_training_batches_carry_the_label_and_the_loss_uses_it(tmp_path):
    c = micro_dict(batch=2)
    c.data.memoize_examples = 0
    c.model.lifter.view_pose = True
    cfg = Config.from_dict(c)
    trainer = loop.Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    world = train_inputs.make_world(cfg, trainer.head)
    source = train_inputs.train_source(cfg, world, False)
    specs = {k: np.stack([source[i][k] for i in range(2)]) for k in source[0]}
    batch = jax.tree.map(jnp.asarray, ground_truth.GroundTruthRenderer(world, input_annotations=False)(specs))
    assert "input_viewmats" not in batch  # the model never sees the cameras...
    want = motion.view_directions(specs["input_viewmats"], specs["input_global_pose"], specs["input_neck_pose"],
                                  specs["input_translation"])
    want = np.where(specs["input_mask"][..., None], np.asarray(want), 0.0)
    np.testing.assert_allclose(np.asarray(batch["input_view_directions"]), want, atol=1e-6)  # ...only this label
    params = trainer.init_state().params
    loss, metrics = step_lib.compute_losses(trainer.system, cfg, params, batch, 0)
    assert 0.0 < float(metrics["loss/view_pose"]) < 2.0
    # The term has the weight the config gives it, and a batch without the label is refused.
    off = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, view_pose=dataclasses.replace(
        cfg.loss.view_pose, weight=0.0)))
    loss_off, metrics_off = step_lib.compute_losses(trainer.system, off, params, batch, 0)
    assert "loss/view_pose" not in metrics_off
    np.testing.assert_allclose(float(loss) - float(loss_off), cfg.loss.view_pose.weight * float(metrics["loss/view_pose"]),
                               rtol=1e-4)
    with pytest.raises(ValueError, match="input_view_directions"):
        step_lib.compute_losses(trainer.system, cfg, params, {k: v for k, v in batch.items()
                                                               if k != "input_view_directions"}, 0)


def test_the_oracle_diagnostic_needs_the_input_cameras_and_weighs_with_them(procedural_head, posed, views):
    system = _system(procedural_head, view_pose=True, view_pose_oracle=True)
    assert system.needs_cameras() and not posed[0].needs_cameras()
    params = posed[1]  # the same parameters: the oracle only swaps the directions the gate reads
    with pytest.raises(ValueError, match="view_pose_oracle"):
        system.reconstruct_views(params, views)
    annotated = system.example_views(2, 4, annotated=True)
    az = np.deg2rad(np.array([[0.0, 90.0, 180.0, -90.0]] * 2))
    eyes = motion.HEAD_CENTER + 0.9 * np.stack([np.sin(az), np.zeros_like(az), np.cos(az)], -1)
    viewmats = camera.look_at(eyes.astype(np.float32), np.broadcast_to(motion.HEAD_CENTER, eyes.shape))
    oracle_views = annotated._replace(images=views.images, mask=views.mask, viewmats=jnp.asarray(viewmats))
    mass = np.asarray(probes.view_attention(system, _with_sharpness(params, 30.0), oracle_views))[0]
    normals = head_queries.query_directions(system.head, system.cfg.grid)
    # Row 1 (4 real views): each query attends to the camera that faces its point most squarely
    # (the true cameras, whatever the pose head predicts), where that camera leads clearly.
    true = np.stack([np.sin(az[1]), np.zeros(4), np.cos(az[1])], -1)
    facing = normals @ true.T  # [q, 4]
    top2 = np.sort(facing, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.2
    best = np.argmax(facing, -1)
    assert len(set(best[clear])) >= 3  # front, back and the sides all occur
    assert np.all(mass[1][clear, best[clear]] > 0.9)
