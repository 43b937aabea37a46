"""The training loop: sharded runs match single-device runs, resuming replays an uninterrupted run,
a NaN batch never poisons the state, and the model learns on the tiny synthetic task."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from flexavatar_jax.config import Config
from flexavatar_jax.configs import flexavatar
from flexavatar_jax.data import ground_truth
from flexavatar_jax.train import inputs, loop
from flexavatar_jax.train import step as step_lib


def micro_dict(steps: int = 3, batch: int = 8) -> ml_collections.ConfigDict:
    """The tiny config shrunk further (32² inputs, K=32) so a step compiles and runs in seconds, as
    the ConfigDict a config file gives (edit it, then `Config.from_dict`)."""
    c = flexavatar.get_config("tiny")
    c.model.image_size = 32
    c.model.encoder.update(patch_size=8, width=32, depth=1, num_heads=2)
    c.model.lifter.update(width=32, num_heads=2, global_depth=1, depth=1)
    c.model.uv_resolution = 32
    c.model.decoder.update(channels=16, id_channels=8)
    c.model.unet.channels = (8, 16)
    c.data.num_identities = 4
    c.data.synthetic.update(uv_resolution=32, frames_per_clip=6)
    c.data.num_targets = 1
    c.data.examples_per_identity = 4
    c.data.memoize_examples = 64
    c.loss.tv3d.weight = 0.01
    c.train.update(steps=steps, batch_size=batch, warmup_steps=1, log_every=1, image_every=0, checkpoint_every=2)
    return c


def micro_config(steps: int = 3, batch: int = 8, single_device: bool = False) -> Config:
    """`micro_dict` as the typed config the library takes; `single_device`: a 1×1×1 mesh."""
    c = micro_dict(steps, batch)
    if single_device:
        c.mesh.update(data=1, fsdp=1, model=1)
    return Config.from_dict(c)


def first_examples(config: Config, trainer: loop.Trainer, n: int) -> dict[str, np.ndarray]:
    """The first `n` training examples of the config's source, stacked and rendered (host numpy)."""
    world = inputs.make_world(config, trainer.head)
    source = inputs.train_source(config, world, False)
    specs = {k: np.stack([source[i][k] for i in range(n)]) for k in source[0]}
    return jax.tree.map(np.asarray, ground_truth.GroundTruthRenderer(world, input_annotations=False)(specs))


def _losses(workdir) -> list[float]:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r["loss/total"] for r in rows if "loss/total" in r]


def test_sharded_run_matches_single_device(tmp_path):
    single = micro_config(single_device=True)
    loop.train(single, str(tmp_path / "single"), devices=jax.devices()[:1])
    c = micro_dict()
    c.mesh.update(data=2, fsdp=4, model=1)
    sharded = Config.from_dict(c)
    out = loop.train(sharded, str(tmp_path / "sharded"))
    assert dict(out["trainer"].mesh.shape) == {"data": 2, "fsdp": 4, "model": 1}
    # The params really are split over the fsdp axis (embed -> fsdp in the rules).
    kernel = out["state"].params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec[0] == "fsdp"
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "sharded")
    assert len(a) == len(b) == 3
    np.testing.assert_allclose(b, a, rtol=1e-4)
    # The single-device checkpoint of step 2 (params, Adam moments, data position) resumes onto
    # the (2,4) mesh and takes step 3 like the single-device run did.
    cross = tmp_path / "cross"
    shutil.copytree(tmp_path / "single" / "checkpoints", cross / "checkpoints")
    shutil.rmtree(cross / "checkpoints" / "3")
    resumed = loop.train(sharded, str(cross))
    assert resumed["start_step"] == 2 and resumed["state"].params["encoder"]["block_0"]["mlp"]["fc1"]["kernel"] \
        .sharding.spec[0] == "fsdp"
    np.testing.assert_allclose(_losses(cross), a[2:], rtol=1e-4)


