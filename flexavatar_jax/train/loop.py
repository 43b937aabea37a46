"""The training loop: sharded state, data, checkpoints, logs, image grids, evaluation hooks.

`train(config, workdir)` is resumable by re-running the same command: it restores the newest
readable checkpoint in `workdir/checkpoints` (model state, data-iterator position, config) and
continues. Only process 0 writes files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from flexavatar_jax import inference
from flexavatar_jax.config import Config, as_config
from flexavatar_jax.data import eval_sets, ground_truth, locks, media
from flexavatar_jax.data.pipeline import PARAM_FIELDS
from flexavatar_jax.files import write_atomic
from flexavatar_jax.head import HeadParams
from flexavatar_jax.models import batch as batch_lib
from flexavatar_jax.models.avatar import parameter_counts
from flexavatar_jax.models.encoder import load_encoder_npz
from flexavatar_jax.train import checkpoint as ckpt_lib
from flexavatar_jax.train import inputs, sharding
from flexavatar_jax.train import step as step_lib
from flexavatar_jax.train.perceptual import perceptual_loss_fn


def is_writer() -> bool:
    return jax.process_index() == 0


def say(msg: str) -> None:
    """Log, and print on process 0 (progress lines a person reads)."""
    logging.info(msg)
    if is_writer():
        print(msg, flush=True)


class MetricWriter:
    """JSONL always; TensorBoard event files when tensorboardX is importable."""

    def __init__(self, workdir: str):
        self.enabled = is_writer()
        self.tb = None
        if not self.enabled:
            return
        self.file = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter  # optional

            self.tb = SummaryWriter(os.path.join(workdir, "tb"))
        except ImportError:
            logging.info("tensorboardX not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


class Trainer:
    """Everything a run needs, built from a config: system, mesh, shardings, jitted step."""

    def __init__(self, config: Config, workdir: str, devices=None):
        config = as_config(config)
        self.config = config
        self.workdir = workdir
        self.system = inference.make_system(config.model, config.head)
        self.head = self.system.head
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.rules = config.sharding_rules
        if config.train.batch_size % sharding.batch_divisor(self.mesh):
            raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by data×fsdp="
                             f"{sharding.batch_divisor(self.mesh)}")
        self.tx = step_lib.make_optimizer(config)
        self.perceptual = perceptual_loss_fn(config.loss.perceptual_weights or None) \
            if config.loss.perceptual.weight > 0 else None
        self.key = jax.random.key(config.seed)
        ema = config.train.ema_decay > 0
        make = lambda k: step_lib.create_state(self.system, self.tx, k, ema)  # noqa: E731
        # Shapes and logical names first (no mesh context needed), then the mesh shardings.
        abstract = jax.eval_shape(make, self.key)
        self.state_shardings = sharding.logical_shardings(abstract, self.mesh, self.rules)
        self.abstract_state = nn.meta.unbox(abstract)
        self._make_state = make
        self.batch_sharding = sharding.batch_sharding(self.mesh)
        self.train_step = jax.jit(step_lib.make_train_step(self.system, config, self.tx, self.perceptual),
                                  in_shardings=(self.state_shardings, self.batch_sharding, sharding.replicated(self.mesh)),
                                  out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                                  donate_argnums=0)
        self._predict = jax.jit(functools.partial(batch_lib.predict, self.system))
        self._predict_geometry = jax.jit(functools.partial(batch_lib.predict, self.system, geometry=True))
        self._reconstruct = jax.jit(self.system.reconstruct)

    def init_state(self) -> step_lib.TrainState:
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            state = jax.jit(lambda k: nn.meta.unbox(self._make_state(k)), out_shardings=self.state_shardings)(self.key)
        pretrained = self.config.model.encoder.pretrained
        if pretrained:
            enc = load_encoder_npz(pretrained, state.params["encoder"])
            params = dict(state.params, encoder=jax.device_put(enc, self.state_shardings.params["encoder"]))
            state = state.replace(params=params, ema_params=params if state.ema_params is not None else None,
                                  opt_state=self.tx.init(params))
            say(f"loaded pretrained encoder weights from {pretrained}")
        return state

    def step(self, state, batch: dict[str, np.ndarray], step: int):
        """One update from this process's rows of the global batch."""
        return self.step_global(state, sharding.global_batch(batch, self.mesh), step)

    def step_global(self, state, global_batch: dict[str, jax.Array], step: int):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self.train_step(state, global_batch, jax.random.fold_in(self.key, step))

    def reconstruct(self, params, images: np.ndarray, *, viewmats=None, Ks=None, tracked=None):
        """An avatar from 1–4 host images (the same on every process); cameras and tracked head
        params for the projection lifters (`FlexAvatar.reconstruct`)."""
        as_jnp = lambda x: None if x is None else jax.tree.map(jnp.asarray, x)  # noqa: E731
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._reconstruct(params, jnp.asarray(images), viewmats=as_jnp(viewmats), Ks=as_jnp(Ks),
                                     tracked=as_jnp(tracked))

    def predict(self, params, batch: dict[str, Any], geometry: bool = False):
        """Rendered targets of a batch -> host (rgb, alpha), with `geometry` also the dict of
        `batch.predict` (depth, offset spread). Every process must call it (the params are global
        arrays); host numpy inputs must then be the same on every process, global arrays are
        gathered."""
        fn = self._predict_geometry if geometry else self._predict
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            out = fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
        if jax.process_count() > 1:
            out = multihost_utils.process_allgather(out, tiled=True)
        return jax.tree.map(np.asarray, out)


