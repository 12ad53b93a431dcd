"""Stage 2 on the shared Amazon 2018 Scientific data (RecBole files), then the full-ranking test evaluation.

  python -m calrec_jax.main --config=configs/scientific.py --workdir=workdirs/scientific
  python -m calrec_jax.evaluate --config=configs/scientific.py --workdir=workdirs/scientific

A CPU-sized budget: the 'small' random-init decoder with a SentencePiece model trained on the item texts.
For the paper's setting use --config.model.pretrained=gemma3-270m-gguf (or a larger checkpoint) on accelerators.
`--config.data.path` points at the folder holding Scientific.inter / .item / ... (default: ../shared/data).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.stage = "stage2"
  c.data.source = "recbole"
  c.data.path = "../shared/data/amazon2018-scientific"
  c.data.categories = "Scientific"
  c.data.batch_size = 16
  c.data.max_len = 192
  c.data.length_buckets = "128"
  c.data.max_history = 6
  c.data.max_item_tokens = 40
  c.tokenizer.vocab_size = 4000
  c.model.preset = "small"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.train.num_steps = 400
  c.train.eval_every = 100
  c.train.log_every = 10
  c.ckpt.every = 100
  c.eval.valid_users = 256
  c.eval.max_users = 0            # every test user
  c.eval.batch_size = 64
  c.eval.num_samples = 4
  c.eval.max_new_tokens = 40
  return c
