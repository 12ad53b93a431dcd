"""Run `calrec_jax.main` and SIGKILL the process at a named point of a pipeline:

  python tests/kill_point_worker.py <point> <calrec_jax.main flags...>

Points (each one later in a pipeline than the one before):
  stage1_final_checkpoint  stage 1's last checkpoint is on disk; its final validation and export have not run
  stage1_export            stage 1's exported params are written, its model_config.json (the completion mark) not
  stage2_step2             stage 2 has logged step 2, before its first checkpoint
  stage2_export            stage 2's exported params are written, its model_config.json not
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calrec_jax.model import params_io  # noqa: E402
from calrec_jax.train import checkpoint, metrics_writer  # noqa: E402


def die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def kill_after_final_checkpoint(stage: str) -> None:
  save = checkpoint.Checkpointer.save

  def patched(self, step, state, iterator_state, force=False):
    saved = save(self, step, state, iterator_state, force)
    if force and f"{os.sep}{stage}{os.sep}" in self.directory + os.sep:  # the forced save is the last step's
      self.manager.wait_until_finished()
      die()
    return saved
  checkpoint.Checkpointer.save = patched


def kill_during_export(stage: str) -> None:
  save = params_io.save_params

  def patched(path, params):
    save(path, params)
    if os.path.join(stage, "export") in path:
      die()
  params_io.save_params = patched


def kill_after_logged_step(stage: str, step: int) -> None:
  write = metrics_writer.MetricsWriter.write

  def patched(self, at, metrics):
    write(self, at, metrics)
    if at == step and "train/loss" in metrics and os.path.join(stage, "metrics.jsonl") in self.path:
      die()
  metrics_writer.MetricsWriter.write = patched


POINTS = {
    "stage1_final_checkpoint": lambda: kill_after_final_checkpoint("stage1"),
    "stage1_export": lambda: kill_during_export("stage1"),
    "stage2_step2": lambda: kill_after_logged_step("stage2", 2),
    "stage2_export": lambda: kill_during_export("stage2"),
}

if __name__ == "__main__":
  point = sys.argv.pop(1)
  POINTS[point]()
  from calrec_jax import main
  main.run()
