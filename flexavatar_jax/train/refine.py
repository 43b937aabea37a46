"""FlexAvatar's per-identity refinement: fine-tune the reconstruction network on the input images.

Only the reconstruction network (`encoder`, `lifter`, `decoder`, `shape_head`) is optimised; the
deformation UNet is frozen and the mouth term is detached (the paper's recipe: the inputs show
only a few expressions, and letting their mouths shape the network would overfit the UNet's
job). The targets are the input views themselves, driven by their tracked parameters.

`refine_workdir` reports, on held-out synthetic identities, PSNR before/after on
* novel views of the input frames (the same expressions seen from new cameras), and
* unseen expressions (other frames of the identity from new cameras, the self-reenactment targets),
which should not drop: refinement must not trade animation quality for the inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flexavatar_jax import inference
from flexavatar_jax.config import Config, as_config
from flexavatar_jax.data import eval_sets, motion
from flexavatar_jax.data.pipeline import PARAM_FIELDS, SPEC_PARAM_FIELDS
from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models.avatar import RECONSTRUCTION_KEYS, FlexAvatar
from flexavatar_jax.models.batch import model_inputs
from flexavatar_jax.train import inputs
from flexavatar_jax.train import metrics as M
from flexavatar_jax.train import step as step_lib
from flexavatar_jax.train.loop import is_writer, say
from flexavatar_jax.train.perceptual import perceptual_loss_fn
from flexavatar_jax.train.reports import Predictor, host_predictor

# The per-input-frame stream for novel cameras (distinct from evaluate's streams).
_NOVEL_VIEW_STREAM = 71


def trainable_mask(params: dict) -> dict:
    """True for the reconstruction network's leaves, False for the UNet's."""
    return {k: jax.tree.map(lambda _: k in RECONSTRUCTION_KEYS, v) for k, v in params.items()}


def refine_optimizer(lr: float) -> optax.GradientTransformation:
    return optax.multi_transform({True: optax.adam(lr), False: optax.set_to_zero()}, trainable_mask)


def refinement_batch(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One eval-set row (leading [1]) whose targets are its own input views."""
    n = int(row["num_inputs"][0])
    batch = model_inputs(row)
    batch["target_viewmats"], batch["target_Ks"] = row["input_viewmats"][:, :n], row["input_Ks"][:, :n]
    batch["target_images"], batch["target_alphas"] = row["input_images"][:, :n], row["input_alphas"][:, :n]
    for f in PARAM_FIELDS:
        batch[f"target_{f}"] = row[f"input_{f}"][:, :n]
    return batch


def novel_view_batch(world, row: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The row's input frames (same expressions) rendered from new cameras (ground truth)."""
    n = int(row["num_inputs"][0])
    ident_id = int(row["identity"][0])
    batch = refinement_batch(row)
    size = world.config.image_size
    cams = [motion.sample_cameras(np.random.default_rng([seed, ident_id, _NOVEL_VIEW_STREAM, i]), 1, size, size)
            for i in range(n)]
    viewmats = np.concatenate([c.viewmats for c in cams]).astype(np.float32)
    Ks = np.concatenate([c.Ks for c in cams]).astype(np.float32)
    params = HeadParams(shape=None, **{f: row[f"input_{f}"][:, :n] for f in SPEC_PARAM_FIELDS})
    out = world.render_views([ident_id], params, viewmats[None], Ks[None])  # white backgrounds
    batch.update(target_images=np.asarray(out["rgb"]), target_alphas=np.asarray(out["alpha"]),
                 target_viewmats=viewmats[None], target_Ks=Ks[None])
    return batch


def _psnr(predict: Predictor, params: Any, batch: dict[str, np.ndarray]) -> float:
    rgb, _ = predict(params, batch)
    return float(jnp.mean(M.psnr(jnp.asarray(rgb), jnp.asarray(batch["target_images"]))))


class Refiner:
    """Compiles the refinement step once (per input-view count) and runs it."""

    def __init__(self, system: FlexAvatar, config: Config | Any, perceptual=None):
        config = as_config(config)
        # Test-time photos carry no camera label: the pose head is not refined against one.
        config = dataclasses.replace(config, loss=dataclasses.replace(
            config.loss, view_pose=dataclasses.replace(config.loss.view_pose, weight=0.0)))
        self.config = config
        self.tx = refine_optimizer(config.refine.lr)
        self.step = jax.jit(step_lib.make_train_step(system, config, self.tx, perceptual, detach_mouth=True))
        self._compiled: dict = {}

    def __call__(self, params: Any, batch: dict[str, np.ndarray], steps: int, time_budget_s: float = 0.0):
        """-> (refined params, number of steps run, seconds). Stops at `steps` or when the time
        budget (if > 0) is spent, whichever comes first."""
        # The step counter starts where training ended, so scheduled loss weights are at their
        # final values (a term that switches on late in training is on here too).
        state = step_lib.TrainState(step=jnp.asarray(self.config.train.steps, jnp.int32), params=params,
                                    opt_state=self.tx.init(params),
                                    ema_params=None, nonfinite_skips=jnp.zeros((), jnp.int32))
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        key = jax.random.key(self.config.seed)
        signature = tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))
        if signature not in self._compiled:  # compile outside the timed budget (once per view count)
            self._compiled[signature] = self.step.lower(state, batch, key).compile()
        step = self._compiled[signature]
        t0 = time.perf_counter()
        done = 0
        for i in range(steps):
            state, _ = step(state, batch, jax.random.fold_in(key, i))
            done += 1
            if time_budget_s > 0:
                jax.block_until_ready(state.params)
                if time.perf_counter() - t0 >= time_budget_s:
                    break
        jax.block_until_ready(state.params)
        return state.params, done, time.perf_counter() - t0


