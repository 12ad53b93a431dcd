"""Generate -> BM25 -> quasi-round-robin -> full-ranking metrics; dense retrieval as the alternative."""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

from calrec_jax.data.cold_start import held_out_is_new
from calrec_jax.data.iterators import eval_examples
from calrec_jax.data.records import split_examples
from calrec_jax.data.sources import split_names
from calrec_jax.data.text import visible_text
from calrec_jax.eval import fusion_methods
from calrec_jax.eval.bm25 import BM25Index, tokenize
from calrec_jax.eval.generate import generate
from calrec_jax.eval.merge import merge_generations
from calrec_jax.eval.metrics import rank_of, ranking_metrics
from calrec_jax.eval.signals import MODEL_FREE_SIGNALS
from calrec_jax.model import item_ids
from calrec_jax.model.decoder import Decoder
from calrec_jax.model.sharding import gather_objects, gather_to_host
from calrec_jax.model.two_tower import TwoTower
from calrec_jax.progress import bar as progress_bar

log = logging.getLogger(__name__)


def eval_category_index(config, categories) -> int:
  """Index of data.eval_category among the loaded categories (the first when it is empty)."""
  names = [c.name for c in categories]
  want = config.data.eval_category
  if not want:
    return 0
  if want not in names:
    from calrec_jax.errors import ConfigError
    raise ConfigError(f"data.eval_category={want!r} is not among the loaded categories {names}")
  return names.index(want)


def item_texts(parts, cat: int) -> list[str]:
  return [parts.encoder.item_text(cat, i) for i in range(len(parts.categories[cat].catalog))]


def evaluate_bm25(config, parts, params, rows, cat: int, progress: bool = True, mesh=None,
                  shared_prefill: bool = True, sort_by_length: bool = True, constrained: bool = False
                  ) -> tuple[dict, list[dict]]:
  """Ranked lists by generation + BM25 for each (user, history, target) row; returns metrics and records (in the
  order of `rows`).

  Users are batched by prompt length (`sort_by_length`: less left padding in the prefill) and each prompt is
  prefilled once for its N samples (`shared_prefill`). A generation that is empty (or only whitespace)
  retrieves nothing and the user's list is filled from the other generations; a user whose generations are all
  empty gets an empty list (rank: miss) and is counted. `constrained`: sampling follows the catalog trie, so
  every finished generation is the text of a catalog item. With several processes, generation runs sharded
  over all of them and each process does the BM25 retrieval and merging of every process_count-th user; the
  records are then gathered, so every process returns the same metrics and records.
  """
  ec = config.eval
  ks = [int(k) for k in split_names(ec.ks)]
  kmax = max(ks)
  index = BM25Index.from_texts(item_texts(parts, cat), k1=ec.bm25_k1, b=ec.bm25_b, epsilon=ec.bm25_epsilon)
  tok = parts.tokenizer
  stop_ids = [tok.eos_id] + [i for i in tok.encode("\n") if tok.decode([i]) == "\n"]
  dec = Decoder(parts.model_cfg, parts.model.dtype)
  trie = None
  if constrained:
    from calrec_jax.eval.constrained import CatalogTrie
    n_items = len(parts.categories[cat].catalog)
    trie = CatalogTrie.build([parts.encoder.item_tokens(cat, i) for i in range(n_items)], tok.eos_id)
    if ec.max_new_tokens <= parts.encoder.spec.max_item_tokens:
      log.warning("eval.max_new_tokens=%d < data.max_item_tokens + 1: constrained samples of long items are cut "
                  "before they end", ec.max_new_tokens)
  prompts = [parts.encoder.prompt_tokens(cat, h)[0] for _, h, _ in rows]
  order = sorted(range(len(rows)), key=lambda i: len(prompts[i])) if sort_by_length else list(range(len(rows)))
  records = [None] * len(rows)
  me, processes = jax.process_index(), jax.process_count()
  bar = progress_bar(total=len(rows), desc="evaluate", unit="user", disable=not progress)
  for start in range(0, len(rows), ec.batch_size):
    chunk = order[start:start + ec.batch_size]
    samples = generate(dec, params["decoder"], [prompts[i] for i in chunk], ec.num_samples, ec.max_new_tokens,
                       stop_ids, seed=config.seed + start, temperature=ec.temperature, top_k=ec.top_k,
                       top_p=ec.top_p, beam_search=ec.beam_search and not constrained, mesh=mesh,
                       shared_prefill=shared_prefill, trie=trie)
    for j, (i, gens) in enumerate(zip(chunk, samples)):
      if (start + j) % processes != me:  # another process retrieves this user
        continue
      user, hist, target = rows[i]
      texts = [visible_text(tok.decode(g)) for g in gens]
      depth = kmax + (len(hist) if ec.exclude_history else 0)
      ranked, scores = index.top_k([tokenize(t) for t in texts], depth)
      top = merge_generations(texts, ranked, scores, kmax, set(hist) if ec.exclude_history else set())
      records[i] = {"user": parts.categories[cat].user_ids[user], "target": int(target),
                    "rank": rank_of(target, top), "top": top, "generations": texts}
    bar.update(len(chunk))
  bar.close()
  if processes > 1:
    log.info("BM25 retrieval: process %d ranked %d of %d users", me, sum(r is not None for r in records), len(rows))
    for part in gather_objects({i: r for i, r in enumerate(records) if r is not None}):
      for i, r in part.items():
        records[i] = r
  ranks = [r["rank"] for r in records]
  empty_users = sum(not r["top"] for r in records)
  if empty_users:
    log.warning("%d of %d users: no generation matched any catalog item (empty or unmatched text); they count "
                "as misses (see 'generations' in rankings_bm25.jsonl)", empty_users, len(rows))
  metrics = ranking_metrics(ranks, ks)
  metrics["users_without_retrieval"] = empty_users
  return metrics, records


