"""Refinement trains the reconstruction network only, with the mouth term detached."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax import inference
from flexavatar_jax.config import Config
from flexavatar_jax.data import eval_sets
from flexavatar_jax.train import inputs, refine
from flexavatar_jax.train import step as step_lib
from tests.train.test_loop import micro_config, micro_dict


@pytest.fixture(scope="module")
def setup():
    cfg = micro_config(batch=2, single_device=True)
    system = inference.make_system(cfg.model, cfg.head)
    world = inputs.make_world(cfg, system.head)
    row = eval_sets.build_eval_set(world, [int(inputs.heldout(cfg)[0])], num_views=2, num_targets=1, mode="self")
    return cfg, system, world, row, inference.initial_params(system, cfg.seed)


def test_refinement_batch_targets_are_the_inputs(setup):
    _, _, _, row, _ = setup
    batch = refine.refinement_batch(row)
    assert batch["target_images"].shape[1] == 2
    np.testing.assert_array_equal(batch["target_images"], row["input_images"][:, :2])
    np.testing.assert_array_equal(batch["target_expression"], row["input_expression"][:, :2])


def test_refiner_freezes_the_unet_and_moves_the_rest(setup):
    cfg, system, _, row, params = setup
    refined, steps, _ = refine.Refiner(system, cfg)(params, refine.refinement_batch(row), steps=3)
    assert steps == 3
    for a, b in zip(jax.tree.leaves(params["unet"]), jax.tree.leaves(refined["unet"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for key in ("encoder", "lifter", "decoder"):
        moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params[key]),
                                                                     jax.tree.leaves(refined[key])))
        assert moved > 0, key


def test_mouth_term_is_detached_in_refinement(setup):
    cfg, system, _, row, params = setup
    c = micro_dict(batch=2)
    for name in ("l1", "dssim", "alpha", "tv3d", "offset", "position_deviation", "scale_deviation", "shape",
                 "view_pose"):
        c.loss[name].weight = 0.0
    mouth_only = Config.from_dict(c)
    assert {n for n, term in mouth_only.loss.terms().items() if term.weight > 0} == {"mouth"}
    batch = {k: jnp.asarray(v) for k, v in refine.refinement_batch(row).items()}

    def grads(detach):
        f = lambda p: step_lib.compute_losses(system, mouth_only, p, batch, 0, detach_mouth=detach)[0]  # noqa: E731
        return jax.tree.leaves(jax.grad(f)(params))

    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads(True))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in grads(False))


def test_refiner_runs_a_view_pose_model_without_camera_labels(setup):
    """Photos have no camera label, so refinement leaves the view-pose term out (it would need
    `input_view_directions`, which a refinement batch does not carry)."""
    _, _, world, row, _ = setup
    c = micro_dict(batch=2)
    c.model.lifter.view_pose = True
    c.mesh.update(data=1, fsdp=1, model=1)
    cfg = Config.from_dict(c)
    assert cfg.loss.view_pose.weight > 0
    system = inference.make_system(cfg.model, cfg.head)
    batch = refine.refinement_batch(row)
    assert "input_view_directions" not in batch
    refined, steps, _ = refine.Refiner(system, cfg)(inference.initial_params(system, cfg.seed), batch, steps=2)
    assert steps == 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(refined))
