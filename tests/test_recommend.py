"""Recommendations for your own users: the API ranks like the evaluation does, names items by id or text,
reports unknown and ambiguous names, and the CLI checks its input before loading the model and never overwrites."""
import json
import os
import subprocess
import sys

import pytest

from test_train import smoke_config

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def train_and_evaluate(c, wd: str, fusion: str) -> str:
  """Trains config `c` in `wd` and evaluates it (dense, 8 users, `fusion`'s signals); returns wd."""
  from calrec_jax.runner import evaluate_workdir
  from calrec_jax.train.loop import train
  train(c, wd)
  c.eval.retrieval, c.eval.max_users, c.eval.fusion = "dense", 8, fusion
  evaluate_workdir(c, wd, announce=False)
  return wd


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  # its fused weights are what ranker 'fused' uses
  return train_and_evaluate(smoke_config(2, 2), str(tmp_path_factory.mktemp("recommend") / "run"),
                            "dense,bm25_history,popularity")


def test_the_api_ranks_as_the_evaluation_does_and_names_items(trained):
  from calrec_jax.eval.evaluate import evaluate_dense
  from calrec_jax.eval.recommender import Recommender
  rec = Recommender.load(trained)
  data = rec.parts.categories[rec.category]
  rows = [(u, data.sequences[u][:-1], data.sequences[u][-1]) for u in range(5)]
  _, records = evaluate_dense(rec.config, rec.parts, rec.params, rows, rec.category)
  by_id = [[data.catalog.item_ids[i] for i in h] for _, h, _ in rows]
  got = rec.recommend(by_id, k=20, ranker="dense")
  assert [[x["id"] for x in r["items"]] for r in got] == [[data.catalog.item_ids[i] for i in r["top"]] for r in records]
  scores = [x["score"] for x in got[0]["items"]]
  assert scores == sorted(scores, reverse=True)
  # the same history named by texts (titles, other case and spacing) gives the same items
  titles = [["  " + data.catalog.attributes[i]["title"].upper() + " " for i in h] for _, h, _ in rows[:2]]
  # (another number of users is another batch shape: the scores may differ in the last bits, the items may not)
  by_title = rec.recommend(titles, k=20)
  assert [[x["id"] for x in r["items"]] for r in by_title] == [[x["id"] for x in r["items"]] for r in got[:2]]
  assert [[x["score"] for x in r["items"]] for r in by_title] == [
      pytest.approx([x["score"] for x in r["items"]], abs=1e-5) for r in got[:2]]
  # unknown names are reported and left out; a history with nothing known gets no items
  mixed = rec.recommend([by_id[0] + ["no such item"], ["nothing known"]], k=5)
  assert mixed[0]["unknown"] == ["no such item"] and [x["id"] for x in mixed[0]["items"]] == [
      x["id"] for x in got[0]["items"][:5]]
  assert mixed[1]["items"] == [] and mixed[1]["unknown"] == ["nothing known"]
  for ranker in ("beam", "bm25", "fused"):
    out = rec.recommend(by_id[:3], k=10, ranker=ranker)
    for r, (_, h, _) in zip(out, rows):
      ids = [x["id"] for x in r["items"]]
      assert r["ranker"] == ranker and 0 < len(ids) <= 10 and len(set(ids)) == len(ids)
      assert not set(ids) & {data.catalog.item_ids[i] for i in h}  # history items are not recommended
  assert rec.fusion and set(rec.fusion["weights"]) == {"dense", "bm25_history", "popularity"}


def test_an_ambiguous_title_is_reported(trained):
  from calrec_jax.eval.recommender import Recommender
  rec = Recommender.load(trained)
  attrs = rec.parts.categories[rec.category].catalog.attributes
  titles = [a.get("title", "") for a in attrs]
  dup = next((t for t in titles if t and titles.count(t) > 1), None)
  if dup is None:  # make one: two items that share a title
    attrs[1]["title"] = attrs[0]["title"]
    rec._names = None
    dup = attrs[0]["title"]
  assert rec.recommend([[dup]], k=3)[0]["ambiguous"] == [dup]


def run(args):
  return subprocess.run([sys.executable, "-m", "calrec_jax.recommend", *args], cwd=ROOT, capture_output=True,
                        text=True)


