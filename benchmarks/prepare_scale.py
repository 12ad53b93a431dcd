"""How preparation and the start of training grow with the size of a raw Amazon category.

  python benchmarks/prepare_scale.py --sizes=100000,1000000 --workdir=/tmp/prepare_scale
  python benchmarks/prepare_scale.py --sizes=1000000,4000000 --train --workdir=/tmp/prepare_scale

For each size, raw files from benchmarks/raw_amazon.py (generated once and kept in --workdir), then
`python -m calrec_jax.data.prepare --source=amazon_raw` (5-core) as a user runs it: wall seconds, CPU seconds
and peak RSS of that process (os.wait4). With --train, one step of `python -m calrec_jax.main
--config=configs/demo.py:smoke` on the prepared category (tokenizer trained on the fly, 16 validation users):
seconds from the command's start to its compiled train step (the first step follows at once) and
peak RSS. The growth columns are per million reviews between consecutive sizes (from zero for the first).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def measured(cmd: list[str], log_path: str) -> dict:
  """Run `cmd` (cwd: the repository); wall s, CPU s (user + sys) and peak RSS GB of that process."""
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status):
    sys.exit(f"{' '.join(cmd)} failed; see {log_path}")
  return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_gb": usage.ru_maxrss / 1e6}


def compiled_at(log_path: str) -> float:
  """Unix time of the log line saying the train step is compiled (the first step runs right after it)."""
  import datetime
  with open(log_path, encoding="utf-8", errors="replace") as f:
    line = next((x for x in f if "compiled step (batch" in x), None)
  if line is None:
    return float("nan")
  stamp = line.split()[1]                              # absl: 'I1205 11:19:02.192699 ... compiled step ...'
  today = datetime.datetime.now()
  t = datetime.datetime.strptime(f"{today:%Y%m%d} {stamp}", "%Y%m%d %H:%M:%S.%f")
  return t.timestamp()


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", default="100000,1000000", help="reviews per generated category, comma-separated")
  ap.add_argument("--workdir", required=True, help="raw files, prepared data and logs go here")
  ap.add_argument("--train", action="store_true", help="also time one training step on each prepared category")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  from raw_amazon import write_category
  py, rows = sys.executable, []
  for size in [int(s) for s in args.sizes.split(",")]:
    raw = os.path.join(args.workdir, f"raw_{size}")
    if not os.path.exists(os.path.join(raw, "meta_Synthetic.json.gz")):
      print(f"generating {size:,} reviews in {raw} ...", flush=True)
      write_category(raw, size)
    out = os.path.join(args.workdir, f"prepared_{size}")
    row = {"reviews": size, **measured([py, "-m", "calrec_jax.data.prepare", "--source=amazon_raw", f"--input={raw}",
                                        "--categories=Synthetic", f"--output={out}"],
                                       os.path.join(args.workdir, f"prepare_{size}.log"))}
    with open(os.path.join(out, "Synthetic", "stats.json"), encoding="utf-8") as f:
      stats = json.load(f)
    row["users"], row["items"] = stats["users"], stats["items"]
    if args.train:
      log_path = os.path.join(args.workdir, f"train_{size}.log")
      work = os.path.join(args.workdir, f"train_{size}")
      subprocess.run(["rm", "-rf", work])
      t0 = time.time()
      train = measured([py, "-m", "calrec_jax.main", "--config=configs/demo.py:smoke", f"--workdir={work}",
                        "--config.data.source=prepared", f"--config.data.path={out}",
                        "--config.data.categories=Synthetic", "--config.train.num_steps=1",
                        "--config.train.log_every=1", "--config.eval.valid_users=16", "--config.train.progress=False",
                        "--config.compile_cache.dir="], log_path)
      row["first_step_s"] = compiled_at(log_path) - t0
      row["train_rss_gb"] = train["rss_gb"]
    rows.append(row)
    print(json.dumps(row), flush=True)
  print("\n| reviews | users / items after 5-core | prepare wall s | prepare CPU s | prepare peak RSS GB | "
        "CPU s per M reviews (growth) | RSS GB per M reviews (growth) |" +
        (" first step s | train peak RSS GB |" if args.train else ""))
  print("|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.train else ""))
  prev = None
  for r in rows:
    def growth(key: str, digits: int) -> str:
      """Per million reviews between this size and the previous one (from zero for the first)."""
      base = prev or {"reviews": 0, key: 0.0}
      return f"{(r[key] - base[key]) / ((r['reviews'] - base['reviews']) / 1e6):.{digits}f}"
    print(f"| {r['reviews']:,} | {r['users']:,} / {r['items']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
          f"{r['rss_gb']:.2f} | {growth('cpu_s', 1)} | {growth('rss_gb', 3)} |" +
          (f" {r['first_step_s']:.1f} | {r['train_rss_gb']:.2f} |" if args.train else ""))
    prev = r
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