def refine_workdir(config: Config | Any, workdir: str, out_dir: str | None = None,
                   num_views: int = 4) -> dict:
    """Refine the trained model on each of `config.eval.num_identities` held-out identities and
    report PSNR before/after (novel views of the input frames; unseen expressions)."""
    config = as_config(config)
    system = inference.make_system(config.model, config.head)
    step, params = inference.load_params(system, workdir, ema=config.train.ema_decay > 0)
    world = inputs.make_world(config, system.head)
    perceptual = (perceptual_loss_fn(config.loss.perceptual_weights or None)
                  if config.loss.perceptual.weight > 0 else None)
    predict = host_predictor(system)
    refiner = Refiner(system, config, perceptual)
    rows = []
    for ident_id in inputs.heldout_for_eval(config):
        row = eval_sets.build_eval_set(world, [int(ident_id)], num_views=num_views, num_targets=config.eval.num_targets,
                                mode="self", seed=config.eval.seed)
        novel = novel_view_batch(world, row, config.eval.seed)
        unseen = model_inputs(row) | {k: row[k] for k in ("target_images", "target_alphas")}
        before = dict(novel_views=_psnr(predict, params, novel), unseen_expressions=_psnr(predict, params, unseen))
        refined, steps_run, seconds = refiner(params, refinement_batch(row), config.refine.steps,
                                              config.refine.time_budget_s)
        after = dict(novel_views=_psnr(predict, refined, novel), unseen_expressions=_psnr(predict, refined, unseen))
        unet_same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(params["unet"]),
                                                                      jax.tree.leaves(refined["unet"])))
        rows.append(dict(identity=int(ident_id), steps=steps_run, seconds=seconds, psnr_before=before,
                         psnr_after=after, unet_unchanged=unet_same))
        say(f"refine identity {int(ident_id)}: {steps_run} steps in {seconds:.2f} s; novel views "
             f"{before['novel_views']:.2f} -> {after['novel_views']:.2f} dB, unseen expressions "
             f"{before['unseen_expressions']:.2f} -> {after['unseen_expressions']:.2f} dB")
    mean = lambda when, what: float(np.mean([r[when][what] for r in rows]))  # noqa: E731
    summary = dict(checkpoint_step=step, num_views=num_views, steps=config.refine.steps, lr=config.refine.lr,
                   identities=rows,
                   mean={w: {k: mean(w, k) for k in ("novel_views", "unseen_expressions")}
                         for w in ("psnr_before", "psnr_after")})
    if is_writer():
        out_dir = out_dir or workdir
        os.makedirs(out_dir, exist_ok=True)
        write_atomic(os.path.join(out_dir, "refine.json"), json.dumps(summary, indent=1))
    m = summary["mean"]
    say(f"refine mean: novel views {m['psnr_before']['novel_views']:.2f} -> {m['psnr_after']['novel_views']:.2f} dB, "
         f"unseen expressions {m['psnr_before']['unseen_expressions']:.2f} -> "
         f"{m['psnr_after']['unseen_expressions']:.2f} dB")
    return summary