def item_embeddings(parts, params, cat: int, batch_size: int = 64, items: np.ndarray | None = None,
                    table_ids: np.ndarray | None = None) -> np.ndarray:
  """v_T of every catalog item [I, E] (item tower on the item text), or of `items` only [len(items), E]; with
  learned item identities in `params` (model/item_ids.py), each item's offset added, and with a learned item bias
  its bias appended ([..., E + 1]): item i of category `cat` is row table_ids[i] of the tables (default: its
  global id; -1: an item the tables do not hold)."""
  enc, tok = parts.encoder, parts.tokenizer
  li = enc.spec.item_len
  wanted = np.arange(len(parts.categories[cat].catalog)) if items is None else np.asarray(items, np.int64)
  n = len(wanted)
  fn = _tower_fn(parts.model, "item")
  out, t0 = [], time.time()
  for start in range(0, n, batch_size):
    ids = wanted[start:start + batch_size].tolist()
    toks = np.full((batch_size, li), tok.pad_id, np.int32)
    mask = np.zeros((batch_size, li), bool)
    tmask = np.zeros((batch_size, li), bool)
    for r, i in enumerate(ids):
      seq = [tok.bos_id] + enc.item_tokens(cat, i) + [tok.eos_id]
      toks[r, :len(seq)], mask[r, :len(seq)], tmask[r, 1:len(seq) - 1] = seq, True, True
    pos = np.broadcast_to(np.arange(li, dtype=np.int32), (batch_size, li))
    out.append(np.asarray(gather_to_host(fn(params, toks, pos, mask, tmask)))[:len(ids)])
  took = time.time() - t0
  log.info("item tower: embedded %d items in %.1fs (%.0f items/s, batches of %d)", n, took, n / max(took, 1e-9),
           batch_size)
  if table_ids is None:
    table_ids = parts.encoder.global_item_ids(cat)
  return item_ids.apply_to_catalog(np.concatenate(out), params, np.asarray(table_ids)[wanted])


