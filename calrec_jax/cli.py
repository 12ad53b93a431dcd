"""The absl entry point shared by the commands: flag errors as one line, --help with exit status 0."""
from __future__ import annotations

import re
import sys

HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def flag_error_line(error: Exception, argv: list[str]) -> str:
  """One line for a command-line error: the unknown config key and its suggestion, or the error's last line."""
  text = str(error).strip()
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # KeyError / AttributeError quote it
    text = text[1:-1]
  text = text.replace("\\n", "\n").replace("\\'", "'")
  hint = re.search(r"'([^']+)'\s*Did you mean \"([^\"]+)\" instead of", text)
  if hint:
    bad, good = hint.groups()
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and bad in a.split("=")[0]),
                f"--config...{bad}")
    return (f"{flag}: unknown config key {bad!r}; did you mean {good!r}? (configs/base.py lists every key with "
            "a comment)")
  if "Failed loading config file" in text:
    return f"cannot load the config file: {[line for line in text.splitlines() if line.strip()][-1].strip()}"
  if "Traceback (most recent call last)" in text:  # an error raised while loading the config file
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    return f"{text.split(':', 1)[0]}: {last}"
  lines = [line for line in text.splitlines() if line.strip()]
  return " ".join(lines[:2]) if lines else type(error).__name__


def print_help(module_name: str, full: bool = False) -> None:
  """The command's docstring and its own flags (`--helpfull`: every library's too); the same whether it runs as
  `python -m module` or as an installed console script (whose __main__ absl would describe instead)."""
  from absl import flags
  doc = (sys.modules[module_name].__doc__ or "").strip()
  own = flags.FLAGS.get_help() if full else flags.FLAGS.module_help(module_name)
  lines = [line for line in own.splitlines() if line.strip() != "(default: 'None')"]
  if not full:  # module_help's first line names the module (`__main__:` under python -m)
    lines = [line for line in lines if line.strip()][1:]
  own = "\n".join(lines)
  sys.stdout.write(f"{doc}\n\nflags:\n\n{own}\n")


def _flags_parser(module_name: str):
  def parse(argv: list[str]) -> list[str]:
    if any(a in HELP for a in argv[1:]):
      print_help(module_name, full="--helpfull" in argv)
      sys.exit(0)
    return _parse_flags(argv)
  return parse


def _parse_flags(argv: list[str]) -> list[str]:
  from absl import flags
  try:
    rest = flags.FLAGS(argv)
    for name in ("config",):  # ml_collections loads the file during parsing but raises on first use
      if name in flags.FLAGS and flags.FLAGS[name].value is not None:
        flags.FLAGS[name].value.keys()
    return rest
  except Exception as e:  # noqa: BLE001 - every flag/config error ends as one line, exit status 2
    sys.stderr.write(f"error: {flag_error_line(e, argv)}\n")
    sys.exit(2)


def run_absl(main) -> None:
  """`app.run(main)` with one-line flag errors (exit 2) and --help that exits 0, in a process whose malloc uses
  transparent huge pages where the machine offers them (`huge_pages`: the command restarts itself once)."""
  from absl import app

  from calrec_jax.huge_pages import reexec_with_huge_pages
  reexec_with_huge_pages()
  app.run(main, flags_parser=_flags_parser(main.__module__))
