"""Capacity planner: memory per device, FLOPs and step time of a CALRec train step, before anything runs.

  python -m calrec_jax.plan --preset=gemma3-1b --mesh=1,8,1 --batch=64 --accelerator=h100
  python -m calrec_jax.plan --config=configs/stage1.py --mesh=2,4,1
  python -m calrec_jax.plan --table          # recommended layouts of Gemma 3 1B/4B/12B and Llama 3 8B

Lengths default to a run config's (data.max_len joint tokens, data.max_item_tokens + 1 target tokens,
data.max_item_tokens + 2 item-tower tokens); compute dtype, remat and scanned blocks likewise. Memory is
per device (params, AdamW moments, gradients, saved activations, XLA-style temporaries); the step time assumes
--mfu of the accelerator's bf16 peak. Full finetuning with AdamW; LoRA needs less.
"""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A run config (configs/*.py); its model, data and batch settings "
                                "are the defaults of the flags below.", lock_config=True)
flags.DEFINE_string("preset", None, "Model preset (overrides the config's model.preset).")
flags.DEFINE_string("mesh", "1,1,1", "data,fsdp,tensor device counts.")
flags.DEFINE_integer("batch", None, "Global batch (default: the config's data.batch_size, else 16).")
flags.DEFINE_integer("seq", None, "Joint-tower tokens (default: data.max_len, else 256).")
flags.DEFINE_integer("item_tokens", None, "Tokens of one item text (default: data.max_item_tokens, else 48).")
flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the config's).")
flags.DEFINE_bool("remat", None, "Rematerialise blocks (default: the config's).")
flags.DEFINE_bool("scan_layers", None, "Scanned blocks (default: the config's).")
flags.DEFINE_string("accelerator", "h100", "Peak FLOP/s and memory per chip: tpu-v5e | tpu-v5p | tpu-v4 | h100 | "
                    "h200 | a100.")
flags.DEFINE_float("mfu", 0.4, "Model FLOP utilisation the step time assumes.")
flags.DEFINE_bool("table", False, "Print the recommended layouts of the large presets on common slices instead.")

TABLE_MODELS = ("gemma3-1b", "gemma3-4b", "gemma3-12b", "llama-3-8b")


def _setting(name: str, config_value, default):
  value = getattr(FLAGS, name)
  if value is not None:
    return value
  return config_value if config_value is not None else default


def check_numbers() -> None:
  """Sizes and the MFU the planner divides by: positive, or one line naming the flag."""
  from calrec_jax.errors import ConfigError
  if not 0 < FLAGS.mfu <= 1:
    raise ConfigError(f"--mfu={FLAGS.mfu}: give the model FLOP utilisation as a fraction in (0, 1], e.g. 0.4")
  for name in ("batch", "seq", "item_tokens"):
    value = getattr(FLAGS, name)
    if value is not None and value < 1:
      raise ConfigError(f"--{name}={value}: must be a positive count")


def shape_from_flags():
  from calrec_jax.errors import ConfigError
  from calrec_jax.model.config import preset
  from calrec_jax.plan.estimate import ACCELERATORS, StepShape
  c = FLAGS.config
  get = (lambda section, key: c[section][key] if c is not None else None)  # noqa: E731
  name = FLAGS.preset or (c.model.preset if c is not None else None)
  if not name:
    raise ConfigError("give --preset=NAME or --config=configs/....py")
  if c is not None and c.model.pretrained and not FLAGS.preset:
    raise ConfigError(f"model.pretrained={c.model.pretrained!r}: the planner reads presets; pass the matching "
                      "--preset (e.g. --preset=gemma3-270m)")
  try:
    mesh = tuple(int(x) for x in FLAGS.mesh.split(","))
  except ValueError:
    mesh = ()
  if len(mesh) != 3 or min(mesh) < 1:
    raise ConfigError(f"--mesh={FLAGS.mesh!r}: give three positive device counts data,fsdp,tensor, e.g. 1,8,1")
  if FLAGS.accelerator not in ACCELERATORS:
    raise ConfigError(f"--accelerator={FLAGS.accelerator!r}; choose one of {sorted(ACCELERATORS)}")
  batch = _setting("batch", get("data", "batch_size"), 16)
  if batch % (mesh[0] * mesh[1]):
    raise ConfigError(f"--batch={batch} must be divisible by data x fsdp = {mesh[0] * mesh[1]}")
  item = _setting("item_tokens", get("data", "max_item_tokens"), 48)
  dtype = _setting("compute_dtype", get("model", "compute_dtype"), "float32")
  shape = StepShape(batch, _setting("seq", get("data", "max_len"), 256), item + 1, item + 2, mesh,
                    remat=bool(_setting("remat", get("model", "remat"), False)),
                    compute_bytes=2 if dtype == "bfloat16" else 4,
                    scan_layers=bool(_setting("scan_layers", get("model", "scan_layers"), False)))
  return name, preset(name), shape


def print_plan(name, cfg, shape) -> None:
  from calrec_jax.plan.estimate import ACCELERATORS, estimate, step_seconds
  est = estimate(cfg, shape)
  peak, memory = ACCELERATORS[FLAGS.accelerator]
  g = lambda x: f"{x / 2 ** 30:8.2f} GiB"  # noqa: E731
  t = step_seconds(est["flops"], shape.devices, peak, FLAGS.mfu)
  print(f"{name}: {est['param_count'] / 1e9:.2f}B params; mesh (data, fsdp, tensor) = {shape.mesh}; global batch "
        f"{shape.global_batch} x ({shape.seq_len} joint + {shape.item_len} item tokens); "
        f"{'bfloat16' if shape.compute_bytes == 2 else 'float32'} compute"
        f"{', remat' if shape.remat else ''}{', scanned blocks' if shape.scan_layers else ''}")
  print("per device:")
  # the lines above `total` add up to it; gradients and saved activations live inside the step's temporaries
  for key in ("params", "optimizer", "batch"):
    print(f"  {key:12s}{g(est[key])}")
  print(f"  {'temporaries':12s}{g(est['temporaries'])}   (the step's peak working memory, of which:)")
  print(f"   {'gradients':11s}{g(est['gradients'])}")
  print(f"   {'activations':11s}{g(est['activations'])}   (saved for the backward pass)")
  fits = "fits" if est["total"] <= memory else "does NOT fit"
  print(f"  {'total':12s}{g(est['total'])}   (arguments + XLA temporaries; {FLAGS.accelerator} has "
        f"{memory / 2 ** 30:.0f} GiB: {fits})")
  print(f"step: {est['flops'] / 1e12:.1f} TFLOP; {t * 1e3:.1f} ms at {FLAGS.mfu:.0%} MFU of {FLAGS.accelerator} "
        f"({peak / 1e12:.0f} TFLOP/s x {shape.devices}); "
        f"{shape.global_batch * (shape.seq_len + shape.item_len) / t:,.0f} tokens/s")


def print_table(seq: int, item: int) -> None:
  from calrec_jax.model.config import preset
  from calrec_jax.plan.recommend import SLICES, recommend
  print(f"Recommended layouts (bfloat16 compute, AdamW full finetuning; {seq} joint + {item + 2} item "
        f"tokens; at most 90% of device memory; step time at {FLAGS.mfu:.0%} MFU):\n")
  print("| model | slice | mesh (data, fsdp, tensor) | remat | global batch | GiB per device | step s | tokens/s |")
  print("|---|---|---|---|---|---|---|---|")
  for name in TABLE_MODELS:
    for slice_name, (accel, chips) in SLICES.items():
      p = recommend(preset(name), accel, chips, seq, item + 1, item + 2, FLAGS.mfu)
      if p is None:
        print(f"| {name} | {slice_name} | does not fit | | | | | |")
        continue
      print(f"| {name} | {slice_name} | {p.mesh} | {'yes' if p.remat else 'no'} | {p.global_batch} | "
            f"{p.gib_per_device:.1f} | {p.step_s:.2f} | {p.tokens_per_s:,.0f} |", flush=True)


def main(argv) -> None:
  del argv
  from calrec_jax.errors import ConfigError
  try:
    check_numbers()
    if FLAGS.table:
      print_table(FLAGS.seq or 256, FLAGS.item_tokens or 48)
      return
    print_plan(*shape_from_flags())
  except ConfigError as e:
    raise SystemExit(f"error: {e}") from None


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