def heldout_inputs(config: Config, world, num_views: int, needs_cameras: bool) -> tuple[np.ndarray, dict, dict]:
    """The first held-out identity from `num_views` views, for turntables: (images, the keyword
    arguments `Trainer.reconstruct` also needs — input cameras and tracked params with
    `needs_cameras`, else none —, its one-target eval set)."""
    ident = int(inputs.heldout(config)[0])
    es = eval_sets.build_eval_set(world, [ident], num_views=num_views, num_targets=1, mode="self", seed=config.eval.seed)
    n = int(es["num_inputs"][0])
    annotations = {}
    if needs_cameras:
        annotations = dict(viewmats=es["input_viewmats"][0, :n], Ks=es["input_Ks"][0, :n],
                           tracked=HeadParams(**{f: es[f"input_{f}"][0, :n] for f in PARAM_FIELDS}))
    return es["input_images"][0, :n], annotations, es


def periodic_evaluator(trainer: Trainer, config: Config, world):
    """`params -> {"heldout/<metric>": ...}`: the self-reenactment eval set of the config's held-out
    identities from `max(eval.views)` inputs (rendered once; kept in `data.cache_dir` when set),
    with the input-shuffle control when `eval.shuffle_control` — what `train.eval_every` logs to
    metrics.jsonl (the convergence curve of a study point)."""
    from flexavatar_jax.train import evaluate as ev

    e = config.eval
    es = inputs.heldout_eval_set(config, world)

    def run(params) -> dict[str, float]:
        t0 = time.time()
        result = ev.evaluate_with_control(lambda b: trainer.predict(params, batch_lib.model_inputs(b)), es,
                                          shuffle_control=e.shuffle_control, batch_size=e.batch_size)
        return {**ev.flat_summary(result), "heldout/seconds": time.time() - t0}

    return run


