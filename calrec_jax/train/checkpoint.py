"""orbax checkpoints of the train state and the data-iterator position; params-only export and import."""
from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

from calrec_jax.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
  """Periodic (async) saves with keep-N; restores the newest readable checkpoint, falling back to older ones."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data_iter"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def save(self, step: int, state: Any, iterator_state: dict, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           data_iter=ocp.args.JsonSave(iterator_state)),
                             force=force)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, iterator state) of the newest checkpoint that restores; None when there is none.

    `abstract_state`: a tree of jax.ShapeDtypeStruct with shardings; arrays are restored straight into them.
    """
    for step in reversed(self.steps()):
      try:
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data_iter=ocp.args.JsonRestore()))
        return step, got["state"], dict(got["data_iter"])
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
        log.error("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                  self.directory, step, type(e).__name__, str(e)[:300])
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def save_params(path: str, params: Any) -> None:
  """Params-only checkpoint (export for evaluation, stage-2 init, converted pretrained weights)."""
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(path), params, force=True)
  ckptr.wait_until_finished()


def load_params(path: str, abstract_params: Any | None = None) -> Any:
  """Read a params-only checkpoint; with an abstract tree (shapes + shardings) it restores into them."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no params checkpoint here")
  ckptr = ocp.StandardCheckpointer()
  try:
    if abstract_params is None:
      return ckptr.restore(path)
    return ckptr.restore(path, abstract_params)
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{path}: cannot restore params ({type(e).__name__}: {str(e)[:400]}); the checkpoint "
                          "is corrupt or was written for a different model config") from None


def params_from_workdir(workdir: str) -> Any:
  """Params of a training workdir (its export, else its newest checkpoint), or of a params checkpoint itself."""
  export = os.path.join(workdir, "export", "params")
  if os.path.isdir(export):
    return load_params(export)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    return load_params(workdir)
  mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data_iter"))
  for step in reversed(sorted(mgr.all_steps())):
    try:
      state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
      return state["params"]
    except Exception as e:  # noqa: BLE001
      log.error("checkpoint %s/%d unreadable (%s); trying the previous one", ckpt_dir, step, e)
  raise CheckpointError(f"{ckpt_dir}: no readable checkpoint")

