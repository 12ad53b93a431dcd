"""The persistent compilation cache of the commands: where it lives, that a second process loads what the first
compiled (same result, a cache hit, no new compile), and that a damaged entry is compiled again."""
import json
import os
import subprocess
import sys

import ml_collections

from calrec_jax import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp, ml_collections
from jax import monitoring
from calrec_jax.compile_cache import enable_compile_cache
events = {}
monitoring.register_event_listener(lambda name, **kw: events.__setitem__(name, events.get(name, 0) + 1))
folder = enable_compile_cache(ml_collections.ConfigDict({"dir": sys.argv[1], "min_compile_secs": 0.0}))

@jax.jit
def f(x):  # [64, 64] -> [64]
  for _ in range(4):
    x = jnp.tanh(x @ x.T)
  return x.sum(-1)

out = f(jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) / 4096)
print(json.dumps({"folder": folder, "out": [float(v) for v in out],
                  "hits": events.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": events.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def _run(folder):
  env = dict(os.environ, PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, "-c", PROGRAM, folder], capture_output=True, text=True, env=env,
                        check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_first_ones_executable(tmp_path):
  folder = str(tmp_path / "xla")
  first = _run(folder)
  assert first["folder"] == folder and first["misses"] >= 1 and first["hits"] == 0
  entries = sorted(os.listdir(folder))
  assert entries, "the first run wrote nothing"
  second = _run(folder)
  assert second["hits"] >= 1 and second["misses"] == 0
  assert second["out"] == first["out"]
  assert sorted(os.listdir(folder)) == entries


def test_damaged_entries_are_compiled_again(tmp_path):
  folder = str(tmp_path / "xla")
  first = _run(folder)
  for name in os.listdir(folder):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        size = len(f.read())
        f.seek(0)
        f.write(b"\x00garbage" * max(1, size // 9))
  again = _run(folder)  # the damaged entry is reported by JAX as a warning, then the program is compiled
  assert again["misses"] >= 1 and again["out"] == first["out"]


def test_cache_folder_resolution(tmp_path, monkeypatch):
  assert compile_cache.cache_dir("") is None
  assert compile_cache.cache_dir(str(tmp_path / "x")) == str(tmp_path / "x")
  assert compile_cache.cache_dir("gs://bucket/xla") == "gs://bucket/xla"
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.cache_dir("auto") == str(tmp_path / "env")
  monkeypatch.setenv(compile_cache.ENV, "")
  assert compile_cache.cache_dir("auto") is None  # the variable set but empty: off
  monkeypatch.delenv(compile_cache.ENV)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.cache_dir("auto") == str(tmp_path / "xdg" / "calrec_jax" / "xla")


def test_unwritable_folder_turns_the_cache_off(tmp_path, caplog):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  section = ml_collections.ConfigDict({"dir": str(blocker / "xla"), "min_compile_secs": 1.0})
  with caplog.at_level("WARNING"):
    assert compile_cache.enable_compile_cache(section) is None
  assert "compile cache off" in caplog.text and "compile_cache.dir" in caplog.text
