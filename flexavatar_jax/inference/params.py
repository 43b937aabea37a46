"""The system and its parameters, for using a model (not training it).

`load(config, workdir)` builds the `FlexAvatar` of the config and reads the newest readable
checkpoint's **parameters only** (the EMA parameters when the run kept them): orbax restores the
`params` (or `ema_params`) subtree of the saved train state, so optimizer moments are never read
and no mesh, optimizer or train step is built. The checkpoint layout (written by
`train.checkpoint.Checkpointer`) is defined here, the lower layer, so both sides agree on it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from flexavatar_jax.config import Config, ModelConfig, as_config, to_dict
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


def _manager(directory: str) -> ocp.CheckpointManager:
    # Every item's handler is named, so reading one item's metadata does not warn about the others.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "config": ocp.JsonCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler()}
    return ocp.CheckpointManager(directory, item_handlers=handlers, options=ocp.CheckpointManagerOptions(create=False))


def load_params(system: FlexAvatar, workdir: str | os.PathLike, *, ema: bool = False) -> tuple[int, Any]:
    """(step, params) of the newest readable checkpoint under `workdir` (its `ema_params` when
    `ema`), placed on the default device. The arrays' shapes come from the checkpoint's metadata
    (nothing is traced); when the run's recorded model config differs from `system`'s in a field
    that shapes parameters, ValueError names the fields. An unreadable newest step (an
    interrupted write) is reported and the previous one is tried. FileNotFoundError when there is
    no checkpoint."""
    directory = checkpoint_dir(workdir)
    missing = FileNotFoundError(f"no checkpoint under {directory}: train first (flexavatar-jax train)")
    if not os.path.isdir(directory):
        raise missing
    key = "ema_params" if ema else "params"
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    manager = _manager(directory)
    try:
        steps = sorted(manager.all_steps())
        for step in reversed(steps):
            try:
                tree = manager.item_metadata(step)["state"].tree
                if tree.get(key) is None:
                    raise ValueError(f"the saved train state has no {key!r}")
                target = {key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree[key])}
                restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
                # partial_restore: only this subtree of the saved TrainState is read from disk.
                restored = manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
                    config=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any unreadable step: report and try the previous one
                logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one", step,
                                directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                continue
            check_trained_config(system.cfg, restored["config"].get("model", {}), directory)
            return step, restored["state"][key]
        if steps:
            raise ValueError(f"no readable checkpoint in {directory} (tried steps {steps})")
        raise missing
    finally:
        manager.close()


# Model-config fields that do not shape parameters: a run may be used with other values of these.
_FREE_FIELDS = ("compute_dtype", "encoder.pretrained", "init_opacity", "init_scale", "offset_scale", "driving_scale",
                "subtract_neutral")


class _Missing:
    def __repr__(self) -> str:
        return "missing"


MISSING = _Missing()  # a field one of the two configs does not have


def model_config_differences(model: ModelConfig, recorded: dict) -> dict[str, tuple[Any, Any]]:
    """`{dotted field: (recorded value, value in model)}` for every field of the model config
    whose value differs from a `recorded` one (read back from JSON: a checkpoint's or an avatar
    file's); a field only one side has reads as `MISSING`. `dense_regions` compares as a whole.
    A field the record lacks and `model` leaves at its default is no difference: it was added
    after the record was written, and a new field's default keeps the old behaviour."""
    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict) and k != "dense_regions":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    # Through JSON, so tuples compare equal to the lists read back.
    as_json = lambda m: flat(json.loads(json.dumps(to_dict(m))))  # noqa: E731
    have, saved, default = as_json(model), flat(recorded), as_json(ModelConfig())
    return {k: (saved.get(k, MISSING), have.get(k, MISSING)) for k in sorted(set(have) | set(saved))
            if saved.get(k, MISSING) != have.get(k, MISSING)
            and not (k not in saved and k in default and have[k] == default[k])}


def check_trained_config(model: ModelConfig, recorded: dict, where: str) -> None:
    """ValueError naming every model field (outside `_FREE_FIELDS`) whose value differs between
    `model` and the `recorded` model config of a checkpoint."""
    differ = [f"model.{k}: trained with {saved!r}, given {have!r}"
              for k, (saved, have) in model_config_differences(model, recorded).items() if k not in _FREE_FIELDS]
    if differ:
        raise ValueError(f"{where} holds a model of another configuration: " + "; ".join(differ)
                         + " (pass the config the run was trained with)")


def load(config: Config | Any, workdir: str | os.PathLike) -> tuple[FlexAvatar, Any]:
    """(system, trained params) of a training run: the config's system and the newest checkpoint's
    parameters (EMA ones when `train.ema_decay > 0`). `config`: a `Config` or a ConfigDict."""
    config = as_config(config)
    system = make_system(config.model, config.head)
    _, params = load_params(system, workdir, ema=config.train.ema_decay > 0)
    return system, params


def load_run(workdir: str | os.PathLike) -> tuple[Config, FlexAvatar, Any]:
    """(config, system, trained params) of a training run from its own record: the
    `workdir/config.json` that `train` writes, then `load`. For probes and analyses of finished
    runs, where the config is the run's, not the caller's."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training run directory?")
    with open(path) as f:
        config = Config.from_dict(json.load(f))
    system, params = load(config, workdir)
    return config, system, params
