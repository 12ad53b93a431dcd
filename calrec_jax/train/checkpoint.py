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
    failures = []
    for step in reversed(self.steps()):
      try:
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data_iter=ocp.args.JsonRestore()))
        return step, got["state"], dict(got["data_iter"])
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
        failures.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
        log.error("checkpoint %s/%d is unreadable (%s); trying the previous one", self.directory, step, failures[-1])
    if failures:  # never silently start over on top of checkpoints that exist
      raise CheckpointError(f"{self.directory}: no checkpoint restores into this config ({'; '.join(failures)}). "
                            "They are corrupt or were written with another model/optimizer config: use that config, "
                            "or another --workdir")
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


def check_params(params: Any, abstract: Any, source: str) -> None:
  """Raise CheckpointError naming the first parameter whose path or shape differs from the model's."""
  import jax
  import numpy as np
  got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
  if missing or extra:
    raise CheckpointError(f"{source}: parameters do not match the model config (missing {missing[:3]}, "
                          f"unexpected {extra[:3]}); use the model preset / pretrained weights it was trained with")
  for k, shape in want.items():
    if tuple(got[k]) != shape:
      raise CheckpointError(f"{source}: parameter {k} has shape {tuple(got[k])} but the model config needs {shape}; "
                            "use the model preset / pretrained weights it was trained with")


def params_from_workdir(workdir: str, step: int | None = None) -> Any:
  """Params of a training workdir: checkpoint `step` if given, else its export, else its newest readable
  checkpoint; or of a params checkpoint directory itself."""
  export = os.path.join(workdir, "export", "params")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if step is None and os.path.isdir(export):
    return load_params(export)
  if not os.path.isdir(ckpt_dir):
    if step is not None:
      raise CheckpointError(f"{workdir}: no checkpoints/ folder, so there is no checkpoint step {step}")
    return load_params(workdir)
  mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data_iter"))
  steps = sorted(mgr.all_steps())
  if step is not None and step not in steps:
    raise CheckpointError(f"{ckpt_dir}: no checkpoint at step {step} (have {steps})")
  for s in ([step] if step is not None else reversed(steps)):
    try:
      return mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
    except Exception as e:  # noqa: BLE001
      if step is not None:
        raise CheckpointError(f"{ckpt_dir}/{s}: unreadable ({type(e).__name__}: {str(e)[:300]})") from None
      log.error("checkpoint %s/%d unreadable (%s); trying the previous one", ckpt_dir, s, e)
  raise CheckpointError(f"{ckpt_dir}: no readable checkpoint")
