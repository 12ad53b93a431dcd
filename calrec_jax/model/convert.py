"""Convert pretrained weights or export trained ones.

  python -m calrec_jax.model.convert --input=gemma3-270m-gguf --output=weights/gemma3-270m
      GGUF / HF directory / packaged name -> params checkpoint + model_config.json + tokenizer file
  python -m calrec_jax.model.convert --input=workdirs/smoke/stage2 --output=export/hf --to=hf
      a training workdir (or converted directory) -> Hugging Face safetensors + config.json + tokenizer files
"""
from __future__ import annotations

import argparse
import os

from calrec_jax.errors import run_cli


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m calrec_jax.model.convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", required=True,
                 help="GGUF file, HF dir, hf://org/name Hub id, converted dir, packaged name, or training workdir")
  p.add_argument("--output", required=True, help="output folder")
  p.add_argument("--to", choices=("orbax", "hf"), default="orbax", help="output format (default: orbax params)")
  p.add_argument("--tokenizer", help="tokenizer.model or tokenizer.json to ship with the output, for an --input "
                                     "that holds none")
  a = p.parse_args(argv)
  import sys
  from calrec_jax.errors import WeightImportError
  from calrec_jax.model import loading, weights
  say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731  progress of the long steps
  packaged = a.input in ("gemma3-270m-gguf", "smollm2-135m-gguf") or a.input.startswith(loading.HUB_PREFIX)
  if not packaged and not os.path.exists(os.path.expanduser(a.input)):
    raise WeightImportError(f"--input={a.input}: no such file or folder (a training workdir, e.g. "
                            "workdirs/smoke/stage2 after the README's demo, a .gguf file, a HF checkpoint folder, an "
                            "hf://org/name Hub id, or gemma3-270m-gguf / smollm2-135m-gguf)")
  from calrec_jax.paths import require_writable_dir
  require_writable_dir(a.output, "--output")  # before the weights are read, not after
  source = os.path.join(a.input, "export") if os.path.exists(os.path.join(a.input, "export", "model_config.json")) \
      else a.input  # a training workdir: its export
  from calrec_jax.data.tokenizer import find_tokenizer, load_tokenizer
  if a.tokenizer and not os.path.isfile(a.tokenizer):
    raise WeightImportError(f"--tokenizer={a.tokenizer}: no such file (give a tokenizer.model or tokenizer.json)")
  checkpoint_dir = os.path.isdir(source) and any(os.path.exists(os.path.join(source, name))
                                                 for name in ("config.json", "model_config.json"))
  if not a.tokenizer and checkpoint_dir and find_tokenizer(source) is None:
    raise WeightImportError(f"--input={a.input}: holds no tokenizer (tokenizer.model or tokenizer.json), so what it "
                            "converts to could not be trained or evaluated; give --tokenizer=<the checkpoint's "
                            "tokenizer.model or tokenizer.json>")
  say(f"reading {source}" + (" (a GGUF file is dequantised to float32: about 5-20 s for 100-300M parameters)"
                             if source.endswith(".gguf") or a.input.endswith("-gguf") else "") + " ...")
  try:
    cfg, params, tok = loading.load_pretrained(source)
  except WeightImportError as e:
    raise WeightImportError(str(e).replace(f"model.pretrained={source!r}", f"--input={a.input}")) from None
  params = params.get("decoder", params)
  if a.tokenizer:
    tok = load_tokenizer(a.tokenizer)
  if tok is None:
    raise WeightImportError(f"--input={a.input}: holds no tokenizer, so what it converts to could not be trained "
                            "or evaluated; give --tokenizer=<the checkpoint's tokenizer.model or tokenizer.json>")
  say(f"read a {cfg.family} model ({cfg.n_layers} layers, d_model {cfg.d_model}); writing {a.to} to {a.output} ...")
  if a.to == "orbax":
    loading.save_converted(a.output, cfg, params, tok)
  else:
    weights.export_hf_checkpoint(params, cfg, a.output, tok)
  print(f"wrote {a.to} checkpoint of a {cfg.family} model ({cfg.n_layers} layers, d={cfg.d_model}) to {a.output}")


def run() -> None:
  run_cli(main)


if __name__ == "__main__":
  run()
