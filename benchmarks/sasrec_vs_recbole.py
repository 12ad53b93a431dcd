"""SASRec: calrec_jax's baseline against RecBole 1.2.1's, on the same leave-one-out split, side by side.

  python benchmarks/sasrec_vs_recbole.py [--data=../shared/data/amazon2018-scientific --category=Scientific]

RecBole runs in its own virtual environment (created on first use at --venv with the pins it needs beside
torch 2.13: setuptools<81, numpy<2, pandas<2.3), on the category's sequences written as RecBole atomic files
(one timestamp per position, so RecBole's 'LS' leave-one-out split equals ours). Both models use RecBole's
SASRec hyper-parameters (hidden 64, 2 layers, 2 heads, inner 256, dropout 0.5, CE loss, Adam lr 1e-3, batch 256,
max length 50, early stopping on validation NDCG@10 with patience 10). The test rankings of both are scored by
calrec_jax's metric code, with history items kept in the ranking (RecBole's own setting) and excluded (the
framework's default). RecBole selects its epoch on history-kept validation NDCG@10; ours is trained twice, once
selected the same way and once on history-excluded validation, and each is compared in its own setting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECBOLE_PINS = ["torch==2.13.0", "setuptools<81", "numpy<2", "pandas<2.3", "recbole==1.2.1"]
HPARAMS = dict(hidden=64, layers=2, heads=2, inner=256, dropout=0.5, attn_dropout=0.5, learning_rate=1e-3,
               batch_size=256, max_len=50, patience=10, max_epochs=300)

# Runs inside the RecBole venv: train, RecBole's own test metrics, then per-user test ranks of our item indices.
RECBOLE_RUNNER = r'''
import json, sys, time
import numpy as np, torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed
args = json.load(open(sys.argv[1]))
h = args["hparams"]
cfg = Config(model="SASRec", dataset=args["dataset"], config_dict={
    "data_path": args["data_path"], "checkpoint_dir": args["out_dir"], "seed": args["seed"],
    "reproducibility": True, "device": "cpu", "use_gpu": False, "show_progress": False, "log_wandb": False,
    "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "MAX_ITEM_LIST_LENGTH": h["max_len"],
    "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
    "train_neg_sample_args": None, "loss_type": "CE", "hidden_size": h["hidden"], "n_layers": h["layers"],
    "n_heads": h["heads"], "inner_size": h["inner"], "hidden_dropout_prob": h["dropout"],
    "attn_dropout_prob": h["attn_dropout"], "learning_rate": h["learning_rate"],
    "train_batch_size": h["batch_size"], "eval_batch_size": 4096, "epochs": h["max_epochs"],
    "stopping_step": h["patience"], "metrics": ["Recall", "NDCG", "MRR"], "topk": [1, 5, 10, 20],
    "valid_metric": "NDCG@10"})
init_seed(cfg["seed"], cfg["reproducibility"])
dataset = create_dataset(cfg)
train, valid, test = data_preparation(cfg, dataset)
model = SASRec(cfg, train.dataset).to("cpu")
trainer = Trainer(cfg, model)
t0 = time.time()
trainer.fit(train, valid, saved=True, show_progress=False)
seconds = time.time() - t0
own = {k: float(v) for k, v in trainer.evaluate(test, load_best_model=True, show_progress=False).items()}
model.eval()
tokens = dataset.field2id_token["item_id"]  # internal id -> token (our item index as a string; 0 is [PAD])
n_ours = int(args["num_items"])
to_ours = np.full(len(tokens), -1)
for i, t in enumerate(tokens):
  if t != "[PAD]":
    to_ours[i] = int(t)
token2id = {t: i for i, t in enumerate(tokens)}
seqs = args["test_sequences"]
L = h["max_len"]
hist = np.zeros((len(seqs), L), np.int64)
lens = np.zeros(len(seqs), np.int64)
for r, s in enumerate(seqs):
  hh = [token2id[str(i)] for i in s[:-1]][-L:]
  hist[r, :len(hh)] = hh
  lens[r] = len(hh)
with torch.no_grad():
  scores = model.full_sort_predict(Interaction({"item_id_list": torch.tensor(hist), "item_length": torch.tensor(lens)})
                                   ).reshape(len(seqs), -1).numpy()
ours = np.full((len(seqs), n_ours), -np.inf)
ours[:, to_ours[to_ours >= 0]] = scores[:, to_ours >= 0]
np.save(args["out_dir"] + "/scores.npy", ours)
json.dump({"own_metrics": own, "train_seconds": seconds, "best_valid": float(trainer.best_valid_score)},
          open(args["out_dir"] + "/recbole.json", "w"))
'''


def ensure_venv(path: str) -> str:
  """The RecBole virtualenv's python, created with the pins RecBole 1.2.1 needs beside torch 2.13."""
  py = os.path.join(path, "bin", "python")
  if os.path.exists(py) and subprocess.run([py, "-c", "import recbole"], capture_output=True).returncode == 0:
    return py
  print(f"creating the RecBole virtualenv at {path} ({' '.join(RECBOLE_PINS)}) ...", flush=True)
  subprocess.run([sys.executable, "-m", "venv", path], check=True)
  subprocess.run([py, "-m", "pip", "install", "-q", *RECBOLE_PINS[:4]], check=True)
  subprocess.run([py, "-m", "pip", "install", "-q", RECBOLE_PINS[4]], check=True)
  return py


