"""Progress bars: live on a terminal, plain throttled lines in a log file."""
import io

from calrec_jax import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_bar_written_to_a_file_gives_plain_lines_at_most_once_per_interval(monkeypatch):
  monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
  monkeypatch.setattr(progress, "LOG_INTERVAL_S", 1e6)  # no redraw between the first and the last line
  log = io.StringIO()
  bar = progress.bar(total=5000, desc="train", unit="step", file=log)
  for _ in range(5000):
    bar.update(1)
  bar.set_postfix(loss="1.234", refresh=False)
  bar.close()
  lines = log.getvalue().splitlines()
  assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
  assert len(lines) == 2, lines  # the start and the end, each once
  assert lines[0].startswith("train:   0%") and "0/5000" in lines[0]
  assert lines[1].startswith("train: 100%") and "5000/5000" in lines[1] and "loss=1.234" in lines[1]


def test_a_closing_bar_that_does_not_stay_leaves_no_blank_lines(monkeypatch):
  monkeypatch.setattr(progress, "LOG_INTERVAL_S", 1e6)
  log = io.StringIO()
  with progress.bar(total=10, desc="read", file=log, leave=False) as bar:
    bar.update(10)
  assert all(line.strip() for line in log.getvalue().splitlines())


def test_a_bar_on_a_terminal_redraws_in_place():
  term = _Terminal()
  bar = progress.bar(total=3, desc="evaluate", file=term, mininterval=0)
  for _ in range(3):
    bar.update(1)
  bar.close()
  assert term.getvalue().count("\r") >= 3  # tqdm's live redraws, untouched
  assert "3/3" in term.getvalue()


def test_tqdm_mininterval_in_the_environment_sets_the_log_interval(monkeypatch):
  monkeypatch.setenv("TQDM_MININTERVAL", "1000000")
  log = io.StringIO()
  bar = progress.bar(total=100, desc="read", file=log, mininterval=2.0)
  assert bar.mininterval == 1e6 and bar.maxinterval == 1e6  # the environment wins; no 10 s monitor redraws
  bar.close()
