"""Stage 1: finetune on a mixture of categories (p ∝ n_users^0.3).

python -m calrec_jax.main --config=configs/stage1.py --workdir=workdirs/stage1
Defaults train the small random-init model on the embedded synthetic categories; for real runs set e.g.
  --config.model.pretrained=gemma3-270m-gguf --config.data.source=prepared --config.data.path=data/prepared
"""
from configs import base


def get_config():
  c = base.get_config()
  c.stage = "stage1"
  c.model.preset = "small"
  c.train.num_steps = 600
  c.train.eval_every = 200
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  return c
