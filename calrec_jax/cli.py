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


def _parse_flags(argv: list[str]) -> list[str]:
  from absl import app, flags
  if any(a in HELP for a in argv[1:]):
    app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
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
  app.run(main, flags_parser=_parse_flags)
