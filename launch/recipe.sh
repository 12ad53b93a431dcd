#!/usr/bin/env bash
# The packed CALRec recipe on one machine: stage 1 (Office + Scientific) -> stage 2 (Scientific) -> evaluation of
# every Scientific test user, then the evaluation table and each stage's throughput and MFU.
#
#   launch/recipe.sh [--variant=gpu|cpu|tiny] [--dry-run] WORKDIR [--config.key=value ...]
#
# gpu (default): one accelerator, Gemma-3-270M fully finetuned in bfloat16; cpu: LoRA on two CPU cores;
# tiny: the random-init tiny model on synthetic data (the same code path in about a minute). Variants and keys:
# configs/recipe.py. MFU is logged when train.peak_flops is set (gpu: the H100's 989e12). The workdir keeps
# checkpoints: the same command continues an interrupted run.
set -euo pipefail
variant=gpu
DRY_RUN=0
source "$(dirname "$0")/common.sh"  # die, check_config
while [[ $# -gt 0 && $1 == --* && $1 != --config.* ]]; do
  case "$1" in
    --variant=*) variant=${1#*=} ;;
    --dry-run) DRY_RUN=1 ;;
    --help|-h) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ $variant =~ ^(gpu|cpu|tiny)$ ]] || die "--variant must be gpu, cpu or tiny (got '$variant')"
workdir=${1:-}
[[ -n $workdir ]] || die "WORKDIR is missing; see --help"
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
cmd=("$python" -m calrec_jax.main "--config=configs/recipe.py:$variant" "--workdir=$workdir" --mode=pipeline "$@")
if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
start=$(date +%s)
"${cmd[@]}"
echo "recipe ($variant) finished in $(( $(date +%s) - start )) s"
"$python" - "$workdir" <<'PY'
import json, os, sys
workdir = sys.argv[1]
for stage in ("stage1", "stage2"):
  rows = [json.loads(x) for x in open(os.path.join(workdir, stage, "metrics.jsonl")) if x.strip()]
  perf = [r for r in rows if "perf/examples_per_s" in r]
  last = perf[-1] if perf else {}
  parts = [f"{stage}: {last.get('perf/examples_per_s', 0.0):.1f} examples/s",
           f"{last.get('perf/tokens_per_s', 0.0):.0f} tokens/s"]
  if "perf/tflops_per_s" in last:
    parts.append(f"{last['perf/tflops_per_s']:.2f} TFLOP/s per device")
  if "perf/mfu" in last:
    parts.append(f"MFU {100 * last['perf/mfu']:.1f}%")
  print(", ".join(parts) + " (last logging window)")
print(open(os.path.join(workdir, "stage2", "eval", "metrics.md")).read())
PY