_TOWER_FNS: dict[tuple[int, str], tuple[TwoTower, object]] = {}  # (id(model), tower) -> (model, jitted fn)


def _tower_fn(model: TwoTower, tower: str):
  """The jitted user ('user': fn(params, batch)) or item ('item': fn(params, tokens, positions, mask,
  text_mask)) tower of `model`, the same function object for every call: a caller that ranks batch by batch (the
  recommender) or validates every N steps (training) compiles each shape once."""
  key = (id(model), tower)
  if key not in _TOWER_FNS or _TOWER_FNS[key][0] is not model:
    if tower == "user":
      fn = jax.jit(lambda p, b: model.apply({"params": p}, b["tokens"], b["positions"], b["input_mask"],
                                            b["history_mask"], method=TwoTower.user_embedding))
    else:
      fn = jax.jit(lambda p, t, pos, m, tm: model.apply({"params": p}, t, pos, m, tm, method=TwoTower.item_embedding))
    _TOWER_FNS[key] = (model, fn)
  return _TOWER_FNS[key][1]


def user_embeddings(config, parts, params, rows, cat: int) -> np.ndarray:
  """v_U of each (user, history, target) row [U, E], from the prompt alone (the target is not read: causal
  attention keeps it out of the hidden states over the history); [U, E + 1] with a 1 appended when the params
  hold a learned item bias, matching `item_embeddings` (model/item_ids.py)."""
  fn = _tower_fn(parts.model, "user")
  enc, bs = parts.encoder, config.eval.batch_size
  prompts = [enc.prompt_tokens(cat, h)[0] for _, h, _ in rows]
  # batches of similar length: a batch takes the bucket of its longest prompt, so a few long prompts spread over
  # every batch would put nearly all of them in the largest bucket
  order = np.argsort([len(p) for p in prompts], kind="stable")
  out = []
  for start in range(0, len(rows), bs):
    chunk = order[start:start + bs]
    batch = enc.collate_prompts([prompts[i] for i in chunk], bs)
    out.append(np.asarray(gather_to_host(fn(params, batch)))[:len(chunk)])
  if not out:
    return np.zeros((0, 0), np.float32)
  emb = np.concatenate(out)                                                  # [U, E] in length order
  result = np.empty_like(emb)
  result[order] = emb
  return item_ids.user_side(result, params)                                  # [U, E(+1)] in row order


def ranked_records(config, data, rows, scores: np.ndarray, ks: list[int]) -> tuple[list[int], list[dict]]:
  """Ranks and records of rows ranked by scores [U, I] (history items excluded as configured)."""
  from calrec_jax.eval.fusion import exclusion_mask, target_ranks, top_items
  excluded = exclusion_mask([h for _, h, _ in rows], scores.shape[1]) if config.eval.exclude_history else None
  targets = np.asarray([t for _, _, t in rows], np.int64)
  ranks = target_ranks(scores, targets, excluded, max(ks)).tolist()
  tops = top_items(scores, excluded, max(ks)).tolist()
  records = [{"user": data.user_ids[u], "target": int(t), "rank": r, "top": top}
             for (u, _, t), r, top in zip(rows, ranks, tops)]
  return ranks, records


def evaluate_dense(config, parts, params, rows, cat: int, item_emb: np.ndarray | None = None) -> tuple[dict, list]:
  """Rank every catalog item by v_U . v_T."""
  ks = [int(k) for k in split_names(config.eval.ks)]
  if item_emb is None:
    item_emb = item_embeddings(parts, params, cat, config.eval.item_batch_size)
  scores = user_embeddings(config, parts, params, rows, cat) @ item_emb.T                # [U, I]
  ranks, records = ranked_records(config, parts.categories[cat], rows, scores, ks)
  return ranking_metrics(ranks, ks), records


