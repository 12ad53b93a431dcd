"""Opening a GGUF file: gguf.GGUFReader (the package's reader) against calrec_jax's open_gguf, side by side.

  python benchmarks/gguf_read.py                       (gemma3-270m-gguf; --model=smollm2-135m-gguf or a .gguf path)

Both parse the same header (metadata with the tokenizer's vocabulary, tensor table) of the same file; the script
checks that every field and tensor is equal, then prints the median seconds of `--repeats` opens and the ratio.
The tensors' dequantisation (gguf.quants.dequantize, shared by both) is timed once beside them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="gemma3-270m-gguf", help="a packaged name or a .gguf path")
  p.add_argument("--repeats", type=int, default=3, help="opens timed per reader (the median is reported)")
  return p.parse_args()


def same_contents(a, b) -> bool:
  """Every metadata field and tensor of two readers of one file is equal."""
  if list(a.fields) != list(b.fields) or [t.name for t in a.tensors] != [t.name for t in b.tensors]:
    return False
  for key in a.fields:
    fa, fb = a.fields[key], b.fields[key]
    if fa.data != fb.data or fa.types != fb.types or len(fa.parts) != len(fb.parts):
      return False
    if not all(np.array_equal(x, y) for x, y in zip(fa.parts, fb.parts)):
      return False
  return all(np.array_equal(x.data, y.data) and x.tensor_type == y.tensor_type for x, y in zip(a.tensors, b.tensors))


def median_seconds(open_file, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    open_file()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  args = parse_args()
  import gguf
  from calrec_jax.model.gguf_import import open_gguf
  from calrec_jax.model.loading import packaged_path
  path = args.model if args.model.endswith(".gguf") else packaged_path(args.model)
  if not same_contents(gguf.GGUFReader(path), open_gguf(path)):
    sys.exit(f"{path}: open_gguf read other fields or tensors than gguf.GGUFReader")
  package = median_seconds(lambda: gguf.GGUFReader(path), args.repeats)
  ours = median_seconds(lambda: open_gguf(path), args.repeats)
  reader = open_gguf(path)
  t0 = time.perf_counter()
  for t in reader.tensors:
    gguf.quants.dequantize(t.data, t.tensor_type)
  dequantise = time.perf_counter() - t0
  print(f"{os.path.basename(path)}: {len(reader.fields)} metadata fields, {len(reader.tensors)} tensors; "
        f"median of {args.repeats} opens")
  print("| reader | open (s) | ratio |\n|---|---:|---:|")
  print(f"| gguf.GGUFReader | {package:.2f} | 1.00 |")
  print(f"| calrec_jax open_gguf | {ours:.2f} | {package / ours:.2f} |")
  print(f"dequantising every tensor to float32 (both readers): {dequantise:.2f} s")


if __name__ == "__main__":
  main()
