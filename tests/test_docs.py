"""The commands written in README.md and docs/ run as written: each module, script and config exists, every flag
is one the command defines (its --help lists it), every --config.key names a key of that config."""
import functools
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|\s|`)((?:[\w./]*python3? -m calrec_jax[\w.]*|[\w./]*python3? benchmarks/\w+\.py|launch/\w+\.sh)"
                     r"(?:[^`\n]*))")


def documented_commands() -> list[tuple[str, str]]:
  """(where, command) of every command in the docs: code lines (continuations joined) and inline code."""
  found = []
  for path in DOCS:
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
      start, line = i, lines[i]
      while line.rstrip().endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
        i += 1
        line = line.rstrip()[:-1] + " " + lines[i].strip()
      for part in re.split(r"&&|;|\|", line):  # one command per part of a `a && b` line
        for m in COMMAND.finditer(part):
          text = m.group(1).split("#")[0].strip()
          if "pytest" not in text:
            found.append((f"{path.relative_to(ROOT)}:{start + 1}", text))
      i += 1
  return found


COMMANDS = documented_commands()


@functools.lru_cache(maxsize=None)
def help_text(*program: str) -> str:
  out = subprocess.run([*program, "--help"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, (program, out.stderr[-2000:])
  return out.stdout + out.stderr


@functools.lru_cache(maxsize=None)
def load_config(spec: str):
  path, _, arg = spec.partition(":")
  assert (ROOT / path).is_file(), f"--config={spec}: no such file"
  module_spec = importlib.util.spec_from_file_location(f"doc_config_{abs(hash(path))}", ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def test_the_docs_hold_the_commands_a_user_runs():
  modules = {re.search(r"-m (calrec_jax[\w.]*)", c).group(1) for _, c in COMMANDS if " -m calrec_jax" in c}
  assert {"calrec_jax.main", "calrec_jax.evaluate", "calrec_jax.compare", "calrec_jax.recommend",
          "calrec_jax.model.convert", "calrec_jax.data.prepare", "calrec_jax.plan"} <= modules, modules


@pytest.mark.parametrize("where,command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_documented_command_names_what_exists(where, command):
  tokens = command.split()
  if tokens[0].startswith("launch/"):
    assert (ROOT / tokens[0]).is_file(), f"{where}: {tokens[0]} does not exist"
    help_text("bash", tokens[0])  # every launch script answers --help
    flags = [t for t in tokens[1:] if t.startswith("--") and not t.startswith("--config")]
    assert all(f.split("=")[0] in help_text("bash", tokens[0]) for f in flags), (where, flags)
    for t in tokens[1:]:
      if t.startswith("configs/"):  # a config given by position must load and hold a pipeline section
        assert has_key(load_config(t), "pipeline.stage1_steps"), (where, t)
    return
  if " -m " in command:
    program = (sys.executable, "-m", tokens[tokens.index("-m") + 1])
  else:
    script = next(t for t in tokens if t.startswith("benchmarks/"))
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    program = (sys.executable, script)
  config = None
  for token in (t for t in tokens if t.startswith("--")):
    name, _, value = token.partition("=")
    if name == "--config" and value.split(":")[0].endswith(".py"):
      config = load_config(value)
    elif name.startswith("--config."):
      assert config is not None and has_key(config, name[len("--config."):]), \
          f"{where}: {name} is not a key of the command's --config"
    else:
      bare = name.removeprefix("--no") if name.startswith("--no") and name not in help_text(*program) else name
      assert re.search(rf"{re.escape(bare)}\b", help_text(*program)), f"{where}: {program[-1]} has no flag {name}"


def _anchor(heading: str) -> str:
  """GitHub's anchor of a markdown heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def test_every_link_between_the_docs_reaches_a_file_and_heading():
  broken = []
  for path in DOCS:
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
      if re.match(r"[a-z]+://", target):
        continue
      file, _, anchor = target.partition("#")
      dest = (path.parent / file).resolve() if file else path
      if not dest.exists():
        broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
      elif anchor and dest.suffix == ".md":
        headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
        if anchor not in headings:
          broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
  assert not broken, broken
