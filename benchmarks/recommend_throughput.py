"""Users/s of `python -m calrec_jax.recommend` against `python -m calrec_jax.evaluate` (what a user would otherwise
run to get rankings out of a trained model), on the same test users of a trained workdir, each end to end as a
user runs it (process start, model load, item embeddings, compilation, ranking, output), and the ranking alone
through the Python API (`Recommender.recommend`, after one warm-up batch).

  python benchmarks/recommend_throughput.py --workdir=workdirs/compare_scientific_fused/calrec_two_stage/stage2 \\
      --users=1000 --rankers=dense,bm25,fused

--workdir is a trained run with a fused evaluation (its eval/metrics.json holds the fused weights). The evaluate
command is given the same users (eval.max_users with the run's seed picks the same fixed subset), dense
retrieval and no beams or fusion, so that its work matches `recommend --ranker=dense`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def test_histories(workdir: str, users: int) -> list[dict]:
  """The evaluation's fixed test users of the workdir's category, as recommend input lines (item ids)."""
  import ml_collections
  from calrec_jax.compare.methods import evaluation_data
  from calrec_jax.model.run_parts import load_run_config
  config = ml_collections.ConfigDict(load_run_config(workdir))
  with config.unlocked():
    config.eval.max_users, config.eval.split = users, "test"
  cats, cat, rows = evaluation_data(config)
  data = cats[cat]
  return [{"user": data.user_ids[u], "history": [data.catalog.item_ids[i] for i in h]} for u, h, _ in rows]


def timed(cmd: list[str]) -> float:
  t0 = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if out.returncode:
    sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  return time.perf_counter() - t0


def api_users_per_s(workdir: str, lines: list[dict], ranker: str, batch: int) -> tuple[float, float]:
  """(seconds to load, users/s of ranking) through the Python API; one untimed batch first (compilation)."""
  from calrec_jax.eval.recommender import Recommender
  t0 = time.perf_counter()
  rec = Recommender.load(workdir)
  rec.item_embeddings()
  load_s = time.perf_counter() - t0
  histories = [x["history"] for x in lines]
  rec.recommend(histories[:batch], 10, ranker)
  t0 = time.perf_counter()
  for s in range(0, len(histories), batch):
    rec.recommend(histories[s:s + batch], 10, ranker)
  return load_s, len(histories) / (time.perf_counter() - t0)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", required=True, help="a trained run folder (with eval/metrics.json for 'fused')")
  ap.add_argument("--config", default="configs/scientific.py", help="the config file evaluate is given")
  ap.add_argument("--users", type=int, default=1000)
  ap.add_argument("--rankers", default="dense,bm25,fused", help="comma-separated, from dense, bm25, fused, beam")
  ap.add_argument("--batch_users", type=int, default=256)
  ap.add_argument("--json", default="", help="also write the rows here")
  args = ap.parse_args()
  import jax
  lines = test_histories(args.workdir, args.users)
  n = len(lines)
  tmp = tempfile.mkdtemp(prefix="recommend_bench_")
  path = os.path.join(tmp, "histories.jsonl")
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(x) + "\n" for x in lines)
  py = sys.executable
  rows = []
  ev_s = timed([py, "-m", "calrec_jax.evaluate", f"--config={args.config}", f"--workdir={args.workdir}",
                f"--output={tmp}/eval",
                f"--config.eval.max_users={args.users}", "--config.eval.retrieval=dense", "--config.eval.beams=0",
                "--config.eval.fusion="])
  rows.append({"command": "evaluate (dense)", "users": n, "wall_s": ev_s, "users_per_s": n / ev_s})
  for ranker in args.rankers.split(","):
    wall = timed([py, "-m", "calrec_jax.recommend", f"--workdir={args.workdir}", f"--input={path}",
                  f"--output={tmp}/recs_{ranker}.jsonl", f"--ranker={ranker}", f"--batch_users={args.batch_users}"])
    load_s, api = api_users_per_s(args.workdir, lines, ranker, args.batch_users)
    rows.append({"command": f"recommend --ranker={ranker}", "users": n, "wall_s": wall, "users_per_s": n / wall,
                 "api_load_s": load_s, "api_users_per_s": api})
  print(f"\n{args.workdir}, {n} test users, {jax.devices()[0].device_kind}, {os.cpu_count()} cores")
  print("| command | users | wall s (end to end) | users/s | x evaluate | API: load s | API: users/s (ranking) |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['command']} | {r['users']} | {r['wall_s']:.1f} | {r['users_per_s']:.1f} | "
          f"{r['users_per_s'] / rows[0]['users_per_s']:.2f}x | "
          + (f"{r['api_load_s']:.1f} | {r['api_users_per_s']:.0f} |" if "api_load_s" in r else "- | - |"))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
