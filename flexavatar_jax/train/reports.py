"""Runs built from the pieces: train-then-evaluate (the README's main job), evaluation of a trained
workdir against the untrained model, and the held-out turntable."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from flexavatar_jax.data import media
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.train import avatars
from flexavatar_jax.train import checkpoint as ckpt_lib
from flexavatar_jax.train import evaluate as ev
from flexavatar_jax.train import inputs
from flexavatar_jax.train.loop import Trainer, _say, is_writer, train


def restore_params(trainer: Trainer, workdir: str) -> tuple[int, Any]:
    """(step, params) of the newest readable checkpoint in `workdir` (FileNotFoundError if none)."""
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    abstract = ckpt_lib.abstract_like(trainer.abstract_state, trainer.state_shardings)
    restored = checkpoints.restore_latest(abstract, None)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints: train first (flexavatar-jax train)")
    step, state, _ = restored
    return step, state.ema_params if state.ema_params is not None else state.params


def evaluate_params(trainer: Trainer, params: Any, world, config: ml_collections.ConfigDict) -> dict:
    ids = inputs.heldout(config)[: config.eval.num_identities]
    return ev.run_evaluation(lambda batch: trainer.predict(params, _model_keys(batch)), world, ids,
                             views=tuple(config.eval.views), num_targets=config.eval.num_targets,
                             perceptual=trainer.perceptual, seed=config.seed, batch_size=config.eval.batch_size)


def _model_keys(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys the model reads (the eval set also carries bookkeeping such as NaN azimuths)."""
    keep = ("input_images", "input_mask", "input_viewmats", "input_Ks", "target_viewmats", "target_Ks")
    out = {k: batch[k] for k in keep}
    out.update({f"{p}_{f}": batch[f"{p}_{f}"] for p in ("input", "target") for f in PARAM_FIELDS})
    return out


def gain_summary(trained: dict, untrained: dict) -> dict:
    """Per mode × views: PSNR/SSIM/IoU of the trained and the untrained model and the PSNR gain."""
    out = {}
    for mode, per_views in trained.items():
        for views, res in per_views.items():
            t, u = res["all"], untrained[mode][views]["all"]
            out[f"{mode}/{views}"] = dict(psnr=t["psnr"], psnr_untrained=u["psnr"], psnr_gain=t["psnr"] - u["psnr"],
                                          ssim=t["ssim"], ssim_untrained=u["ssim"], iou=t["iou"], iou_untrained=u["iou"])
    return out


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, out_dir: str | None = None,
                     trainer: Trainer | None = None, params: Any = None, world=None) -> dict:
    """Evaluate the newest checkpoint (or `params`) and the untrained model on held-out identities;
    writes eval.json, eval.md, eval_untrained.json and a gain summary into `out_dir`."""
    trainer = trainer or Trainer(config, workdir)
    world = world or inputs.make_world(config, trainer.head)
    if params is None:
        step, params = restore_params(trainer, workdir)
    else:
        step = None
    out_dir = out_dir or workdir
    trained = evaluate_params(trainer, params, world, config)
    untrained = evaluate_params(trainer, trainer.init_state().params, world, config)
    gains = gain_summary(trained, untrained)
    if is_writer():
        ev.write_results(trained, out_dir)
        with open(os.path.join(out_dir, "eval_untrained.json"), "w") as f:
            json.dump(ev._finite_or_none(untrained), f, indent=1)
        with open(os.path.join(out_dir, "eval_gain.json"), "w") as f:
            json.dump(dict(step=step, **gains), f, indent=1)
        with open(os.path.join(out_dir, "eval.md"), "a") as f:
            f.write("\n\n## Trained vs untrained (held-out, all targets)\n\n| mode/views | PSNR | untrained PSNR | gain dB |"
                    " SSIM | untrained SSIM | IoU | untrained IoU |\n|---|---|---|---|---|---|---|---|\n")
            for k, g in gains.items():
                f.write(f"| {k} | {g['psnr']:.2f} | {g['psnr_untrained']:.2f} | {g['psnr_gain']:+.2f} | {g['ssim']:.3f} | "
                        f"{g['ssim_untrained']:.3f} | {g['iou']:.3f} | {g['iou_untrained']:.3f} |\n")
    for k, g in gains.items():
        _say(f"eval {k}: PSNR {g['psnr']:.2f} dB (untrained {g['psnr_untrained']:.2f}, gain {g['psnr_gain']:+.2f}), "
             f"SSIM {g['ssim']:.3f}, IoU {g['iou']:.3f}")
    return dict(trained=trained, untrained=untrained, gains=gains)


def turntable(trainer: Trainer, params: Any, world, config: ml_collections.ConfigDict, path: str,
              num_frames: int = 36, num_views: int = 4) -> str:
    """Reconstruct the first held-out identity from `num_views` views and render a 360° orbit of it
    (at the expression and jaw/eye pose of one of its own frames) to a GIF."""
    system = trainer.system
    ident_id = int(inputs.heldout(config)[0])
    es = ev.build_eval_set(world, [ident_id], num_views=num_views, num_targets=1, mode="self", seed=config.seed)
    n = int(es["num_inputs"][0])
    avatar = trainer.reconstruct(params, es["input_images"][0, :n])
    pose = np.concatenate([np.zeros(6, np.float32), es["target_jaw_pose"][0, 0], es["target_eyes_pose"][0, 0]])
    frames = avatars.turntable_frames(system, params, avatar, num_frames, expression=es["target_expression"][0, 0],
                                      pose=pose)
    if is_writer():
        media.write_video(path, frames, fps=12)
    return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The main job: train (resuming if possible), then evaluate against the untrained model on
    held-out identities and write a turntable GIF of a held-out identity."""
    run = train(config, workdir)
    trainer, state, world = run["trainer"], run["state"], run["world"]
    _say(f"trained steps {run['start_step']}..{run['end_step']} in {run['seconds'] / 60:.1f} min")
    if world is None:
        _say("data.source is not synthetic: no held-out synthetic evaluation")
        return run
    params = state.ema_params if state.ema_params is not None else state.params
    results = evaluate_workdir(config, workdir, trainer=trainer, params=params, world=world)
    path = turntable(trainer, params, world, config, os.path.join(workdir, "turntable_heldout.gif"))
    _say(f"wrote {path}, {workdir}/eval.md, {workdir}/images/")
    return dict(run, eval=results)
