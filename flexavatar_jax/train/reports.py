"""Runs built from the pieces: train-then-evaluate (the README's main job), evaluation of a trained
workdir against the untrained model, and the held-out turntable."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from flexavatar_jax import inference
from flexavatar_jax.config import Config, as_config
from flexavatar_jax.data import media
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models import batch as batch_lib
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import inputs
from flexavatar_jax.train.loop import (
    Trainer,
    heldout_inputs,
    is_writer,
    say,
    train,
    workdir_lock,
)
from flexavatar_jax.train.perceptual import perceptual_loss_fn

# (params, batch) -> (rgb [B,T,H,W,3], alpha [B,T,H,W,1]) as host arrays, optionally followed by the
# geometry dict of `models.batch.predict`.
Predictor = Callable[[Any, dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def evaluate_params(predict: Predictor, params: Any, world, config: Config, perceptual=None, *,
                    shuffle_control: bool | None = None) -> dict:
    """`evaluate.run_evaluation` of `params` on the config's held-out identities (`eval` section;
    the shuffle control as `eval.shuffle_control` unless given; eval sets kept in
    `data.cache_dir` when set)."""
    e = config.eval
    ids = inputs.heldout_for_eval(config)
    control = e.shuffle_control if shuffle_control is None else shuffle_control
    return ev.run_evaluation(lambda batch: predict(params, batch_lib.model_inputs(batch)), world, ids,
                             views=tuple(e.views), num_targets=e.num_targets, perceptual=perceptual, seed=e.seed,
                             batch_size=e.batch_size, shuffle_control=control, cache_dir=config.data.cache_dir or None)


def gain_summary(trained: dict, untrained: dict) -> dict:
    """Per mode × views: PSNR/SSIM/IoU of the trained and the untrained model and the PSNR gain."""
    out = {}
    for mode, per_views in trained.items():
        for views, res in per_views.items():
            t, u = res["all"], untrained[mode][views]["all"]
            out[f"{mode}/{views}"] = dict(psnr=t["psnr"], psnr_untrained=u["psnr"], psnr_gain=t["psnr"] - u["psnr"],
                                          ssim=t["ssim"], ssim_untrained=u["ssim"], iou=t["iou"], iou_untrained=u["iou"])
    return out


def host_predictor(system: FlexAvatar, geometry: bool = False) -> Predictor:
    """A jitted single-device predictor (no mesh): what a user of `inference.load` runs. With
    `geometry` it also returns `batch.predict`'s geometry dict (for the depth and offset metrics)."""
    fn = jax.jit(functools.partial(batch_lib.predict, system, geometry=geometry))

    def predict(params, batch):
        return jax.tree.map(np.asarray, fn(params, batch))

    return predict


