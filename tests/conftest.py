import atexit
import os
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# commands started by the tests keep their compilation cache in a folder of this test process, not in ~/.cache
_XLA_CACHE = tempfile.mkdtemp(prefix="calrec-test-xla-")
os.environ.setdefault("CALREC_COMPILE_CACHE", _XLA_CACHE)
atexit.register(shutil.rmtree, _XLA_CACHE, True)
# tests compile far more than they run, and LLVM's optimisation of the CPU kernels is much of each compile: without
# it a demo pipeline took 80 s against 99 s, and the suite 41 min against 76. Programs of many small elementwise ops
# run slower (SASRec's trainer: 3 epochs in 76 s against 47 s); matmul-heavy ones about as fast (Gemma's forward).
# Commands started by the tests inherit it
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
SHARED = os.path.join(ROOT, "..", "shared", "data", "amazon2018-scientific")
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def scientific_dir():
  if not os.path.exists(os.path.join(SHARED, "Scientific.test.inter")):
    pytest.skip("shared Scientific data not present")
  return SHARED


@pytest.fixture(scope="session")
def synthetic_parts():
  """Synthetic categories, a tokenizer trained on them and an encoder (shared by several tests)."""
  from calrec_jax.data import synthetic
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.text import FIRST_ITEM, NEXT_ITEM, PROMPT_HEADER, render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  cats = synthetic.make_dataset(["Garden", "Office"], [120, 40])
  texts = [render_item(a) for c in cats for a in c.catalog.attributes] + ["\n".join([PROMPT_HEADER, FIRST_ITEM, NEXT_ITEM])]
  tok = train_tokenizer(texts, 500)
  enc = ExampleEncoder(tok, cats, ExampleSpec(max_len=384, max_item_tokens=64, length_buckets=(192,), max_history=6))
  return cats, tok, enc


@pytest.fixture(scope="session")
def tiny_model(synthetic_parts):
  """(categories, encoder, tiny two-tower model, random params) on the synthetic data."""
  import jax
  from calrec_jax.model.config import preset
  from calrec_jax.model import variables
  from calrec_jax.model.two_tower import TwoTower
  cats, tok, enc = synthetic_parts
  model = TwoTower(preset("tiny", vocab_size=512, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id))
  shapes = variables.example_batch(2, enc.buckets[-1], enc.spec.target_len, enc.spec.item_len)
  params = jax.jit(lambda r: variables.init_params(model, r, shapes))(
      jax.random.PRNGKey(1))
  return cats, enc, model, params