def evaluate_popularity(config, data, rows) -> tuple[dict, list]:
  """Baseline: items ranked by their count in the training sequences of `data` (a CategoryData), history items
  excluded as configured."""
  from calrec_jax.data.records import item_counts
  ec = config.eval
  ks = [int(k) for k in split_names(ec.ks)]
  order = np.argsort(-item_counts(data.sequences, len(data.catalog)), kind="stable")
  ranks, records = [], []
  for user, hist, target in rows:
    seen = set(hist) if ec.exclude_history else set()
    top = [int(i) for i in order[:max(ks) + len(seen)] if int(i) not in seen][:max(ks)]
    ranks.append(rank_of(target, top))
    records.append({"user": data.user_ids[user], "target": int(target), "rank": ranks[-1]})
  return ranking_metrics(ranks, ks), records


def beam_rankings(config, parts, params, rows, cat: int, mesh=None, progress: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Catalog-constrained beam search for each row's prompt: (items [U, K], scores [U, K]), best first, -1 where a
  beam named no item; K = eval.beams, the softmax over the catalog's tokens when eval.sub_vocabulary."""
  from calrec_jax.eval.beams import CatalogBeamSearch
  ec, enc = config.eval, parts.encoder
  n_items = len(parts.categories[cat].catalog)
  search = CatalogBeamSearch(Decoder(parts.model_cfg, parts.model.dtype),
                             [enc.item_tokens(cat, i) for i in range(n_items)], parts.tokenizer.eos_id,
                             sub_vocabulary=ec.sub_vocabulary)
  prompts = [enc.prompt_tokens(cat, h)[0] for _, h, _ in rows]
  order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
  items = np.full((len(rows), ec.beams), -1, np.int64)
  scores = np.full((len(rows), ec.beams), -np.inf, np.float32)
  bar = progress_bar(total=len(rows), desc="beams", unit="user", disable=not progress)
  for start in range(0, len(rows), ec.batch_size):
    chunk = order[start:start + ec.batch_size]
    it, sc = search.search(params["decoder"], [prompts[i] for i in chunk], ec.beams,
                           length_penalty=ec.beam_length_penalty, mesh=mesh)
    items[chunk], scores[chunk] = it, sc
    bar.update(len(chunk))
  bar.close()
  return items, scores


def evaluate_beams(config, parts, params, rows, cat: int, mesh=None, beams=None) -> tuple[dict, list]:
  """Rank by constrained beam search: each user's beams, best first, history items left out; `beams`: the
  (items, scores) of `beam_rankings` when already computed."""
  ks = [int(k) for k in split_names(config.eval.ks)]
  items, scores = beams if beams is not None else beam_rankings(config, parts, params, rows, cat, mesh)
  data = parts.categories[cat]
  ranks, records = [], []
  for (user, hist, target), its, sc in zip(rows, items, scores):
    seen = set(hist) if config.eval.exclude_history else set()
    top = [int(i) for i in dict.fromkeys(its.tolist()) if i >= 0 and int(i) not in seen][:max(ks)]
    ranks.append(rank_of(target, top))
    records.append({"user": data.user_ids[user], "target": int(target), "rank": ranks[-1], "top": top,
                    "scores": [float(x) for x, i in zip(sc, its) if i >= 0 and int(i) not in seen][:max(ks)]})
  return ranking_metrics(ranks, ks), records


def beam_signal(items: np.ndarray, scores: np.ndarray, num_items: int) -> np.ndarray:
  """[U, I] the beams' probabilities (a softmax over each user's finite beam scores), 0 for items no beam named."""
  out = np.zeros((len(items), num_items), np.float32)
  finite = np.isfinite(scores) & (items >= 0)
  shifted = np.where(finite, scores - np.where(finite, scores, -np.inf).max(1, keepdims=True), -np.inf)
  prob = np.exp(shifted)
  prob /= np.maximum(prob.sum(1, keepdims=True), 1e-30)
  rows = np.repeat(np.arange(len(items)), items.shape[1])
  keep = finite.reshape(-1)
  np.add.at(out, (rows[keep], items.reshape(-1)[keep]), prob.reshape(-1)[keep])
  return out


FUSION_SIGNALS = ("dense", "beam", "generation", *MODEL_FREE_SIGNALS)


def generation_signal(records: list[dict], num_items: int) -> np.ndarray:
  """[U, I] from generation + BM25 (the paper's ranking): 1 / position of each item in the user's merged list
  (`records[u]['top']`, best first), 0 for items the generations did not retrieve."""
  out = np.zeros((len(records), num_items), np.float32)
  for u, r in enumerate(records):
    top = np.asarray(r["top"], np.int64)
    out[u, top] = 1.0 / np.arange(1, len(top) + 1)
  return out


def fusion_signals(config, parts, params, rows, cat: int, item_emb: np.ndarray | None, mesh=None, beams=None,
                   generated: list[dict] | None = None) -> dict[str, np.ndarray]:
  """The standardised [U, I] score matrices of `eval.fusion`'s signals for these rows (`beams`: their
  `beam_rankings`, `generated`: their generation + BM25 records, when already computed)."""
  from calrec_jax.eval.fusion import standardise
  from calrec_jax.eval.signals import model_free_signals
  names = split_names(config.eval.fusion)
  raw = model_free_signals(names, item_texts(parts, cat), parts.categories[cat].sequences, [h for _, h, _ in rows],
                           config.eval)
  if "dense" in names:
    raw["dense"] = user_embeddings(config, parts, params, rows, cat) @ item_emb.T
  if "beam" in names:
    items, scores = beams if beams is not None else beam_rankings(config, parts, params, rows, cat, mesh)
    raw["beam"] = beam_signal(items, scores, len(parts.categories[cat].catalog))
  if "generation" in names:
    if generated is None:
      generated = evaluate_bm25(config, parts, params, rows, cat, mesh=mesh)[1]
    raw["generation"] = generation_signal(generated, len(parts.categories[cat].catalog))
  return {n: standardise(raw[n]) for n in names}


def evaluate_fused(config, parts, params, rows, valid_rows, cat: int, item_emb: np.ndarray | None = None,
                   mesh=None, beams=None, generated: list[dict] | None = None) -> tuple[dict, list, dict]:
  """The fused ranking of `rows` (the test split) with weights chosen on `valid_rows` only; returns metrics,
  records and the choice (eval/fusion_methods.py: how it ranks, its validation metric, each signal alone)."""
  from calrec_jax.eval.fusion import exclusion_mask
  ec = config.eval
  ks = [int(k) for k in split_names(ec.ks)]
  if "dense" in split_names(ec.fusion) and item_emb is None:
    item_emb = item_embeddings(parts, params, cat, config.eval.item_batch_size)
  n_items = len(parts.categories[cat].catalog)
  valid = fusion_signals(config, parts, params, valid_rows, cat, item_emb, mesh)
  excluded = exclusion_mask([h for _, h, _ in valid_rows], n_items) if ec.exclude_history else None
  choice = fusion_methods.fit(ec.get("fusion_method", "weights"), valid, [t for _, _, t in valid_rows], excluded,
                              [len(h) for _, h, _ in valid_rows], ec.fusion_metric, ks, config.seed)
  del valid, excluded
  test = fusion_signals(config, parts, params, rows, cat, item_emb, mesh, beams, generated)
  fused = fusion_methods.apply(choice, test, [len(h) for _, h, _ in rows])
  ranks, records = ranked_records(config, parts.categories[cat], rows, fused, ks)
  return ranking_metrics(ranks, ks), records, choice


def run_evaluation(config, parts, params, out_dir: str, split: str | None = None, params_source: str = "params"
                   ) -> dict[str, dict]:
  """Evaluate BM25 (and dense) retrieval on the eval category; writes metrics.json, metrics.md, records.

  Params are checked against the model config and placed on the mesh of `config.mesh`; generation is sharded
  over its data x fsdp axes.
  """
  from calrec_jax.eval.metrics import markdown_table
  from calrec_jax.model import sharding as shd
  from calrec_jax.train.checkpoint import check_params
  from calrec_jax.model.variables import example_batch, params_shardings
  cat = eval_category_index(config, parts.categories)
  split = split or config.eval.split
  mesh = shd.mesh_from_config(config.mesh)
  spec = parts.encoder.spec
  shardings, abstract = params_shardings(
      parts.model, mesh, example_batch(1, parts.encoder.buckets[-1], spec.target_len, spec.item_len))
  check_params(params, abstract, params_source)
  params = jax.device_put(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), shardings)
  rows = eval_examples(parts.encoder, cat, split, config.eval.max_users, config.seed)
  data = parts.categories[cat]
  everyone = len(held_out_is_new(split_examples(data.sequences, split), data.sequences, data.new_items))
  if len(rows) < everyone:
    log.info("evaluating a fixed random %d of the %d %s users (eval.max_users=%d; 0 evaluates every user)",
             len(rows), everyone, split, config.eval.max_users)
  if not len(parts.categories[cat].catalog):
    from calrec_jax.errors import DataError
    raise DataError(f"category {parts.categories[cat].name!r} has an empty catalog: nothing to rank")
  if not rows:
    from calrec_jax.errors import DataError
    raise DataError(f"no {split} users in category {parts.categories[cat].name!r}")
  results, records, notes = {}, {}, []
  methods = ["bm25", "dense"] if config.eval.retrieval == "bm25" else ["dense"]
  if config.eval.constrained:
    methods.insert(0, "bm25_constrained")
  if config.eval.beams:
    methods.append("beam")
  if config.eval.fusion:
    methods.append("fused")
  item_emb = beams = None
  for method in methods:
    t0 = time.time()
    if method.startswith("bm25"):
      results[method], records[method] = evaluate_bm25(config, parts, params, rows, cat, mesh=mesh,
                                                       constrained=method == "bm25_constrained")
    elif method == "dense":
      item_emb = item_embeddings(parts, params, cat, config.eval.item_batch_size)
      results[method], records[method] = evaluate_dense(config, parts, params, rows, cat, item_emb)
    elif method == "beam":
      beams = beam_rankings(config, parts, params, rows, cat, mesh)
      results[method], records[method] = evaluate_beams(config, parts, params, rows, cat, mesh, beams)
    else:
      valid_rows = eval_examples(parts.encoder, cat, "valid", config.eval.max_users, config.seed)
      results[method], records[method], choice = evaluate_fused(config, parts, params, rows, valid_rows, cat, item_emb,
                                                                mesh, beams, records.get("bm25"))
      results["fused_choice"] = choice
      notes.append(fusion_methods.describe(choice, config.eval.fusion_metric))
    log.info("%s retrieval on %d %s users of %s: %.1fs", method, len(rows), split, parts.categories[cat].name,
             time.time() - t0)
  results["popularity"], records["popularity"] = evaluate_popularity(config, parts.categories[cat], rows)
  if jax.process_index() != 0:  # every process computed the same results; process 0 writes them
    return results
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
    json.dump({"category": parts.categories[cat].name, "split": split,
               "exclude_history": bool(config.eval.exclude_history), **results}, f, indent=1)
  table = markdown_table({("Popularity (baseline)" if m == "popularity" else f"CALRec ({m})"): r
                          for m, r in results.items() if m != "fused_choice"})
  table = "\n\n".join([table] + notes)
  with open(os.path.join(out_dir, "metrics.md"), "w", encoding="utf-8") as f:
    f.write(f"{parts.categories[cat].name}, {split} split\n\n{table}\n")
  for method, recs in records.items():
    with open(os.path.join(out_dir, f"rankings_{method}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
  print(table)
  return results
