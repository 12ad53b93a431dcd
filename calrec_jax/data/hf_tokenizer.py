"""Hugging Face `tokenizer.json` tokenizers (byte-level BPE of Llama 3, Qwen, SmolLM2, and every other model the
format describes) through the `tokenizers` library, behind the interface of the SentencePiece `Tokenizer`.

Special tokens come from the checkpoint: `tokenizer_config.json` (bos/eos/pad token strings) and `config.json`
(their ids) beside the tokenizer.json. A vocabulary without a BOS token (Qwen) starts each sequence with its
document separator (`<|endoftext|>`, the EOS/pad of base models), as in its pretraining data; `add_bos` says
whether the checkpoint's own tokenizer prepends the BOS (what `transformers` does with `tokenizer(text)`).
"""
from __future__ import annotations

import json
import os
from typing import Iterable

from calrec_jax.paths import write_atomically
from calrec_jax.errors import DataError

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_FILES = (CONFIG_FILE, "special_tokens_map.json")  # token strings, searched in this order
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token")


def _token_string(value) -> str | None:
  """'<s>' or {'content': '<s>', ...} (tokenizer_config.json writes both) -> '<s>'."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


class HFTokenizer:
  """A `tokenizers.Tokenizer`; `encode` returns ids without special tokens; special ids are attributes."""

  filename = "tokenizer.json"

  def __init__(self, tokenizer_json: str, special: dict | None = None, source: str = "<json>"):
    from tokenizers import Tokenizer as Backend
    try:
      self.backend = Backend.from_str(tokenizer_json)
    except Exception as e:  # noqa: BLE001  (the library raises a bare Exception on malformed JSON)
      raise DataError(f"not a valid tokenizer.json ({str(e)[:200]})", source) from None
    self.tokenizer_json = tokenizer_json
    self.source = source
    special = dict(special or {})
    ids = {name: self._id(special.get(name)) for name in SPECIAL_TOKENS}
    for name in SPECIAL_TOKENS:  # ids given directly (config.json, GGUF metadata)
      if ids[name] is None and special.get(name + "_id") is not None:
        ids[name] = int(special[name + "_id"])
    self.eos_id = ids["eos_token"] if ids["eos_token"] is not None else ids["pad_token"]
    if self.eos_id is None:
      raise DataError("the tokenizer names no EOS or pad token (set eos_token in tokenizer_config.json)", source)
    self.bos_id = ids["bos_token"] if ids["bos_token"] is not None else self.eos_id
    self.pad_id = ids["pad_token"] if ids["pad_token"] is not None else self.eos_id
    self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
    probe = self.backend.encode("a", add_special_tokens=True).ids
    self.add_bos = ids["bos_token"] is not None and probe[:1] == [self.bos_id] != self.encode("a")[:1]
    self.special = {"bos_token": self.piece(self.bos_id), "eos_token": self.piece(self.eos_id),
                    "pad_token": self.piece(self.pad_id)}

  def _id(self, token) -> int | None:
    token = _token_string(token)
    return None if token is None else self.backend.token_to_id(token)

  def piece(self, i: int) -> str:
    return self.backend.id_to_token(int(i))

  @classmethod
  def load(cls, path: str) -> "HFTokenizer":
    """A tokenizer.json file (or the folder holding it), with the special tokens of the files beside it."""
    folder, path = (path, os.path.join(path, cls.filename)) if os.path.isdir(path) else (os.path.dirname(path), path)
    if not os.path.exists(path):
      raise DataError("tokenizer.json not found", path)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    return cls(text, special_tokens(folder), path)

  def save_to(self, folder: str) -> str:
    """tokenizer.json + tokenizer_config.json (special tokens, BOS behaviour) in `folder`; returns the json path."""
    path = os.path.join(folder, self.filename)
    write_atomically(path, self.tokenizer_json.encode("utf-8"))
    config = dict(self.special, add_bos_token=self.add_bos, add_eos_token=False,
                  tokenizer_class="PreTrainedTokenizerFast", model_max_length=131072)
    write_atomically(os.path.join(folder, CONFIG_FILE), json.dumps(config, indent=1).encode("utf-8"))
    return path

  def encode(self, text: str) -> list[int]:
    return self.backend.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)


def special_tokens(folder: str) -> dict:
  """bos/eos/pad token strings (tokenizer_config.json) and ids (config.json) found in a checkpoint folder."""
  out: dict = {}
  for name in SPECIAL_FILES:
    path = os.path.join(folder, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
      for k in SPECIAL_TOKENS:
        if out.get(k) is None and _token_string(d.get(k)) is not None:
          out[k] = _token_string(d[k])
  path = os.path.join(folder, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
    d = d.get("text_config", d)
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
      v = d.get(k)
      v = v[0] if isinstance(v, list) and v else v
      if isinstance(v, int):
        out[k.replace("_token_id", "_token") + "_id"] = v
  return out


# ----------------------------------------------------------------------------- GGUF byte-level BPE vocabularies
# llama.cpp's `tokenizer.ggml.pre` names the pre-tokenizer its merges were learned with. Each maps to the
# pre-tokenizer of the model's own tokenizer.json.
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    "gpt2": [{"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}],
    # SmolLM / SmolLM2: digits one by one, then GPT-2's byte-level split
    "smollm": [{"type": "Digits", "individual_digits": True},
               {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}],
}
for _name, _regex in (("llama3", _LLAMA3_REGEX), ("llama-bpe", _LLAMA3_REGEX), ("qwen2", _QWEN2_REGEX)):
  PRE_TOKENIZERS[_name] = [{"type": "Split", "pattern": {"Regex": _regex}, "behavior": "Isolated", "invert": False},
                           {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": False}]
CONTROL, USER_DEFINED = 3, 4  # GGUF token types (SentencePiece's enum)


def tokenizer_from_gguf_bpe(reader, path: str = "") -> HFTokenizer:
  """Rebuild the tokenizer.json of a GGUF byte-level BPE vocabulary (`tokenizer.ggml.model=gpt2`): vocabulary,
  merges, control and user-defined tokens as added tokens, the named pre-tokenizer, BOS if the file adds one."""
  get = lambda k, d=None: reader.fields[k].contents() if k in reader.fields else d  # noqa: E731
  tokens, merges = get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges")
  if not tokens or merges is None:
    raise DataError("GGUF byte-level BPE vocabulary without tokens or merges", path)
  types = get("tokenizer.ggml.token_type", [1] * len(tokens))
  pre = get("tokenizer.ggml.pre", "gpt2")
  if pre not in PRE_TOKENIZERS:
    raise DataError(f"GGUF pre-tokenizer {pre!r} is not known (known: {sorted(PRE_TOKENIZERS)}); convert the "
                    "model's tokenizer.json instead", path)
  added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
            "special": int(ty) == CONTROL} for i, (t, ty) in enumerate(zip(tokens, types))
           if int(ty) in (CONTROL, USER_DEFINED)]
  bos, eos = get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id")
  post = None
  if get("tokenizer.ggml.add_bos_token", False) and bos is not None:
    post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                                                     {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}}
  doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": PRE_TOKENIZERS[pre]}, "post_processor": post,
         "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
         "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                   "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                   "vocab": {t: i for i, t in enumerate(tokens)}, "merges": [m.split(" ", 1) for m in merges]}}
  pad = get("tokenizer.ggml.padding_token_id")
  special = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
  return HFTokenizer(json.dumps(doc, ensure_ascii=False), special, f"{path} (GGUF BPE vocabulary)")
