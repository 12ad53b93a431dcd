"""Progress bars that read well both on a terminal and in a log file.

On a terminal: tqdm's live bar (count, rate and ETA). When stderr goes to a file (nohup, a batch scheduler, a
pipe), tqdm's carriage-return redraws would pile up into one line of megabytes; there each update is written as a
plain line of its own, at most once a minute (tqdm's own `TQDM_MININTERVAL` environment variable sets another
interval, in seconds, for both cases).
"""
from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 60.0  # seconds between two lines of a bar written to a file


class _Lines:
  """A stream for tqdm that turns each redraw ('\\r' + text + padding) into one plain line."""

  def __init__(self, stream: TextIO):
    self._stream = stream
    self._last = ""

  def write(self, text: str) -> None:
    line = text.replace("\r", "").replace("\x1b[A", "").strip()
    if line and line != self._last:  # blank: a closing bar's clearing write; equal: its final redraw
      self._stream.write(line + "\n")
      self._last = line

  def flush(self) -> None:
    self._stream.flush()


def _is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False


def bar(**kwargs) -> tqdm:
  """tqdm(**kwargs) on stderr (or kwargs['file']): live on a terminal, one line per interval in a log file."""
  stream = kwargs.pop("file", None) or sys.stderr
  kwargs.setdefault("dynamic_ncols", True)
  if _is_terminal(stream):
    return tqdm(file=stream, **kwargs)
  interval = (float(os.environ["TQDM_MININTERVAL"]) if "TQDM_MININTERVAL" in os.environ
              else max(float(kwargs.get("mininterval", 0.1)), LOG_INTERVAL_S))
  # maxinterval too: tqdm's monitor thread would otherwise redraw every 10 s
  kwargs.update(mininterval=interval, maxinterval=max(float(kwargs.get("maxinterval", 10.0)), interval),
                dynamic_ncols=False)
  return tqdm(file=_Lines(stream), **kwargs)