def write_atomic(data, directory: str) -> None:
  """`<name>.inter` with one row per interaction; timestamps are positions, so RecBole's order is ours."""
  os.makedirs(os.path.join(directory, data.name), exist_ok=True)
  with open(os.path.join(directory, data.name, f"{data.name}.inter"), "w", encoding="utf-8") as f:
    f.write("user_id:token\titem_id:token\ttimestamp:float\n")
    for u, seq in enumerate(data.sequences):
      f.writelines(f"u{u}\t{item}\t{t}\n" for t, item in enumerate(seq))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default="../shared/data/amazon2018-scientific", help="RecBole-format data folder")
  ap.add_argument("--category", default="Scientific")
  ap.add_argument("--venv", default=os.path.expanduser("~/.cache/calrec_jax/recbole-venv"),
                  help="RecBole's virtualenv (created if missing)")
  ap.add_argument("--seed", type=int, default=2020, help="seed of both runs (RecBole's default is 2020)")
  ap.add_argument("--out", default="", help="write the results as JSON here")
  args = ap.parse_args()

  import ml_collections
  from calrec_jax.baselines.train_id import IdModelTrainer, ranks_from_scores
  from calrec_jax.baselines.id_sequences import full_histories, id_examples
  from calrec_jax.data import recbole
  from calrec_jax.eval.metrics import markdown_table, ranking_metrics

  data = recbole.load_recbole(args.data, args.category)
  py = ensure_venv(args.venv)
  test = id_examples(data.sequences, "test", HPARAMS["max_len"])
  targets = test.targets
  hist = full_histories(data.sequences, "test", test.users)
  rows, seconds, epochs = {}, {}, {}
  with tempfile.TemporaryDirectory() as tmp:
    write_atomic(data, tmp)
    spec = {"hparams": HPARAMS, "dataset": data.name, "data_path": tmp, "out_dir": tmp, "seed": args.seed,
            "num_items": len(data.catalog), "test_sequences": [data.sequences[u] for u in test.users]}
    with open(os.path.join(tmp, "spec.json"), "w") as f:
      json.dump(spec, f)
    with open(os.path.join(tmp, "runner.py"), "w") as f:
      f.write(RECBOLE_RUNNER)
    print("RecBole SASRec: training ...", flush=True)
    t0 = time.time()
    subprocess.run([py, os.path.join(tmp, "runner.py"), os.path.join(tmp, "spec.json")], check=True, cwd=tmp,
                   env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    wall = time.time() - t0
    scores = np.load(os.path.join(tmp, "scores.npy"))
    with open(os.path.join(tmp, "recbole.json")) as f:
      rb = json.load(f)
  seconds["RecBole 1.2.1"] = rb["train_seconds"]
  rows["RecBole 1.2.1 SASRec, history kept"] = ranking_metrics(ranks_from_scores(scores, targets, None, 20))
  rows["RecBole 1.2.1 SASRec, history excluded"] = ranking_metrics(ranks_from_scores(scores, targets, hist, 20))
  print(f"RecBole: {rb['train_seconds']:.0f}s training ({wall:.0f}s with data loading); its own test metrics "
        f"(history kept): {json.dumps({k: round(v, 4) for k, v in rb['own_metrics'].items()})}", flush=True)

  cfg = ml_collections.ConfigDict(dict(HPARAMS, weight_decay=0.0))
  # ours twice: early stopping on validation NDCG@10 with history kept (RecBole's own selection) and with history
  # excluded (the framework's default); each is compared with RecBole in the setting it was selected on
  for selection, exclude in (("kept", False), ("excluded", True)):
    print(f"calrec_jax SASRec (selected on history {selection}): training ...", flush=True)
    ev = ml_collections.ConfigDict({"exclude_history": exclude})
    with tempfile.TemporaryDirectory() as tmp:
      trainer = IdModelTrainer("sasrec", cfg, data, ev, seed=args.seed)
      res = trainer.train(tmp, progress=True)
    seconds[f"calrec_jax ({selection})"], epochs[selection] = res.train_seconds, (res.epochs, res.best_epoch)
    ours = trainer.scores(res.params, test)
    rows[f"calrec_jax SASRec, history {selection}"] = ranking_metrics(
        ranks_from_scores(ours, targets, hist if exclude else None, 20))

  print(f"\n{data.name}: {len(targets)} test users, {len(data.catalog)} items, full ranking\n")
  print(markdown_table(rows))
  print("\n| setting | metric | RecBole | calrec_jax | ours / RecBole |\n|---|---|---:|---:|---:|")
  for setting in ("history kept", "history excluded"):
    a, b = rows[f"RecBole 1.2.1 SASRec, {setting}"], rows[f"calrec_jax SASRec, {setting}"]
    for k in ("recall@1", "recall@10", "ndcg@10", "mrr"):
      print(f"| {setting} | {k} | {a[k]:.4f} | {b[k]:.4f} | {b[k] / a[k]:.3f} |")
  print(f"\ntraining time (early stopping included): RecBole {seconds['RecBole 1.2.1']:.0f}s; calrec_jax "
        + ", ".join(f"{seconds[f'calrec_jax ({k})']:.0f}s selected on history {k} ({e} epochs, best {b})"
                    for k, (e, b) in epochs.items()))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "train_seconds": seconds, "recbole_own_metrics": rb["own_metrics"]}, f, indent=1)


if __name__ == "__main__":
  main()