def test_the_cli_streams_jsonl_and_refuses_bad_input_before_loading(trained, tmp_path):
  from calrec_jax.eval.recommender import Recommender
  rec = Recommender.load(trained)
  data = rec.parts.categories[rec.category]
  lines = [{"user": data.user_ids[u], "history": [data.catalog.item_ids[i] for i in data.sequences[u][:-1]]}
           for u in range(7)]
  src = tmp_path / "in.jsonl"
  src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  out = tmp_path / "recs.jsonl"
  done = run([f"--workdir={trained}", f"--input={src}", f"--output={out}", "--top_k=4", "--batch_users=3"])
  assert done.returncode == 0, done.stderr[-2000:]
  got = [json.loads(x) for x in out.read_text().splitlines()]
  assert [g["user"] for g in got] == [x["user"] for x in lines] and all(len(g["items"]) == 4 for g in got)
  assert [[x["id"] for x in g["items"]] for g in got] == [
      [x["id"] for x in r["items"]] for r in rec.recommend([x["history"] for x in lines], k=4)]
  assert not (tmp_path / "recs.jsonl.partial").exists() and str(out) in done.stdout
  again = run([f"--workdir={trained}", f"--input={src}", f"--output={out}"])
  assert again.returncode == 1 and "add --overwrite" in again.stderr and len(out.read_text().splitlines()) == 7
  replaced = run([f"--workdir={trained}", f"--input={src}", f"--output={out}", "--top_k=2", "--overwrite"])
  assert replaced.returncode == 0, replaced.stderr[-2000:]
  assert all(len(json.loads(x)["items"]) == 2 for x in out.read_text().splitlines())
  # bad lines: each named on stderr (file and line) and answered with its problem; the good lines still answered
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(lines[0]) + "\n" + '{"user": "x", "history": "B000"}\n' + "not json\n\n"
                 + '{"user": "e", "history": []}\n' + json.dumps(lines[1]) + "\n")
  partly = run([f"--workdir={trained}", f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}", "--top_k=4"])
  assert partly.returncode == 0, partly.stderr[-2000:]
  for n, what in ((2, 'needs "history"'), (3, "malformed JSON"), (5, "the history is empty")):
    assert f"{bad}:{n}: {what}" in partly.stderr, (n, partly.stderr[-2000:])
  answered = [json.loads(x) for x in (tmp_path / "x.jsonl").read_text().splitlines()]
  assert [a.get("line") for a in answered] == [None, 2, 3, 5, None]  # one output line per input line, in order
  assert [a["items"] for a in (answered[0], answered[4])] == [r["items"] for r in rec.recommend(
      [lines[0]["history"], lines[1]["history"]], k=4)]
  assert answered[1]["user"] == "x" and answered[1]["items"] == [] and "error" in answered[1]
  assert "recommendations for 2 users, and an \"error\" for 3 lines" in partly.stdout
  nothing = run([f"--workdir={tmp_path / 'none'}", f"--input={src}", f"--output={tmp_path / 'y.jsonl'}"])
  assert nothing.returncode == 1 and "no trained run here" in nothing.stderr


def test_a_catalog_given_at_inference_ranks_items_training_never_saw(trained, tmp_path, monkeypatch):
  from calrec_jax.eval import evaluate as ev
  from calrec_jax.eval.recommender import Recommender
  base = Recommender.load(trained)
  data = base.parts.categories[base.category]
  rows = [{"id": i, **a} for i, a in zip(data.catalog.item_ids, data.catalog.attributes)]
  twin = {**rows[3], "id": "NEW-twin"}  # a new item with the text of a known one
  fresh = {"id": "NEW-1", "title": "Solar garden lantern, 12 pack", "category": "Garden", "brand": "Lumo"}
  path = tmp_path / "catalog.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows + [twin, fresh]))
  rec = Recommender.load(trained, catalog=str(path))
  history = [[data.catalog.item_ids[i] for i in data.sequences[0][:-1]]]
  got = rec.recommend(history, k=len(rows) + 2, ranker="dense", exclude_history=False)[0]["items"]
  score = {x["id"]: x["score"] for x in got}
  assert {"NEW-twin", "NEW-1"} <= set(score)  # the new items are ranked with the others
  assert score["NEW-twin"] == pytest.approx(score[rows[3]["id"]], abs=1e-5)  # same text, same v_T
  known = base.recommend(history, k=5, exclude_history=False)[0]["items"]
  assert [score[x["id"]] for x in known] == pytest.approx([x["score"] for x in known], abs=1e-5)
  assert rec.recommend([["Solar garden lantern, 12 pack"]], k=3, ranker="bm25")[0]["unknown"] == []
  cached = list((ROOT.__class__(trained) / "item_embeddings").glob("*.npy"))
  assert len(cached) >= 2  # the training catalog's and this one's
  monkeypatch.setattr(ev, "item_embeddings", lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded again")))
  again = Recommender.load(trained, catalog=str(path))
  assert again.recommend(history, k=3)[0]["items"] == rec.recommend(history, k=3)[0]["items"]
  # the cache is keyed by the model and the texts: another catalog text, or newer params, are encoded again
  path.write_text("".join(json.dumps(r) + "\n" for r in rows + [twin, {**fresh, "title": "Solar lantern, 24 pack"}]))
  with pytest.raises(AssertionError, match="encoded again"):
    Recommender.load(trained, catalog=str(path)).recommend(history, k=3)
  params = ROOT.__class__(trained) / "export" / "params"
  stamp = params.stat().st_mtime
  os.utime(params, (stamp + 10, stamp + 10))
  try:
    with pytest.raises(AssertionError, match="encoded again"):
      Recommender.load(trained).recommend(history, k=3)
  finally:
    os.utime(params, (stamp, stamp))
  path.write_text("".join(json.dumps({"id": r["id"]}) + "\n" for r in rows))  # a catalog without texts
  with pytest.raises(Exception, match=f"--catalog={path}: .*every item text would be empty"):
    Recommender.load(trained, catalog=str(path))
  path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
  with pytest.raises(Exception, match="appears twice"):
    Recommender.load(trained, catalog=str(path))


def test_a_recbole_item_file_is_a_catalog_too(trained, tmp_path):
  """RecBole's `<name>.item` feature file (typed header, tab-separated text columns) as --catalog: its items,
  new ones included, are ranked; a repeated item id names the file and line."""
  from calrec_jax.eval.recommender import Recommender
  base = Recommender.load(trained)
  data = base.parts.categories[base.category]
  cols = ["title", "category", "brand", "price"]
  lines = ["item_id:token\t" + "\t".join(f"{c}:token_seq" for c in cols)]
  lines += [f"{i}\t" + "\t".join(a.get(c, "") for c in cols) for i, a in zip(data.catalog.item_ids,
                                                                              data.catalog.attributes)]
  twin = data.catalog.attributes[3]
  lines.append("NEW-twin\t" + "\t".join(twin.get(c, "") for c in cols))
  path = tmp_path / "Office.item"
  path.write_text("\n".join(lines) + "\n")
  rec = Recommender.load(trained, catalog=str(path))
  history = [[data.catalog.item_ids[i] for i in data.sequences[0][:-1]]]
  got = rec.recommend(history, k=len(data.catalog) + 1, ranker="dense", exclude_history=False)[0]["items"]
  score = {x["id"]: x["score"] for x in got}
  assert len(score) == len(data.catalog) + 1
  assert score["NEW-twin"] == pytest.approx(score[data.catalog.item_ids[3]], abs=1e-5)  # same text, same v_T
  path.write_text("\n".join(lines + [lines[1]]) + "\n")
  with pytest.raises(Exception, match=f"{path}:{len(lines) + 1}: item .* appears twice"):
    Recommender.load(trained, catalog=str(path))


def test_an_export_folder_alone_recommends_as_its_workdir_does(trained, tmp_path):
  """A run's export/ holds what serving needs (run config, catalog, popularity counts, the fused weights an
  evaluation chose): copied on its own elsewhere it ranks exactly as the workdir does, through the API and
  `recommend --export`; a folder that is not such an export, or an export of an unknown model family, is one
  line naming what to give."""
  import shutil
  from calrec_jax.eval.recommender import Recommender
  export = tmp_path / "served"
  shutil.copytree(ROOT.__class__(trained) / "export", export)
  serving = json.loads((export / "serving.json").read_text())
  assert "user" not in (export / "catalog.jsonl").read_text()  # item counts only: no user ids or histories
  assert serving["fusion_weights"] == json.loads(
      (ROOT.__class__(trained) / "eval" / "metrics.json").read_text())["fused_choice"]["weights"]
  base, served = Recommender.load(trained), Recommender.load(str(export))
  data = base.parts.categories[base.category]
  histories = [[data.catalog.item_ids[i] for i in data.sequences[u][:-1]] for u in range(6)]
  for ranker in ("dense", "bm25", "fused"):
    assert served.recommend(histories, k=8, ranker=ranker) == base.recommend(histories, k=8, ranker=ranker), ranker
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps({"user": f"u{i}", "history": h}) + "\n" for i, h in enumerate(histories)))
  done = run([f"--export={export}", f"--input={src}", f"--output={tmp_path / 'recs.jsonl'}", "--ranker=fused"])
  assert done.returncode == 0, done.stderr[-2000:]
  got = [json.loads(x) for x in (tmp_path / "recs.jsonl").read_text().splitlines()]
  assert [g["items"] for g in got] == [r["items"] for r in base.recommend(histories, k=10, ranker="fused")]
  both = run([f"--export={export}", f"--workdir={trained}", f"--input={src}", f"--output={tmp_path / 'b.jsonl'}"])
  assert both.returncode == 1 and "either --workdir" in both.stderr
  plain = run([f"--export={trained}", f"--input={src}", f"--output={tmp_path / 'c.jsonl'}"])
  assert plain.returncode == 1 and "not an export with serving files" in plain.stderr and "Traceback" not in plain.stderr
  cfg = json.loads((export / "model_config.json").read_text())
  (export / "model_config.json").write_text(json.dumps({**cfg, "family": "mamba"}))
  other = run([f"--export={export}", f"--input={src}", f"--output={tmp_path / 'd.jsonl'}"])
  assert other.returncode == 1 and "Traceback" not in other.stderr, other.stderr[-1500:]
  assert f"{export / 'model_config.json'}: model family 'mamba'" in other.stderr
  assert not (tmp_path / "d.jsonl").exists()
