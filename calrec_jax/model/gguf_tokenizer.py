"""Rebuild a SentencePiece model from the vocabulary stored in a GGUF file (Gemma: `tokenizer.ggml.model=llama`).

GGUF token types use SentencePiece's own enum (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
6 byte), so pieces, scores and types carry over one to one. GPT-2 byte-level BPE vocabularies (SmolLM2,
Llama 3, Qwen: `tokenizer.ggml.model=gpt2`) cannot be expressed as SentencePiece: for those `None` is returned
here and data/hf_tokenizer.py rebuilds them as a tokenizer.json.

Checked against transformers' tokenizer of the same GGUF (tests/test_pretrained_gguf.py): identical ids on
whitespace and newline runs, digits, unicode, HTML leftovers; the one difference is a run of 32 or more spaces
(longest-match here, a 16-space split there), which item texts never contain (whitespace is collapsed).
"""
from __future__ import annotations

from calrec_jax.data.tokenizer import Tokenizer


USER_DEFINED = 4


def tokenizer_from_gguf(reader, path: str = "") -> Tokenizer | None:
  from sentencepiece import sentencepiece_model_pb2 as pb
  kind = reader.fields.get("tokenizer.ggml.model")
  if kind is None or kind.contents() != "llama":
    return None
  tokens = reader.fields["tokenizer.ggml.tokens"].contents()
  scores = reader.fields["tokenizer.ggml.scores"].contents()
  types = reader.fields["tokenizer.ggml.token_type"].contents()
  get = lambda k, d: reader.fields[k].contents() if k in reader.fields else d  # noqa: E731
  m = pb.ModelProto()
  for piece, score, typ in zip(tokens, scores, types):
    if int(typ) == USER_DEFINED:  # GGUF keeps the space runs with plain spaces; SentencePiece matches
      piece = piece.replace(" ", "\u2581")  # user-defined pieces after escaping spaces to U+2581
    p = m.pieces.add()
    p.piece, p.score, p.type = piece, float(score), int(typ)
  ts = m.trainer_spec
  ts.model_type = pb.TrainerSpec.BPE
  ts.vocab_size = len(tokens)
  ts.byte_fallback = True
  ts.unk_id, ts.bos_id = int(get("tokenizer.ggml.unknown_token_id", 3)), int(get("tokenizer.ggml.bos_token_id", 2))
  ts.eos_id, ts.pad_id = int(get("tokenizer.ggml.eos_token_id", 1)), int(get("tokenizer.ggml.padding_token_id", 0))
  ts.unk_piece, ts.bos_piece = tokens[ts.unk_id], tokens[ts.bos_id]
  ts.eos_piece, ts.pad_piece = tokens[ts.eos_id], tokens[ts.pad_id]
  ts.split_digits = True
  ts.allow_whitespace_only_pieces = True
  ns = m.normalizer_spec
  ns.name = "identity"
  ns.add_dummy_prefix = bool(get("tokenizer.ggml.add_space_prefix", False))
  ns.remove_extra_whitespaces = False
  ns.escape_whitespaces = True
  return Tokenizer(m.SerializeToString(), f"{path} (GGUF vocabulary)")
