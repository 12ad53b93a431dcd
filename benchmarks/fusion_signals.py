"""Which extra signals would help the fused ranking? Candidate signals beside a trained workdir's dense retrieval,
each signal set's weights fitted on one half of the VALIDATION users and measured on the other half (and the
other way round): the test split is never read.

  python benchmarks/fusion_signals.py --config=configs/compare/scientific.py:epochs --method=calrec_epochs \
      --workdir=workdirs/compare_scientific_epochs/calrec_epochs

Candidates: BM25 over the last 1, 2, 3 or 5 history texts (bm25_1 ... bm25_5), a popularity prior and its square
and square root, the cosine of each item's item-tower vector with the user's last item's (item_last), and
products of standardised signals (dense_x_pop, bm25_x_pop), and the popularity and dense signals scaled by how
popular each user's history is (pop_x_user, dense_x_user: the user's mean log(1 + count) over their history
items, standardised over the users), which lets one set of weights lean on popularity for users who buy popular
items and on the model for the rest. Prints one line per signal set: the cross-fitted
validation NDCG@10 and Recall@1 and the weights each half chose (--fusion_method=learned: the learned fusion of
eval/learned_fusion.py instead, fitted the same way; its line shows the weights it started from).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SETS = ("dense,bm25_3,popularity", "dense,bm25_1,bm25_3,popularity", "dense,bm25_1,bm25_2,bm25_3,bm25_5,popularity",
        "dense,item_last,bm25_3,popularity", "dense,bm25_3,popularity,pop_sq", "dense,bm25_3,popularity,pop_sqrt",
        "dense,bm25_3,popularity,dense_x_pop", "dense,bm25_3,popularity,bm25_x_pop",
        "dense,bm25_3,popularity,pop_x_user", "dense,bm25_3,popularity,dense_x_user",
        "dense,bm25_3,popularity,pop_x_user,dense_x_user")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="the comparison config (configs/compare/*.py[:arg])")
  p.add_argument("--method", required=True, help="the CALRec variant of the config the workdir trained")
  p.add_argument("--workdir", required=True, help="the trained variant's folder (<comparison>/<method>)")
  p.add_argument("--sets", default=";".join(SETS), help="';'-separated signal sets, each ','-separated")
  p.add_argument("--seed", type=int, default=0, help="of the split of the validation users into halves")
  p.add_argument("--fusion_method", default="weights", choices=("weights", "learned"),
                 help="how each signal set is fused (eval/fusion_methods.py)")
  return p.parse_args()


def signals(config, workdir: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
  """Standardised [U, I] candidate signals of the validation users, their targets [U], history mask [U, I] and
  history lengths [U]."""
  import jax
  from calrec_jax.data.iterators import eval_examples
  from calrec_jax.data.records import item_counts
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.eval.bm25 import BM25Index
  from calrec_jax.eval.fusion import exclusion_mask, standardise
  from calrec_jax.eval.signals import history_bm25_scores, popularity_scores
  from calrec_jax.model.run_parts import build
  from calrec_jax.train.checkpoint import params_from_workdir
  parts = build(config, workdir)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params_from_workdir(workdir, None))
  cat = ev.eval_category_index(config, parts.categories)
  rows = eval_examples(parts.encoder, cat, "valid", config.eval.max_users, config.seed)
  item_emb = ev.item_embeddings(parts, params, cat, config.eval.item_batch_size)     # [I, E], unit rows
  texts, hist = ev.item_texts(parts, cat), [h for _, h, _ in rows]
  ec = config.eval
  index = BM25Index.from_texts(list(texts), k1=ec.bm25_k1, b=ec.bm25_b, epsilon=ec.bm25_epsilon)
  counts = item_counts(parts.categories[cat].sequences, len(texts))                           # [I]
  pop = popularity_scores(counts, len(rows))
  raw = {"dense": ev.user_embeddings(config, parts, params, rows, cat) @ item_emb.T, "popularity": pop,
         "pop_sq": pop ** 2, "pop_sqrt": np.sqrt(pop),
         "item_last": np.stack([item_emb[h[-1]] for h in hist]) @ item_emb.T}
  for k in (1, 2, 3, 5):
    raw[f"bm25_{k}"] = history_bm25_scores(index, texts, hist, k)
  out = {k: standardise(v) for k, v in raw.items()}
  out["dense_x_pop"] = standardise(out["dense"] * out["popularity"])
  out["bm25_x_pop"] = standardise(out["bm25_3"] * out["popularity"])
  user = np.asarray([np.log1p(counts[list(h)]).mean() for h in hist], np.float32)             # [U]
  user = ((user - user.mean()) / max(float(user.std()), 1e-6))[:, None]                          # [U, 1]
  out["pop_x_user"] = out["popularity"] * user
  out["dense_x_user"] = out["dense"] * user
  return (out, np.asarray([t for _, _, t in rows], np.int64), exclusion_mask(hist, len(texts)),
          np.asarray([len(h) for h in hist]))


def cross_fitted(sig: dict, targets: np.ndarray, excluded: np.ndarray, lengths: np.ndarray, names: list[str],
                 seed: int, method: str = "weights"):
  """Mean over the two halves of (NDCG@10, Recall@1) with the fusion fitted on the other half; its weights (the
  learned fusion: the weights it started from)."""
  from calrec_jax.eval import fusion_methods
  from calrec_jax.eval.fusion import target_ranks
  from calrec_jax.eval.metrics import ranking_metrics
  perm = np.random.default_rng(seed).permutation(len(targets))
  halves = (perm[:len(perm) // 2], perm[len(perm) // 2:])
  scores, chosen = [], []
  for fit, held in (halves, halves[::-1]):
    choice = fusion_methods.fit(method, {n: sig[n][fit] for n in names}, targets[fit], excluded[fit], lengths[fit])
    fused = fusion_methods.apply(choice, {n: sig[n][held] for n in names}, lengths[held])
    m = ranking_metrics(target_ranks(fused, targets[held], excluded[held], 20), (1, 10))
    scores.append((m["ndcg@10"], m["recall@1"]))
    chosen.append(choice.get("weights") or choice.get("start"))
  return np.mean(scores, axis=0), chosen


def main():
  args = parse_args()
  from calrec_jax.compare.methods import variant_config
  config = variant_config(args.config, args.method)
  sig, targets, excluded, lengths = signals(config, args.workdir)
  print(f"{len(targets)} validation users, halves fitted on each other (seed {args.seed})")
  for spec in args.sets.split(";"):
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in sig]
    if unknown:
      sys.exit(f"error: --sets: unknown signal {unknown[0]!r}; choose from {sorted(sig)}")
    (ndcg, r1), chosen = cross_fitted(sig, targets, excluded, lengths, names, args.seed, args.fusion_method)
    print(f"NDCG@10 {ndcg:.4f}  R@1 {r1:.4f}  {','.join(names)}  weights {chosen}", flush=True)


if __name__ == "__main__":
  main()