def host_rows(global_batch: dict[str, jax.Array], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The entries `keys` of a global batch on the host, all processes' rows (process 0's lead);
    every process must call it."""
    picked = {k: global_batch[k] for k in keys}
    if jax.process_count() > 1:
        picked = multihost_utils.process_allgather(picked, tiled=True)
    return jax.tree.map(np.asarray, picked)


def image_grid(batch: dict[str, np.ndarray], rgb: np.ndarray, rows: int = 4) -> np.ndarray:
    """Rows of (first input | prediction | target | |error|) per (example, target)."""
    tiles = []
    for b in range(min(rows, rgb.shape[0])):
        for t in range(rgb.shape[1]):
            pred, target = np.clip(rgb[b, t], 0, 1), batch["target_images"][b, t]
            err = np.clip(np.abs(pred - target) * 2.0, 0, 1)
            tiles.append([batch["input_images"][b, 0], pred, target, err])
    return media.image_grid([[t.astype(np.float32) for t in row] for row in tiles[: rows * 2]])


def train(config: Config, workdir: str, *, stop_after: int | None = None,
          devices=None) -> dict[str, Any]:
    """Train (or resume) to `config.train.steps`; `stop_after` ends early after that many steps in
    this call (tests, time budgets). `config`: a `Config` (or a ConfigDict, converted). Returns a
    summary dict. The workdir is locked while it trains (`data.locks`: a second run on it fails
    naming this one; process 0 holds the lock of a multi-host run)."""
    config = as_config(config)
    with workdir_lock(config, workdir, "train"):
        return _train(config, workdir, stop_after, devices)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout_s: int = 300) -> None:
    """Join a multi-process run (`jax.distributed.initialize`) before any JAX computation: explicit
    (coordinator `host:port`, process count and index — e.g. several processes on one machine, or
    hosts without a cluster manager) or, with none given, detected from the cluster's environment.
    On CPU the processes' collectives go through gloo (JAX's default). Every process waits at most
    `timeout_s` for the others to join."""
    if jax.distributed.is_initialized():
        return
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s)
    logging.info("process %d of %d joined the run (coordinator %s); %d local, %d global devices",
                 jax.process_index(), jax.process_count(), coordinator, jax.local_device_count(), jax.device_count())


@contextlib.contextmanager
def workdir_lock(config: Config, workdir: str, command: str):
    """`locks.directory_lock` of the workdir, taken by the writing process only (after
    `jax.distributed.initialize()` for a multi-host run, which must precede any JAX call)."""
    if config.train.distributed:
        initialize_distributed()
    if not is_writer():
        os.makedirs(workdir, exist_ok=True)
        yield
        return
    with locks.directory_lock(workdir, command):
        yield


def _train(config: Config, workdir: str, stop_after: int | None, devices) -> dict[str, Any]:
    t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    trainer = Trainer(config, workdir, devices)
    system, mesh = trainer.system, trainer.mesh
    world = inputs.make_world(config, trainer.head) if config.data.source == "synthetic" else None
    source = inputs.train_source(config, world, system.needs_cameras())
    loader = inputs.train_loader(config, source, jax.process_count(), jax.process_index())
    # Synthetic ground truth is rendered on the device from the loader's view specs, right before
    # the step. (Rendering the next batch ahead, to overlap the step, measured slower on 2 CPU
    # cores: 0.87 against 0.72 s per step.)
    renderer = (ground_truth.GroundTruthRenderer(world, system.needs_cameras(), trainer.batch_sharding)
                if inputs.renders_on_device(source) else None)
    checkpoints = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep_checkpoints)
    abstract = ckpt_lib.abstract_like(trainer.abstract_state, trainer.state_shardings)
    restored = checkpoints.restore_latest(abstract, loader)
    if restored is None:
        state, start = trainer.init_state(), 0
    else:
        start, state, _ = restored
        say(f"resumed from {checkpoints.directory} at step {start}")
    if is_writer():
        write_atomic(os.path.join(workdir, "config.json"), json.dumps(config.to_dict(), indent=1))
    counts = parameter_counts(state.params)
    per_device = config.train.batch_size // sharding.batch_divisor(mesh)
    say(f"mesh {dict(mesh.shape)} over {len(mesh.devices.flat)} {jax.devices()[0].platform} devices "
         f"({jax.process_count()} process(es)); global batch {config.train.batch_size}, per device {per_device}, "
         f"{config.data.num_targets} targets per example")
    say(f"parameters: {counts['total']:,} (" + ", ".join(f"{k} {v:,}" for k, v in counts.items() if k != "total")
         + f"); {system.num_gaussians:,} Gaussians per avatar; lifter {config.model.lifter_type}; "
           f"{config.data.num_identities} training identities")
    writer = MetricWriter(workdir)
    total = config.train.steps
    end = total if stop_after is None else min(total, start + stop_after)
    t_log, s_log = time.time(), start
    metrics = None
    step = start
    heldout_views = (heldout_inputs(config, world, min(4, config.data.max_inputs), trainer.system.needs_cameras())[:2]
                     if config.train.image_every and world is not None else None)
    every = config.train.eval_every
    periodic = periodic_evaluator(trainer, config, world) if every and world is not None else None
    data_s = 0.0  # seconds spent waiting for data since the last log line
    for step in range(start, end):
        t_data = time.time()
        global_batch = sharding.global_batch(next(loader), mesh)
        if renderer is not None:
            global_batch = jax.block_until_ready(renderer(global_batch))
        data_s += time.time() - t_data
        state, metrics = trainer.step_global(state, global_batch, step)
        done = step + 1
        if done % config.train.log_every == 0 or done == end:
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            wall = max(time.time() - t_log, 1e-9)
            rate = (done - s_log) / wall
            host.update(steps_per_s=rate, nonfinite_skips=int(state.nonfinite_skips), wall_s=wall, data_s=data_s,
                        data_share=data_s / wall)
            data_s = 0.0
            writer.write(done, host)
            eta = (total - done) / max(rate, 1e-9)
            say(f"step {done}/{total}  loss {host['loss/total']:.4f}  psnr {host['psnr']:.2f}  "
                 f"{rate:.2f} steps/s  data {100 * host['data_share']:.0f}%  ETA {eta / 60:.1f} min  "
                 f"skipped {host['nonfinite_skips']}")
            t_log, s_log = time.time(), done
        if config.train.image_every and (done % config.train.image_every == 0 or done == end):
            # Computed by every process (global params), written by process 0; its own rows lead
            # the gathered global batch.
            rgb, _ = trainer.predict(state.params, global_batch)
            shown = host_rows(global_batch, ("input_images", "target_images"))
            if is_writer():
                media.save_image(os.path.join(workdir, "images", f"train_{done:07d}.png"),
                                 image_grid(shown, rgb[: config.train.batch_size // jax.process_count()]))
            if heldout_views is not None:
                images, annotations = heldout_views
                avatar = trainer.reconstruct(state.params, images, **annotations)
                frames = inference.turntable_frames(system, state.params, avatar, num_frames=8)
                if is_writer():
                    media.save_image(os.path.join(workdir, "images", f"heldout_turntable_{done:07d}.png"),
                                     media.image_grid([list(frames)]))
        if periodic is not None and (done % every == 0 or done == total):
            params = state.ema_params if state.ema_params is not None else state.params
            scores = periodic(params)
            writer.write(done, scores)
            say(f"step {done}: held-out self-reenactment PSNR {scores['heldout/psnr']:.2f} dB"
                + (f", identity gain {scores['heldout/identity_gain_psnr']:+.2f} dB"
                   if "heldout/identity_gain_psnr" in scores else "") + f" ({scores['heldout/seconds']:.0f} s)")
            t_log = time.time()  # evaluation time is not training time
        if done % config.train.checkpoint_every == 0 or done == end:
            checkpoints.save(done, state, loader, config.to_dict(), force=True)
    checkpoints.close()
    writer.close()
    return dict(trainer=trainer, state=state, start_step=start, end_step=end if end > start else start,
                seconds=time.time() - t_start, world=world,
                last_metrics=None if metrics is None else {k: float(v) for k, v in jax.device_get(metrics).items()})
