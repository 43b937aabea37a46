"""Refinement trains the reconstruction network only, with the mouth term detached."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import inputs, loop, refine
from flexavatar_jax.train import step as step_lib
from tests.train.test_loop import micro_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = micro_config(batch=2)
    cfg.mesh.update(data=1, fsdp=1, model=1)
    trainer = loop.Trainer(cfg, str(tmp_path_factory.mktemp("refine")), devices=jax.devices()[:1])
    world = inputs.make_world(cfg, trainer.head)
    row = ev.build_eval_set(world, [int(inputs.heldout(cfg)[0])], num_views=2, num_targets=1, mode="self")
    return cfg, trainer, world, row, trainer.init_state().params


def test_refinement_batch_targets_are_the_inputs(setup):
    _, _, _, row, _ = setup
    batch = refine.refinement_batch(row)
    assert batch["target_images"].shape[1] == 2
    np.testing.assert_array_equal(batch["target_images"], row["input_images"][:, :2])
    np.testing.assert_array_equal(batch["target_expression"], row["input_expression"][:, :2])


def test_refiner_freezes_the_unet_and_moves_the_rest(setup):
    cfg, trainer, _, row, params = setup
    refined, steps, _ = refine.Refiner(trainer, cfg)(params, refine.refinement_batch(row), steps=3)
    assert steps == 3
    for a, b in zip(jax.tree.leaves(params["unet"]), jax.tree.leaves(refined["unet"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for key in ("encoder", "lifter", "decoder"):
        moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(params[key]),
                                                                     jax.tree.leaves(refined[key])))
        assert moved > 0, key


def test_mouth_term_is_detached_in_refinement(setup):
    cfg, trainer, _, row, params = setup
    mouth_only = micro_config(batch=2)
    for name in ("l1", "dssim", "alpha", "tv3d", "offset", "position_deviation", "scale_deviation", "shape"):
        mouth_only.loss[name].weight = 0.0
    batch = {k: jnp.asarray(v) for k, v in refine.refinement_batch(row).items()}

    def grads(detach):
        f = lambda p: step_lib.compute_losses(trainer.system, mouth_only, p, batch, 0, detach_mouth=detach)[0]  # noqa: E731
        return jax.tree.leaves(jax.grad(f)(params))

    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads(True))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in grads(False))
