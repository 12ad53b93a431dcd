"""Output folders checked before long work starts: a run never fails at its end because it cannot write."""
from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator

from calrec_jax.errors import CalrecError


def require_writable_dir(path: str, what: str) -> str:
  """Create `path` if needed and prove it takes a file; CalrecError naming `what` (a flag or key) otherwise."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise CalrecError(f"{what}={path}: is an existing file, not a folder; give a folder path")
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test_{os.getpid()}")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise CalrecError(f"{what}={path}: cannot be written ({e.strerror or e}); choose a folder you can write to") from None
  return path


def write_atomically(path: str, data: str | bytes) -> None:
  """Writes `data` (text as UTF-8, or bytes) to path.tmp, then renames it over `path`: a reader never sees a
  half-written file, and a failure leaves the previous file as it was."""
  with open_atomically(path) as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def open_atomically(path: str) -> Iterator[BinaryIO]:
  """A binary file to write `path` piece by piece: written as path.tmp and renamed over `path` when the block
  ends without an error (removed if it raises), so a reader never sees a half-written file."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f:
      yield f
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  os.replace(tmp, path)