def evaluate_workdir(config: Config | Any, workdir: str, out_dir: str | None = None, *,
                     predict: Predictor | None = None, params: Any = None, untrained: Any = None, world=None,
                     perceptual=None, step: int | None = None) -> dict:
    """Evaluate the newest checkpoint (or `params`, trained for `step` steps) and the untrained model on held-out identities;
    writes eval.json, eval.md, eval_untrained.json and a gain summary into `out_dir`. Without a
    `predict`, the parameters are loaded through `inference` (params only, one device)."""
    config = as_config(config)
    if predict is not None and (params is None or untrained is None or world is None):
        raise ValueError("evaluate_workdir: with a predict function, also give params, untrained and world "
                         "(or give none of them to load the checkpoint through inference)")
    if predict is None:
        system = inference.make_system(config.model, config.head)
        predict = host_predictor(system, geometry=True)
        if params is None:
            step, params = inference.load_params(system, workdir, ema=config.train.ema_decay > 0)
        untrained = inference.initial_params(system, config.seed) if untrained is None else untrained
        world = world or inputs.make_world(config, system.head)
        if perceptual is None and config.loss.perceptual.weight > 0:
            perceptual = perceptual_loss_fn(config.loss.perceptual_weights or None)
    out_dir = out_dir or workdir
    trained = evaluate_params(predict, params, world, config, perceptual)
    baseline = evaluate_params(predict, untrained, world, config, perceptual, shuffle_control=False)
    gains = gain_summary(trained, baseline)
    if is_writer():
        appendix = ("\n\n## Trained vs untrained (held-out, all targets)\n\n| mode/views | PSNR | untrained PSNR | "
                    "gain dB | SSIM | untrained SSIM | IoU | untrained IoU |\n|---|---|---|---|---|---|---|---|\n")
        for k, g in gains.items():
            appendix += (f"| {k} | {g['psnr']:.2f} | {g['psnr_untrained']:.2f} | {g['psnr_gain']:+.2f} | {g['ssim']:.3f} | "
                         f"{g['ssim_untrained']:.3f} | {g['iou']:.3f} | {g['iou_untrained']:.3f} |\n")
        ev.write_results(trained, out_dir, appendix)
        write_atomic(os.path.join(out_dir, "eval_untrained.json"), json.dumps(ev.finite_or_none(baseline), indent=1))
        # Last: eval_gain.json marks the evaluation complete (a study point is finished once it exists).
        write_atomic(os.path.join(out_dir, "eval_gain.json"),
                     json.dumps(dict(step=step, evaluator=ev.EVALUATOR_VERSION, **gains), indent=1))
    for k, g in gains.items():
        say(f"eval {k}: PSNR {g['psnr']:.2f} dB (untrained {g['psnr_untrained']:.2f}, gain {g['psnr_gain']:+.2f}), "
            f"SSIM {g['ssim']:.3f}, IoU {g['iou']:.3f}")
    return dict(trained=trained, untrained=baseline, gains=gains)


def turntable(trainer: Trainer, params: Any, world, config: Config, path: str, num_frames: int = 36,
              num_views: int = 4) -> str:
    """Reconstruct the first held-out identity from `num_views` views and render a 360° orbit of it
    (at the expression and jaw/eye pose of one of its own frames) to a GIF."""
    system = trainer.system
    images, annotations, es = heldout_inputs(config, world, num_views, system.needs_cameras())
    avatar = trainer.reconstruct(params, images, **annotations)
    target = HeadParams(**{f: es[f"target_{f}"][0, 0] for f in PARAM_FIELDS})
    # Its expression, jaw and eyes; no global/neck pose or translation (the orbit is the motion).
    frame = system.head.zero_params().replace(expression=target.expression, jaw_pose=target.jaw_pose,
                                              eyes_pose=target.eyes_pose)
    frames = inference.turntable_frames(system, params, avatar, num_frames, frame=frame)
    if is_writer():
        media.write_video(path, frames, fps=12)
    return path


def train_and_evaluate(config: Config | Any, workdir: str) -> dict:
    """The main job: train (resuming if possible), then evaluate against the untrained model on
    held-out identities and write a turntable GIF of a held-out identity."""
    config = as_config(config)
    with workdir_lock(config, workdir, "train"):  # through the evaluation: its files are the run's too
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: Config, workdir: str) -> dict:
    run = train(config, workdir)
    trainer, state, world = run["trainer"], run["state"], run["world"]
    say(f"trained steps {run['start_step']}..{run['end_step']} in {run['seconds'] / 60:.1f} min")
    if world is None:
        say("data.source is not synthetic: no held-out synthetic evaluation")
        return run
    params = state.ema_params if state.ema_params is not None else state.params
    results = evaluate_workdir(config, workdir, predict=functools.partial(trainer.predict, geometry=True), params=params,
                               untrained=trainer.init_state().params, world=world, perceptual=trainer.perceptual,
                               step=run["end_step"])
    if config.eval.turntable_frames > 0:
        path = turntable(trainer, params, world, config, os.path.join(workdir, "turntable_heldout.gif"),
                         num_frames=config.eval.turntable_frames)
        say(f"wrote {path}")
    say(f"wrote {workdir}/eval.md, {workdir}/eval.json")
    return dict(run, eval=results)
