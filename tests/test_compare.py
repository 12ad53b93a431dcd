"""The comparison: baselines that learn, ablation overrides, resumable runs, significance, the CLI end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from calrec_jax.compare import methods as methods_lib
from calrec_jax.compare.significance import compare_rankings, paired_tests
from calrec_jax.errors import ConfigError
from configs.compare import office as office_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_compare_config(methods):
  from configs.compare import synthetic
  c = synthetic.get_config("smoke")
  c.methods = methods
  return c


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_id_baselines_learn_a_sequential_pattern_far_above_popularity(name, tmp_path):
  from calrec_jax.baselines.id_sequences import id_examples
  from calrec_jax.baselines.train_id import IdModelTrainer
  from calrec_jax.data import synthetic
  from calrec_jax.data.iterators import eval_rows
  from calrec_jax.eval.evaluate import evaluate_popularity
  from calrec_jax.eval.metrics import ranking_metrics
  from configs.compare import synthetic as compare_synthetic
  cfg = compare_synthetic.get_config()
  data = synthetic.make_dataset(["Garden"])[0]  # 600 users; complements and brand loyalty
  mc = cfg[name]
  # a higher rate than the config's 1e-3 learns the pattern in 8 epochs instead of 25 (the test's cost)
  mc.max_epochs, mc.patience, mc.batch_size, mc.learning_rate = 8, 4, 128, 5e-3
  trainer = IdModelTrainer(name, mc, data, cfg.calrec.eval, seed=0)
  res = trainer.train(str(tmp_path / name), progress=False)
  assert res.best_epoch >= 1 and res.history[0]["loss"] > res.history[res.best_epoch - 1]["loss"]
  rows = eval_rows(data.sequences, "test")
  test = id_examples(data.sequences, "test", mc.max_len, [u for u, _, _ in rows])
  ours = ranking_metrics(trainer.ranks(res.params, test, "test", 20).tolist())
  pop, _ = evaluate_popularity(cfg.calrec, data, rows)
  assert ours["users"] == pop["users"] == 600
  assert ours["ndcg@10"] > 2 * pop["ndcg@10"] and ours["recall@10"] > 1.5 * pop["recall@10"], (ours, pop)


def test_id_trainer_resumes_at_the_epoch_it_reached(tmp_path):
  from calrec_jax.baselines.train_id import IdModelTrainer
  from calrec_jax.data import synthetic
  from configs.compare import synthetic as compare_synthetic
  cfg = compare_synthetic.get_config()
  data = synthetic.make_dataset(["Office"])[0]
  mc = cfg.sasrec
  mc.patience, mc.batch_size = 100, 64
  mc.max_epochs = 4
  whole = IdModelTrainer("sasrec", mc, data, cfg.calrec.eval).train(str(tmp_path / "whole"), progress=False)
  mc.max_epochs = 2
  IdModelTrainer("sasrec", mc, data, cfg.calrec.eval).train(str(tmp_path / "split"), progress=False)
  mc.max_epochs = 4
  resumed = IdModelTrainer("sasrec", mc, data, cfg.calrec.eval).train(str(tmp_path / "split"), progress=False)
  assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
  np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in whole.history], rtol=1e-5)
  for a, b in zip(jax_leaves(resumed.params), jax_leaves(whole.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


@pytest.mark.parametrize("variant,changed", [
    ("calrec", {}),
    ("calrec_two_stage", {"pipeline.enabled": True}),
    ("calrec_no_tt", {"loss.w_tt": 0.0}),
    ("calrec_no_ut", {"loss.w_ut": 0.0}),
    ("calrec_lm_only", {"loss.w_tt": 0.0, "loss.w_ut": 0.0}),
    ("calrec_contrastive_only", {"loss.w_nig": 0.0, "eval.retrieval": "dense"}),
])
def test_ablation_overrides_change_exactly_what_they_name(variant, changed):
  from configs.compare import scientific
  cfg = scientific.get_config()
  base = flat(cfg.calrec.to_dict())
  got = flat(methods_lib.apply_overrides(cfg.calrec, cfg.variants[variant]).to_dict())
  diff = {k: got[k] for k in got if got[k] != base[k]}
  assert diff == changed
  assert cfg.calrec.loss.w_tt == 0.5  # the base config is not modified


def test_override_errors_name_the_key():
  cfg = smoke_compare_config("popularity")
  with pytest.raises(ConfigError, match="loss.w_zz"):
    methods_lib.apply_overrides(cfg.calrec, "loss.w_zz=1")
  with pytest.raises(ConfigError, match="expected a float"):
    methods_lib.apply_overrides(cfg.calrec, "loss.w_tt=abc")
  cfg.methods = "popularity,sasrecc"
  with pytest.raises(ConfigError, match="unknown method 'sasrecc'"):
    methods_lib.check_methods(cfg)
  cfg.methods = "calrec_no_tt"
  cfg.variants.calrec_no_tt = "loss.temperature=-1"
  with pytest.raises(ConfigError, match="temperature"):
    methods_lib.check_methods(cfg)


def test_significance_detects_a_planted_difference_and_not_identical_rankings():
  rng = np.random.default_rng(0)
  users = [f"u{i}" for i in range(400)]
  base = rng.integers(0, 30, size=400)  # ranks 0 (miss) .. 29
  better = np.where(rng.random(400) < 0.25, 1, base)  # a quarter of the users get the item at rank 1
  planted = compare_rankings(dict(zip(users, better.tolist())), dict(zip(users, base.tolist())))
  same = compare_rankings(dict(zip(users, base.tolist())), dict(zip(users, base.tolist())))
  for m in ("ndcg@10", "recall@10"):
    assert planted[m]["p_ttest"] < 0.05 and planted[m]["p_bootstrap"] < 0.05 and planted[m]["mean_diff"] > 0
    assert same[m]["p_ttest"] == 1.0 and same[m]["p_bootstrap"] == 1.0 and same[m]["mean_diff"] == 0.0
  noise = paired_tests(rng.random(300), rng.random(300))  # two samples of the same distribution
  assert noise["p_ttest"] > 0.01 and noise["ci95_low"] < 0 < noise["ci95_high"]


def test_resume_of_a_half_finished_comparison_runs_nothing_finished_again(tmp_path, monkeypatch):
  from calrec_jax.compare.run import run_comparison
  work = str(tmp_path / "cmp")
  calls = []
  real = methods_lib.run_method

  def crashing(name, *a, **kw):
    calls.append(name)
    if name == "sasrec" and calls.count("sasrec") == 1:
      raise KeyboardInterrupt("killed")
    return real(name, *a, **kw)
  monkeypatch.setattr(methods_lib, "run_method", crashing)
  cfg = smoke_compare_config("popularity,bm25_history,sasrec")
  with pytest.raises(KeyboardInterrupt):
    run_comparison(cfg, work)
  assert calls == ["popularity", "bm25_history", "sasrec"]
  assert not os.path.exists(os.path.join(work, "comparison.md"))
  before = {m: os.path.getmtime(os.path.join(work, m, "result.json")) for m in ("popularity", "bm25_history")}
  paths = run_comparison(cfg, work)  # resumes: only sasrec runs
  assert calls == ["popularity", "bm25_history", "sasrec", "sasrec"]
  assert {m: os.path.getmtime(os.path.join(work, m, "result.json")) for m in before} == before
  cfg.methods = "popularity,bm25_history,sasrec,gru4rec"  # extended: only the new method runs
  run_comparison(cfg, work)
  assert calls[4:] == ["gru4rec"]
  doc = json.load(open(paths["json"]))
  assert list(doc["methods"]) == ["popularity", "bm25_history", "sasrec", "gru4rec"]
  sasrec = doc["methods"]["sasrec"]["notes"]
  assert f"SASRec trained {sasrec['epochs']} epochs and kept epoch {sasrec['best_epoch']}" in open(paths["md"]).read()
  assert os.path.getsize(paths["png"]) > 10_000
  cfg.bm25_history.num_items = 5  # a finished method's settings changed: an error, not a stale row
  with pytest.raises(ConfigError, match="bm25_history.*other settings"):
    run_comparison(cfg, work)


@pytest.mark.slow
def test_compare_cli_end_to_end_with_calrec_variants_and_zero_shot(tmp_path):
  """The command a user runs: every CALRec variant, every baseline and the zero-shot LLM (a tiny converted
  checkpoint standing in for Gemma), one table with relative changes and significance."""
  from calrec_jax.data import synthetic
  from calrec_jax.data.text import FIRST_ITEM, NEXT_ITEM, PROMPT_HEADER, render_item
  from calrec_jax.data.tokenizer import train_tokenizer
  from calrec_jax.model.config import preset
  from calrec_jax.model.decoder import Decoder
  from calrec_jax.model.loading import save_converted
  import jax
  import jax.numpy as jnp
  cats = synthetic.make_dataset(["Office"])
  tok = train_tokenizer([render_item(a) for a in cats[0].catalog.attributes]
                        + ["\n".join([PROMPT_HEADER, FIRST_ITEM, NEXT_ITEM])], 400)
  mcfg = preset("tiny", vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
  t = jnp.zeros((1, 4), jnp.int32)
  import flax.linen as nn
  params = nn.meta.unbox(Decoder(mcfg).init(jax.random.PRNGKey(0), t, t, t > -1)["params"])
  save_converted(str(tmp_path / "llm"), mcfg, jax.device_get(params), tok)
  work = tmp_path / "cmp"
  cmd = [sys.executable, "-m", "calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke",
         f"--workdir={work}", f"--config.methods={methods_lib.BASELINES[0]},sasrec,zero_shot,calrec,"
         "calrec_two_stage,calrec_contrastive_only",
         f"--config.zero_shot.overrides=model.pretrained={tmp_path / 'llm'}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  md = (work / "comparison.md").read_text()
  for row in ("Popularity", "SASRec", "Zero-shot", "CALRec (stage 2) · generation + BM25", "CALRec (stage 2) · dense",
              "CALRec (stage 1 + 2) · dense", "CALRec, contrastive only · dense", "Relative change", "p (t-test)"):
    assert row in md, row
  assert "CALRec, contrastive only · generation + BM25" not in md  # dense retrieval only, as configured
  assert (work / "calrec_two_stage" / "stage1" / "export").is_dir() and (work / "calrec_two_stage" / "stage2").is_dir()
  doc = json.loads((work / "comparison.json").read_text())
  users = {r["users"] for m in doc["methods"].values() for r in m["rows"].values()}
  assert users == {12.0}  # every method on the same users
  assert set(doc["significance"]) == {k for m in doc["methods"].values() if m["kind"] == "calrec" for k in m["rows"]}
  assert str(work / "comparison.md") in out.stdout
  bad = subprocess.run(cmd[:5] + ["--config.methods=popularity,nope"], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 1 and "unknown method 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def write_recbole_movies(folder, name="ml", users=48, items=30, seed=0):
  """A small dataset laid out exactly as RecBole ships its examples: `<name>.inter` (user_id, item_id, rating,
  timestamp, several events of a user at one time) and `<name>.item` with its own text columns."""
  rng = np.random.default_rng(seed)
  genres = ["Comedy", "Drama", "Action Thriller", "Animation Children's", "Documentary"]
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{name}.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n" + "".join(
      f"{i}\tMovie number {i} part {i % 7}\t{1980 + i % 30}\t{genres[i % len(genres)]}\n" for i in range(1, items + 1)))
  rows = []
  for u in range(users):
    start = int(rng.integers(1, items + 1))
    for k in range(int(rng.integers(5, 9))):  # a walk through the catalog: the next item follows the last
      rows.append(f"{u}\t{(start + k - 1) % items + 1}\t{int(rng.integers(1, 6))}\t{100 + 10 * (k // 2)}\n")
  (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(rows))


@pytest.mark.slow
def test_the_comparison_runs_on_recbole_files_as_recbole_ships_them(tmp_path):
  """RecBole's own layout with text columns of any name (movie_title, release_year, genre): the comparison trains
  and ranks with no renaming, the item texts render every column, and the table reports each method."""
  write_recbole_movies(tmp_path / "data")
  work = tmp_path / "cmp"
  cmd = [sys.executable, "-m", "calrec_jax.compare", "--config=configs/compare/synthetic.py:smoke",
         f"--workdir={work}", "--config.methods=popularity,bm25_history,sasrec,calrec",
         "--config.calrec.data.source=recbole", f"--config.calrec.data.path={tmp_path / 'data'}",
         "--config.calrec.data.categories=ml", "--config.calrec.data.eval_category=ml", "--config.title=RecBole movies"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ml: item texts render movie_title, release_year, genre" in out.stderr
  md = (work / "comparison.md").read_text()
  for row in ("Popularity", "SASRec", "CALRec (stage 2) · dense"):
    assert row in md, row
  assert md.startswith("# RecBole movies")


@pytest.mark.slow
def test_pretrained_recipe_tiny_variant_trains_and_evaluates_gemma_end_to_end(tmp_path):
  """configs/compare/synthetic.py:llm, the tiny variant of the Scientific Gemma recipe: the real Gemma-3-270M
  zero-shot and LoRA-finetuned, each with free, catalog-constrained and dense rows; every constrained sample is
  the text of a catalog item, and an intermediate checkpoint of the LoRA run evaluates (the steps curve)."""
  from calrec_jax.errors import WeightImportError
  from calrec_jax.model.loading import packaged_path
  try:
    gguf_path = packaged_path("gemma3-270m-gguf")
  except WeightImportError as e:
    pytest.skip(str(e))
  work = tmp_path / "cmp"
  cmd = [sys.executable, "-m", "calrec_jax.compare", "--config=configs/compare/synthetic.py:llm", f"--workdir={work}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  doc = json.loads((work / "comparison.json").read_text())
  rows = {r for m in doc["methods"].values() for r in m["rows"]}
  for who in ("Zero-shot gemma3-270m-gguf", "CALRec Gemma-3-270M LoRA r8, 2 steps"):
    for path in ("generation + BM25", "constrained generation + BM25", "dense"):
      assert f"{who} · {path}" in rows, (who, path, rows)
  # every constrained sample is a catalog item's text (Gemma's own tokenizer, the recipe's item rendering)
  from calrec_jax.data import synthetic
  from calrec_jax.data.examples import ExampleEncoder
  from calrec_jax.model.gguf_import import open_gguf
  from calrec_jax.model.gguf_tokenizer import tokenizer_from_gguf
  from calrec_jax.model.run_parts import example_spec
  from configs.compare import synthetic as recipe
  c = recipe.get_config("llm").calrec
  tok = tokenizer_from_gguf(open_gguf(gguf_path))
  enc = ExampleEncoder(tok, synthetic.make_dataset(["Office"]), example_spec(c.data))
  items = {tok.decode(enc.item_tokens(0, i)).strip() for i in range(len(enc.categories[0].catalog))}
  for method in ("zero_shot", "calrec_pretrained_lora"):
    lines = (work / method / "eval" / "rankings_bm25_constrained.jsonl").read_text().splitlines()
    gens = [g for line in lines for g in json.loads(line)["generations"]]
    assert len(lines) == 6 and len(gens) == 12
    assert all(g in items for g in gens), [g for g in gens if g not in items][:3]
  # the steps curve: the step-1 checkpoint evaluated (adapters folded into Gemma), step 0 the zero-shot row
  curve = subprocess.run([sys.executable, "-m", "calrec_jax.compare.curve", "--config=configs/compare/synthetic.py:llm",
                          f"--workdir={work}", "--method=calrec_pretrained_lora"], cwd=ROOT, capture_output=True,
                         text=True)
  assert curve.returncode == 0, curve.stderr[-3000:]
  lora = work / "calrec_pretrained_lora"
  points = json.loads((lora / "steps_curve.json").read_text())["points"]
  assert [p["step"] for p in points] == [0, 1, 2] and all({"bm25", "dense"} <= set(p) for p in points)
  assert (lora / "eval_step1" / "metrics.json").exists() and (lora / "steps_curve.png").stat().st_size > 0
  assert points[2]["bm25"] == doc["methods"]["calrec_pretrained_lora"]["rows"][
      "CALRec Gemma-3-270M LoRA r8, 2 steps · generation + BM25"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: "", "unreadable"),
    (lambda d: json.dumps(d)[:40], "unreadable"),
    (lambda d: "[1, 2]", "not a JSON object"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "rows"}), "missing the field 'rows'"),
    (lambda d: json.dumps({**d, "rows": {k: {**m, "ndcg@10": "0.1"} for k, m in d["rows"].items()}}),
     "holding a wrong value in 'rows'"),
    (lambda d: json.dumps({**d, "ranks": {}}), "inconsistent"),
])
def test_a_damaged_stored_result_is_named_before_anything_runs_and_keeps_the_report(tmp_path, monkeypatch, damage,
                                                                                    message):
  from calrec_jax.compare.run import run_comparison
  from calrec_jax.errors import DataError
  work = str(tmp_path / "cmp")
  cfg = smoke_compare_config("popularity,bm25_history")
  paths = run_comparison(cfg, work)
  report = open(paths["md"]).read()
  stored = os.path.join(work, "bm25_history", "result.json")
  with open(stored, "w") as f:
    f.write(damage(json.load(open(os.path.join(work, "popularity", "result.json")))))
  ran = []
  monkeypatch.setattr(methods_lib, "run_method", lambda name, *a, **kw: ran.append(name))
  cfg.methods = "popularity,bm25_history,sasrec"
  with pytest.raises(DataError, match=f"{stored}: the stored result of 'bm25_history' is {message}.*delete"):
    run_comparison(cfg, work)
  assert ran == [] and open(paths["md"]).read() == report  # nothing ran; the report is untouched


def test_the_report_says_when_an_id_baseline_hit_its_epoch_cap():
  from calrec_jax.compare.report import markdown
  row = {"users": 10.0, "recall@1": 0.1, "recall@10": 0.2, "ndcg@10": 0.15}
  notes = {"epochs": 5, "best_epoch": 5, "best_valid_ndcg@10": 0.1, "max_epochs": 5, "patience": 10}
  capped = methods_lib.MethodResult("baseline", {"SASRec": row}, {"SASRec": {"u": 1}}, notes=notes)
  assert "stopped by max_epochs before early stopping" in markdown({"sasrec": capped}, "t", {}, True)
  early = methods_lib.MethodResult("baseline", {"SASRec": row}, {"SASRec": {"u": 1}}, notes={**notes, "epochs": 3})
  text = markdown({"sasrec": early}, "t", {}, True)
  assert "early stopping after 10 epochs" in text and "max_epochs" not in text


SCIENTIFIC_VARIANTS = ("", "llm", "packed", "packed2", "packed2_bias", "fused", "epochs", "epochs10", "epochs10_bias",
                       "epochs_bias", "epochs_bias_last", "epochs_bias_ut2", "epochs_mns", "ids", "ids_sgd",
                       "ids_frequent", "ensemble", "cold")


@pytest.mark.parametrize("module,arg", [("scientific", a) for a in SCIENTIFIC_VARIANTS]
                         + [("synthetic", a) for a in ("", "smoke", "llm")] + [("office", a) for a in office_config.VARIANTS])
def test_every_shipped_comparison_config_names_known_methods_with_valid_overrides(module, arg):
  import importlib
  from calrec_jax.config_check import validate_config
  cfg = importlib.import_module(f"configs.compare.{module}").get_config(arg)
  names = methods_lib.check_methods(cfg)
  assert names and len(names) == len(set(names))
  validate_config(cfg.calrec)
