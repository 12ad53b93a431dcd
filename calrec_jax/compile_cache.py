"""JAX's persistent compilation cache for the commands: a run that compiles what an earlier one compiled loads it.

A resumed run, a second stage on the same shapes, an evaluation of another checkpoint and a rerun of a config all
compile the same train step, validation and generation functions again; with the cache they read XLA's
executable from disk instead (the scanned Gemma-3-270M train step: 9.1 s to compile cold, 2.6 s with the cache,
on this project's 2-core CPU; README). JAX keys each entry by the program, the compile options and flags, the
jax/jaxlib version and the device kind, so one folder serves every config and machine type that shares it.

`config.compile_cache`: `dir` is "auto" ($CALREC_COMPILE_CACHE, else $XDG_CACHE_HOME/calrec_jax/xla, else
~/.cache/calrec_jax/xla), a path, a URL that JAX's cache supports (such as gs://bucket/xla, shared by a pod's
hosts; JAX writes from process 0 only), or "" (off); only programs that took at least `min_compile_secs` to
compile are written.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ENV = "CALREC_COMPILE_CACHE"


def cache_dir(setting: str) -> str | None:
  """The folder `setting` ('auto', a path, a URL or '') names; None when the cache is off."""
  if not setting:
    return None
  if "://" in setting:  # e.g. gs://bucket/xla, which JAX writes through etils.epath
    return setting
  if setting != "auto":
    return os.path.abspath(os.path.expanduser(setting))
  if os.environ.get(ENV) is not None:
    return os.path.abspath(os.path.expanduser(os.environ[ENV])) if os.environ[ENV] else None
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "calrec_jax", "xla")


def enable_compile_cache(section) -> str | None:
  """Points JAX's persistent compilation cache at `section.dir` (see the module doc); call before the first
  compile. Returns the folder, or None when off. A folder that cannot be created turns the cache off with a
  warning: a cache never stops a run."""
  import jax
  folder = cache_dir(section.dir)
  if folder is None:
    return None
  try:
    if "://" not in folder:
      os.makedirs(folder, exist_ok=True)
  except OSError as e:
    log.warning("compile cache off: cannot create %s (%s); set compile_cache.dir to a writable folder", folder, e)
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(section.min_compile_secs))
  log.info("compile cache: %s", folder)
  return folder
