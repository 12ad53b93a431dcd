"""orbax checkpoints of the train state and the data-iterator position; params-only export and import."""
from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

from calrec_jax.errors import CheckpointError
from calrec_jax.model import host_collectives
from calrec_jax.model.layer_stack import unstack_layers
from calrec_jax.model.params_io import load_params, save_params  # noqa: F401  (re-exported)
from calrec_jax.train.resources import release_host_memory

log = logging.getLogger(__name__)


class Checkpointer:
  """Periodic (async) saves with keep-N; restores the newest readable checkpoint, falling back to older ones."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True, save_concurrent_gb: int = 96):
    """save_concurrent_gb: how much of the state a save copies to host memory and writes at once."""
    self.directory = os.path.abspath(directory)
    self.async_save = async_save
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data_iter"),
        item_handlers={"state": ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_gb),
                       "data_iter": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def save(self, step: int, state: Any, iterator_state: dict, force: bool = False) -> bool:
    saved = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data_iter=ocp.args.JsonSave(iterator_state)),
                              force=force)
    if saved and not self.async_save:  # the save's host copy of the state is free again
      release_host_memory()
    return saved

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
    """(step, state, iterator state) of the newest checkpoint that restores; None when there is none.

    `abstract_state`: a tree of jax.ShapeDtypeStruct with shardings; arrays are restored straight into them.
    Newer checkpoints that fail to restore while an older one restores are damaged (a kill during a save, a
    truncated file): each is reported and moved aside to `<step>.damaged` (never deleted), so the run saves that
    step again and keep-N rotation only counts good checkpoints. When none restores, nothing is moved: the
    likelier cause is a config that differs from the one the checkpoints were written with.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data_iter=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any failure means this checkpoint is unusable
        failures.append((step, f"step {step}: {type(e).__name__}: {str(e)[:200]}"))
        log.error("checkpoint %s/%d is unreadable (%s); trying the previous one", self.directory, step,
                  failures[-1][1])
        continue
      if failures:
        self._move_aside([s for s, _ in failures])
      return step, got["state"], dict(got["data_iter"])
    if failures:  # never silently start over on top of checkpoints that exist
      raise CheckpointError(f"{self.directory}: no checkpoint restores into this config "
                            f"({'; '.join(m for _, m in failures)}). They are corrupt or were written with another "
                            "model/optimizer config: use that config, or another --workdir")
    return None

  def _move_aside(self, steps: list[int]) -> None:
    """Rename damaged step folders to `<step>.damaged[-N]` (process 0) and make every process forget them."""
    import jax
    if jax.process_index() == 0:
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if not os.path.exists(src):
          continue
        dst, k = src + ".damaged", 1
        while os.path.exists(dst):
          k += 1
          dst = f"{src}.damaged-{k}"
        os.rename(src, dst)
        log.error("moved the damaged checkpoint %s aside to %s (kept for inspection; delete it when done)", src, dst)
    host_collectives.sync("damaged checkpoints moved aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()
    release_host_memory()

  def close(self) -> None:
    self.wait()
    self.manager.close()


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
  """Params of a training workdir, per layer: checkpoint `step` if given, else its export, else its newest
  readable checkpoint; or of a params checkpoint directory itself. (A scanned model's checkpoints hold its
  blocks stacked; they come back unstacked.)"""
  export = os.path.join(workdir, "export", "params")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if step is None and os.path.isdir(export):
    return load_params(export)
  if not os.path.isdir(ckpt_dir):
    if step is not None:
      raise CheckpointError(f"{workdir}: no checkpoints/ folder, so there is no checkpoint step {step}")
    if not any(os.path.exists(os.path.join(workdir, m)) for m in ("_CHECKPOINT_METADATA", "_METADATA")):
      raise CheckpointError(f"{workdir}: no export/ or checkpoints/ here (nothing trained in this workdir yet); "
                            "train first with python -m calrec_jax.main, or give the workdir of a trained run")
    return load_params(workdir)
  mgr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "data_iter"))
  steps = sorted(mgr.all_steps())
  if step is not None and step not in steps:
    raise CheckpointError(f"{ckpt_dir}: no checkpoint at step {step} (have {steps})")
  for s in ([step] if step is not None else reversed(steps)):
    try:
      restored = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
      return unstack_layers(restored["state"]["params"])
    except Exception as e:  # noqa: BLE001
      if step is not None:
        raise CheckpointError(f"{ckpt_dir}/{s}: unreadable ({type(e).__name__}: {str(e)[:300]})") from None
      log.error("checkpoint %s/%d unreadable (%s); trying the previous one", ckpt_dir, s, e)
  raise CheckpointError(f"{ckpt_dir}: no readable checkpoint")
