"""Stage 2: continue from stage-1 params on the target category alone (fresh optimizer and step).

python -m calrec_jax.main --config=configs/stage2.py --workdir=workdirs/stage2 \\
    --config.ckpt.init_from=workdirs/stage1 --config.data.categories=Office
"""
from configs import stage1


def get_config():
  c = stage1.get_config()
  c.stage = "stage2"
  c.data.categories = "Office"
  c.data.eval_category = ""
  c.ckpt.init_from = "workdirs/stage1"
  c.train.num_steps = 300
  c.optim.learning_rate = 5e-4
  return c
