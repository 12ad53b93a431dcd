"""Error types with messages that say where the problem is and what to do."""


def run_cli(main) -> None:
  """Run a command's main(); a CalrecError ends it with its message and exit status 1, not a traceback."""
  import sys
  try:
    main()
  except CalrecError as e:
    sys.exit(f"error: {e}")


class CalrecError(Exception):
  """Base class for every error this package raises on purpose."""


class DataError(CalrecError):
  """Malformed or unusable input data; the message names the file and line."""

  def __init__(self, message: str, path: str | None = None, line: int | None = None):
    where = ""
    if path is not None:
      where = f"{path}:{line}: " if line is not None else f"{path}: "
    super().__init__(where + message)
    self.path, self.line = path, line


class ConfigError(CalrecError):
  """A config key is missing, unknown, or has a bad value; the message names the key."""


class CheckpointError(CalrecError):
  """A checkpoint is missing, corrupt, or does not match the config."""


class WeightImportError(CalrecError):
  """A pretrained checkpoint does not match the model config (missing/unexpected tensor, bad shape)."""


class Interrupted(CalrecError):
  """A run stopped on request (SIGTERM / SIGINT) after saving what it needs to continue."""