def test_resume_replays_an_uninterrupted_run(tmp_path):
    cfg = micro_config(steps=4, batch=2, single_device=True)
    devices = jax.devices()[:1]
    # `train` takes the typed config or the config file's ConfigDict (converted): the same run.
    as_dict = micro_dict(steps=4, batch=2)
    as_dict.mesh.update(data=1, fsdp=1, model=1)
    full = loop.train(as_dict, str(tmp_path / "full"), devices=devices)
    assert full["trainer"].config == cfg
    # The interrupted run also scores held-out identities every 2 steps: that must not change it.
    with_eval = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=2),
                                    data=dataclasses.replace(cfg.data, num_heldout=2),
                                    eval=dataclasses.replace(cfg.eval, num_identities=2, num_targets=1,
                                                             shuffle_control=True))
    first = loop.train(with_eval, str(tmp_path / "resumed"), stop_after=2, devices=devices)
    assert first["end_step"] == 2
    second = loop.train(with_eval, str(tmp_path / "resumed"), devices=devices)
    assert second["start_step"] == 2 and second["end_step"] == 4
    for x, y in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(second["state"].params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "heldout/psnr" in r]
    assert [r["step"] for r in scored] == [2, 4]
    for r in scored:
        assert r["heldout/identity_gain_psnr"] == pytest.approx(r["heldout/psnr"] - r["heldout/psnr_shuffled"],
                                                                abs=1e-4)
    logged = [r for r in rows if "data_share" in r]
    assert logged and all(0.0 <= r["data_share"] <= 1.0 and r["data_s"] <= r["wall_s"] for r in logged)


def test_nonfinite_batch_skips_the_update(tmp_path):
    cfg = micro_config(batch=2, single_device=True)
    trainer = loop.Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    batch = first_examples(cfg, trainer, 2)
    state = trainer.init_state()
    before = jax.tree.map(np.asarray, state.params)
    bad = dict(batch, target_images=batch["target_images"].copy())
    bad["target_images"][0, 0, 3, 3, 0] = np.nan
    state, metrics = trainer.step(state, bad, 0)
    assert float(metrics["finite"]) == 0.0 and int(state.nonfinite_skips) == 1 and int(state.step) == 1
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(y), x)
    # Adam's moments were not touched either: the next good step equals a step from a fresh state.
    state, metrics = trainer.step(state, batch, 1)
    fresh, _ = trainer.step(trainer.init_state(), batch, 1)
    assert float(metrics["finite"]) == 1.0 and int(state.nonfinite_skips) == 1
    for x, y in zip(jax.tree.leaves(fresh.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-8)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    cfg = micro_config(batch=4)
    trainer = loop.Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    batch = {k: jnp.asarray(v) for k, v in first_examples(cfg, trainer, 4).items()}
    state = trainer.init_state()
    one = jax.jit(step_lib.make_train_step(trainer.system, cfg, trainer.tx))
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=2))
    two = jax.jit(step_lib.make_train_step(trainer.system, cfg2, trainer.tx))
    s1, m1 = one(state, batch, jax.random.key(0))
    s2, m2 = two(state, batch, jax.random.key(0))
    np.testing.assert_allclose(float(m2["loss/total"]), float(m1["loss/total"]), rtol=1e-5)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)

    # The gradients themselves, coordinate by coordinate: Adam's first moment after one step is
    # (1 - b1)·g. (Compared before Adam's normalisation, which turns a rounding difference in a
    # near-zero gradient into a full-size update of either sign.)
    def first_moment(s):
        is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
        return next(x for x in jax.tree.leaves(s.opt_state, is_leaf=is_adam) if is_adam(x)).mu

    g1, g2 = (np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(first_moment(s))]) for s in (s1, s2))
    scale = np.abs(g1).max()
    assert scale > 0
    np.testing.assert_allclose(g2, g1, rtol=0, atol=1e-3 * scale)  # float32 sums in another order
    # Step 0 has learning rate 0 (warm-up starts at 0): a second, real update moves the params.
    s1, _ = one(s1, batch, jax.random.key(1))
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(state.params)))
    assert moved > 1e-5


def test_bfloat16_compute_and_lowres_branch_give_finite_losses(tmp_path):
    c = micro_dict(batch=2)
    c.model.compute_dtype = "bfloat16"
    c.loss.lowres.weight = 0.5
    cfg = Config.from_dict(c)
    trainer = loop.Trainer(cfg, str(tmp_path), devices=jax.devices()[:1])
    batch = {k: jnp.asarray(v) for k, v in first_examples(cfg, trainer, 2).items()}
    params = trainer.init_state().params
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # params stay float32
    loss, metrics = jax.jit(lambda p: step_lib.compute_losses(trainer.system, cfg, p, batch, 0))(params)
    assert np.isfinite(float(loss)) and float(metrics["loss/lowres"]) > 0
    # bf16 compute changes the numbers only at bf16 precision.
    cfg32 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compute_dtype="float32"))
    assert cfg32.loss.lowres.weight == 0.5
    trainer32 = loop.Trainer(cfg32, str(tmp_path / "f32"), devices=jax.devices()[:1])
    loss32, _ = jax.jit(lambda p: step_lib.compute_losses(trainer32.system, cfg32, p, batch, 0))(params)
    assert abs(float(loss) - float(loss32)) < 0.05 * abs(float(loss32))
