"""Convert pretrained weights or export trained ones.

  python -m calrec_jax.model.convert --input=gemma3-270m-gguf --output=weights/gemma3-270m
      GGUF / HF directory / packaged name -> params checkpoint + model_config.json + tokenizer.model
  python -m calrec_jax.model.convert --input=workdirs/stage2 --output=export/hf --to=hf
      a training workdir (or converted directory) -> Hugging Face safetensors + config.json + tokenizer.model
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
  a = p.parse_args(argv)
  from calrec_jax.model import loading, weights
  if os.path.exists(os.path.join(a.input, "export", "model_config.json")):  # a training workdir
    cfg, params, tok = loading.load_pretrained(os.path.join(a.input, "export"))
  else:
    cfg, params, tok = loading.load_pretrained(a.input)
  params = params.get("decoder", params)
  if a.to == "orbax":
    loading.save_converted(a.output, cfg, params, tok)
  else:
    weights.export_hf_checkpoint(params, cfg, a.output, tok.proto if tok else None)
  print(f"wrote {a.to} checkpoint of a {cfg.family} model ({cfg.n_layers} layers, d={cfg.d_model}) to {a.output}")


def run() -> None:
  run_cli(main)


if __name__ == "__main__":
  run()
