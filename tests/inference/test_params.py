"""Loading a trained model for use: `inference.load` reads exactly the parameters a training run
saved (params only: no optimizer, mesh or train step), the EMA ones when the run kept them."""

import dataclasses

import jax
import numpy as np
import pytest

from flexavatar_jax import inference
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.train import loop
from tests.train.test_loop import micro_config


def _assert_bitwise_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_load_params_without_checkpoints_names_the_workdir(tmp_path, procedural_head):
    system = inference.make_system(micro_config().model, procedural_head)
    with pytest.raises(FileNotFoundError, match="train first") as err:
        inference.load_params(system, tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "checkpoints").mkdir()  # a folder without any step
    with pytest.raises(FileNotFoundError, match="train first"):
        inference.load_params(system, tmp_path)
    with pytest.raises(FileNotFoundError, match="train first"):
        inference.load(micro_config(), tmp_path / "never_trained")


def test_load_restores_exactly_the_trained_params(tmp_path):
    cfg = micro_config(steps=2, batch=2, single_device=True)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0.5))
    run = loop.train(cfg, str(tmp_path), devices=jax.devices()[:1])
    state = run["state"]
    assert run["end_step"] == 2 and state.ema_params is not None
    system, params = inference.load(cfg, tmp_path)
    assert isinstance(system, FlexAvatar) and system.cfg == cfg.model
    # The run kept EMA parameters: `load` returns those; `load_params` reads either subtree.
    _assert_bitwise_equal(params, state.ema_params)
    step, raw = inference.load_params(system, tmp_path)
    assert step == 2
    _assert_bitwise_equal(raw, state.params)
    step, ema = inference.load_params(system, tmp_path, ema=True)
    assert step == 2
    _assert_bitwise_equal(ema, state.ema_params)
    # EMA with decay 0.5 over two steps differs from the raw parameters: the subtrees are not mixed up.
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(ema)))
    # On the default device, as plain arrays (no mesh).
    assert all(leaf.sharding.device_set == {jax.devices()[0]} for leaf in jax.tree.leaves(params))
    # A model of another shape is refused with the differing field named; a field that does not
    # shape parameters (the compute dtype) may differ.
    other = dataclasses.replace(cfg.model, decoder=dataclasses.replace(cfg.model.decoder, id_channels=3))
    with pytest.raises(ValueError, match=r"model\.decoder\.id_channels: trained with \d+, given 3"):
        inference.load_params(inference.make_system(other, system.head), tmp_path)
    bf16 = inference.make_system(dataclasses.replace(cfg.model, compute_dtype="bfloat16"), system.head)
    _assert_bitwise_equal(inference.load_params(bf16, tmp_path)[1], state.params)
    # `load_run` takes the config from the run's own record.
    recorded, system, params = inference.load_run(tmp_path)
    assert recorded == cfg and system.cfg == cfg.model
    _assert_bitwise_equal(params, state.ema_params)
    with pytest.raises(FileNotFoundError, match="config.json does not exist") as err:
        inference.load_run(tmp_path / "checkpoints")
    assert str(tmp_path / "checkpoints") in str(err.value)


def test_initial_params_are_the_trainers_initial_params(tmp_path):
    cfg = micro_config(batch=2, single_device=True)
    trainer = loop.Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    _assert_bitwise_equal(inference.initial_params(trainer.system, cfg.seed), trainer.init_state().params)


def test_a_field_added_after_the_record_is_no_difference_at_its_default():
    """A checkpoint written before a model field existed loads when that field is at its default
    (the old behaviour), and is refused when it is not."""
    import json

    from flexavatar_jax.config import ModelConfig, to_dict
    from flexavatar_jax.inference.params import MISSING, model_config_differences

    model = ModelConfig()
    recorded = json.loads(json.dumps(to_dict(model)))
    del recorded["lifter"]["view_pose"]
    assert model_config_differences(model, recorded) == {}
    changed = dataclasses.replace(model, lifter=dataclasses.replace(model.lifter, view_pose=True))
    assert model_config_differences(changed, recorded) == {"lifter.view_pose": (MISSING, True)}
    # A field the record has and the model lacks is still a difference.
    recorded["lifter"]["retired_option"] = 1
    assert model_config_differences(model, recorded) == {"lifter.retired_option": (1, MISSING)}
