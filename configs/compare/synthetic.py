"""CALRec against baselines on the embedded synthetic data (a few minutes on 2 CPU cores; no download).

  python -m calrec_jax.compare --config=configs/compare/synthetic.py --workdir=workdirs/compare_demo
  python -m calrec_jax.compare --config=configs/compare/synthetic.py:smoke --workdir=...   (tests: seconds)
  python -m calrec_jax.compare --config=configs/compare/synthetic.py:llm --workdir=...
      (the pretrained-decoder recipe of configs/compare/scientific.py:llm, tiny: Gemma-3-270M, 2 LoRA steps)
"""
from configs import demo
from configs.compare import common


def get_config(arg: str = ""):
  calrec = demo.get_config("smoke")
  del calrec["pipeline"]
  calrec.data.categories = "Office"
  calrec.data.eval_category = "Office"
  calrec.train.num_steps = 150
  calrec.ckpt.keep = 1
  calrec.eval.max_users = 100
  c = common.get_config(calrec, "Synthetic Office: CALRec against baselines")
  c.calrec.pipeline.stage1_categories = "Garden,Kitchen,Office"
  c.calrec.pipeline.stage2_category = "Office"
  c.calrec.pipeline.stage1_steps = 100
  c.calrec.pipeline.stage2_steps = 100
  c.sasrec.max_epochs = c.gru4rec.max_epochs = 40
  c.sasrec.patience = c.gru4rec.patience = 5
  c.sasrec.batch_size = c.gru4rec.batch_size = 64
  if arg == "smoke":
    _smoke(c)
  elif arg == "llm":
    _smoke(c)
    c.title = "Synthetic Office: pretrained Gemma-3-270M (tiny recipe)"
    c.methods = "popularity,zero_shot,calrec_pretrained_lora"
    c.calrec.eval.max_users = 6
    c.calrec.eval.valid_users = 4
    c.calrec.data.max_len = 160
    c.calrec.data.length_buckets = "160"
    c.calrec.data.max_history = 3
    c.calrec.data.max_item_tokens = 24
    common.add_pretrained_rows(c, "gemma3-270m-gguf", "Gemma-3-270M", steps=2, batch_size=2, ckpt_every=1)
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; use '', 'smoke' or 'llm'")
  return c


def _smoke(c):
  """Seconds-sized settings (tests)."""
  c.progress = False
  c.calrec.train.progress = False
  c.calrec.train.num_steps = 4
  c.calrec.data.batch_size = 8
  c.calrec.ckpt.every = 4
  c.calrec.ckpt.async_save = False
  c.calrec.eval.max_users = 12
  c.calrec.eval.valid_users = 8
  c.calrec.eval.num_samples = 2
  c.calrec.eval.max_new_tokens = 12
  c.calrec.pipeline.stage1_steps = c.calrec.pipeline.stage2_steps = 4
  c.sasrec.max_epochs = c.gru4rec.max_epochs = 2
  c.significance.bootstrap = 500
