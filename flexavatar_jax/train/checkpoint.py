"""Checkpoints: model state + data-iterator state + resolved config in one orbax step folder.

Saving is asynchronous and keeps the newest `keep` steps. `restore_latest` restores onto whatever
shardings the abstract target carries (so a run can resume on a different mesh) and, when the
newest step is unreadable (an interrupted write, a corrupt file), says so and falls back to the
previous one. A save that fails (a full disk, a quota) surfaces — at that save, the next one or
`wait` — as `CheckpointWriteError` naming the directory and the newest complete step, which is
left intact (orbax writes a step into a temporary folder and renames it when complete), so the
same command resumes from it once the cause is fixed.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from flexavatar_jax.inference.params import CHECKPOINT_ITEMS


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the newest complete one is intact."""


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=CHECKPOINT_ITEMS)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, config: dict, force: bool = False) -> bool:
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 - orbax reports write failures as ValueError/OSError/...
            raise self._write_error(e) from e

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        steps = self.all_steps()
        intact = f"the newest complete checkpoint, step {steps[-1]}, is intact" if steps else "no checkpoint is complete"
        return CheckpointWriteError(f"writing a checkpoint in {self.directory} failed ({first[:400]}); {intact}: "
                                    "free space (or fix the cause) and re-run the same command to resume")

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None) -> tuple[Any, dict]:
        items = dict(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"], out["config"]

    def restore_latest(self, abstract_state: Any, data_iterator: Any | None) -> tuple[int, Any, dict] | None:
        """(step, state, config) of the newest readable checkpoint, or None when there is none."""
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                state, config = self.restore(step, abstract_state, data_iterator)
                return step, state, config
            except Exception as e:  # noqa: BLE001 - any unreadable step: report and try the previous one
                logging.warning("checkpoint step %d in %s is unreadable (%s: %s); falling back to the previous one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                print(f"WARNING: checkpoint step {step} in {self.directory} is unreadable "
                      f"({type(e).__name__}); falling back to the previous checkpoint", flush=True)
        if steps:
            raise ValueError(f"no readable checkpoint in {self.directory} (tried steps {steps})")
        return None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(e) from e

    def close(self) -> None:
        self.wait()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (restore places arrays there)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
