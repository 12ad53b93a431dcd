"""Tokenizers: SentencePiece (load a model file, or train a small one on the fly on item texts) and, through
`load_tokenizer`, Hugging Face tokenizer.json files (data/hf_tokenizer.py) behind the same interface:
`encode` (ids without BOS/EOS), `decode`, `bos_id`/`eos_id`/`pad_id`, `vocab_size`, `add_bos`, `save_to(folder)`."""
from __future__ import annotations

import io
import os
from typing import Iterable

import sentencepiece as spm

from calrec_jax.errors import DataError
from calrec_jax.paths import write_atomically


class Tokenizer:
  """SentencePiece: `encode` returns ids without BOS/EOS; special ids are attributes."""

  filename = "tokenizer.model"
  add_bos = True  # SentencePiece checkpoints here (Gemma, trained) start every sequence with BOS

  def __init__(self, model_proto: bytes, source: str = "<bytes>"):
    self.proto = model_proto
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as e:
      raise DataError(f"not a valid SentencePiece model ({e})", source) from None
    self.source = source
    self.bos_id = self.sp.bos_id()
    self.eos_id = self.sp.eos_id()
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
    self.vocab_size = self.sp.get_piece_size()

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    if not os.path.exists(path):
      raise DataError("tokenizer model not found", path)
    with open(path, "rb") as f:
      return cls(f.read(), path)

  def save(self, path: str) -> None:
    write_atomically(path, self.proto)

  def save_to(self, folder: str) -> str:
    """tokenizer.model in `folder`; returns its path."""
    path = os.path.join(folder, self.filename)
    self.save(path)
    return path

  def piece(self, i: int) -> str:
    return self.sp.id_to_piece(int(i))

  @property
  def special(self) -> dict:
    out = {"bos_token": self.piece(self.bos_id), "eos_token": self.piece(self.eos_id),
           "pad_token": self.piece(self.pad_id)}
    if self.sp.unk_id() >= 0:
      out["unk_token"] = self.piece(self.sp.unk_id())
    return out

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    return self.sp.decode(ids)


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # in the order a folder is searched


def find_tokenizer(folder: str) -> str | None:
  """The tokenizer file a checkpoint or workdir folder holds (SentencePiece first), or None."""
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def load_tokenizer(path: str):
  """A SentencePiece .model file, a HF tokenizer.json, or a folder holding one of them."""
  if os.path.isdir(path):
    found = find_tokenizer(path)
    if found is None:
      raise DataError(f"no tokenizer here (looked for {' or '.join(TOKENIZER_FILES)})", path)
    path = found
  if path.endswith(".json"):
    from calrec_jax.data.hf_tokenizer import HFTokenizer
    return HFTokenizer.load(path)
  return Tokenizer.load(path)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> Tokenizer:
  """A unigram SentencePiece model with byte fallback (every string encodes), newline kept as a piece.

  Special ids follow Gemma: pad 0, eos 1, bos 2, unk 3.
  """
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(texts)), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
      byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=["\n"],
      normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False, hard_vocab_limit=False,
      split_digits=True, character_coverage=1.0, num_threads=2, minloglevel=2, train_extremely_large_corpus=False)
  return Tokenizer(buf.getvalue(), "<trained on the fly>")
