"""The system and its parameters, for using a model (not training it).

`load(config, workdir)` builds the `FlexAvatar` of the config and reads the newest readable
checkpoint's **parameters only** (the EMA parameters when the run kept them): orbax restores the
`params` (or `ema_params`) subtree of the saved train state, so optimizer moments are never read
and no mesh, optimizer or train step is built. The checkpoint layout (written by
`train.checkpoint.Checkpointer`) is defined here, the lower layer, so both sides agree on it.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from absl import logging

from flexavatar_jax.config import Config, ModelConfig, as_config
from flexavatar_jax.head import HeadModel, load_head
from flexavatar_jax.models.avatar import FlexAvatar
from flexavatar_jax.models.encoder import load_encoder_npz

CHECKPOINT_DIR = "checkpoints"  # under a training workdir
CHECKPOINT_ITEMS = ("state", "data", "config")  # orbax item names of one checkpoint step


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def make_system(model: ModelConfig, head: HeadModel | str = "") -> FlexAvatar:
    """The static system of a model config (`head`: a HeadModel or a `load_head` spec)."""
    return FlexAvatar(model, load_head(head) if isinstance(head, str) else head)


def initial_params(system: FlexAvatar, seed: int) -> Any:
    """Untrained parameters (plain pytree) as training starts from them: `system.init` with
    `jax.random.key(seed)`, then the converted pretrained encoder when `model.encoder.pretrained`
    names one."""
    params = nn.meta.unbox(system.init(jax.random.key(seed)))
    pretrained = system.cfg.encoder.pretrained
    if pretrained:
        params = dict(params, encoder=load_encoder_npz(pretrained, params["encoder"]))
    return params


def load_params(system: FlexAvatar, workdir: str | os.PathLike, *, ema: bool = False) -> tuple[int, Any]:
    """(step, params) of the newest readable checkpoint under `workdir` (its `ema_params` when
    `ema`), placed on the default device. An unreadable newest step (an interrupted write) is
    reported and the previous one is tried. FileNotFoundError when there is no checkpoint."""
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint under {directory}: train first (flexavatar-jax train)")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            nn.meta.unbox(jax.eval_shape(system.init, jax.random.key(0))))
    key = "ema_params" if ema else "params"
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {key: abstract}
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    manager = ocp.CheckpointManager(directory, item_names=CHECKPOINT_ITEMS,
                                    options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = sorted(manager.all_steps())
        for step in reversed(steps):
            try:
                # partial_restore: only this subtree of the saved TrainState is read from disk.
                restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                    target, restore_args=restore_args, partial_restore=True)))
                return step, restored["state"][key]
            except Exception as e:  # noqa: BLE001 - any unreadable step: report and try the previous one
                logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one", step,
                                directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        if steps:
            raise ValueError(f"no readable checkpoint in {directory} (tried steps {steps})")
        raise FileNotFoundError(f"no checkpoint under {directory}: train first (flexavatar-jax train)")
    finally:
        manager.close()


def load(config: Config | Any, workdir: str | os.PathLike) -> tuple[FlexAvatar, Any]:
    """(system, trained params) of a training run: the config's system and the newest checkpoint's
    parameters (EMA ones when `train.ema_decay > 0`). `config`: a `Config` or a ConfigDict."""
    config = as_config(config)
    system = make_system(config.model, config.head)
    _, params = load_params(system, workdir, ema=config.train.ema_decay > 0)
    return system, params
