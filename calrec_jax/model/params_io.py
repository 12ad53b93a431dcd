"""Params-only orbax checkpoints: converted pretrained weights, training exports, stage-2 initialisation."""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from calrec_jax.errors import CheckpointError


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
