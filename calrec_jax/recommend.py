"""Recommend items for your own users with a trained run: one JSON line per user in, one out.

  python -m calrec_jax.recommend --workdir=workdirs/stage2 --input=histories.jsonl --output=recs.jsonl \\
      --top_k=10 --ranker=dense
  python -m calrec_jax.recommend --export=workdirs/stage2/export --input=histories.jsonl --output=recs.jsonl

Each input line is {"user": "u1", "history": ["<item id or item text>", ...]} (oldest first; "user" optional).
Each output line is {"user": "u1", "ranker": "dense", "items": [{"id", "text", "score"}, ...], "unknown": [...],
"ambiguous": [...]}: history names that matched no catalog item or several are listed there and left out; a
user with no known item gets no items. A line that is not a JSON object with a non-empty "history" list is
answered with {"user", "line", "error"} instead of items (and named on stderr); the other lines still are. Rankers: dense, beam (catalog-constrained beams), bm25 (the last items'
texts, no model), fused (the weights the workdir's evaluation chose on validation; evaluate with
--config.eval.fusion=dense,bm25_history,popularity first). The input is read once before the model
is loaded, then streamed in batches of --batch_users; the output is written to <output>.partial and renamed when
complete, and an existing output is replaced only with --overwrite (and only once the new one is complete). --catalog ranks another catalog (new items included: the
item tower encodes them, once per model and catalog).
"""
from __future__ import annotations

import json
import os

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A trained run's folder (its export and config.json).")
flags.DEFINE_string("export", None, "Instead of --workdir: a run's export/ folder on its own (params, tokenizer, "
                    "model config, catalog, popularity and fused weights), e.g. copied to a serving machine.")
flags.DEFINE_string("input", None, "JSONL of histories: {\"user\": ..., \"history\": [item id or text, ...]}.")
flags.DEFINE_string("output", None, "JSONL to write (must not exist).")
flags.DEFINE_integer("top_k", 10, "Items per user.")
flags.DEFINE_enum("ranker", "dense", ["dense", "beam", "bm25", "fused"], "How items are ranked.")
flags.DEFINE_boolean("exclude_history", True, "Never recommend an item of the user's history.")
flags.DEFINE_string("catalog", None, "Rank this catalog instead of the training one: a JSONL file ({\"id\": ..., "
                    "\"title\": ..., ...} per line), RecBole's <name>.item feature file, or a prepared category folder; items training never saw are "
                    "encoded by the item tower (embeddings cached per model and catalog).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output (once the new one is complete).")
flags.DEFINE_integer("batch_users", 256, "Users ranked together (memory: batch_users x catalog size floats).")
flags.DEFINE_boolean("multihost", False, "Several processes share the users (jax.distributed; automatic on TPU pods): "
                     "each ranks every P-th line and process 0 writes the output in input order.")
flags.DEFINE_string("coordinator", "", "--multihost off TPU: host:port of process 0.")
flags.DEFINE_integer("num_processes", 0, "--multihost off TPU: how many processes.")
flags.DEFINE_integer("process_id", -1, "--multihost off TPU: this process's index.")
flags.mark_flags_as_required(["input", "output"])


HISTORY_LINE = '{"user": "u1", "history": ["item id or text", ...]}'


def read_histories(path: str):
  """Yields (line number, user, history names, problem) for every non-blank line: `problem` is None for a good
  line, else what is wrong with it (not JSON, no list of item names, an empty history): that line is answered
  with the problem instead of items, and the good lines still are."""
  from calrec_jax.data.records import jsonl_rows
  from calrec_jax.errors import DataError
  try:
    for n, row, problem in jsonl_rows(path, HISTORY_LINE):
      if problem:
        yield n, str(n), [], problem
        continue
      user, history = str(row.get("user", n)), row.get("history")
      if not isinstance(history, list) or not all(isinstance(x, (str, int)) for x in history):
        yield n, user, [], "needs \"history\": a list of item ids or texts (strings)"
      elif not history:
        yield n, user, [], "the history is empty: name at least one item"
      else:
        yield n, user, [str(x) for x in history], None
  except UnicodeDecodeError as e:
    raise DataError(f"bytes that are not UTF-8 at offset {e.start}", path) from None


def main(argv) -> None:
  del argv
  import sys
  import ml_collections
  from calrec_jax.runner import run_configured
  from calrec_jax.model.run_parts import load_run_config
  if bool(FLAGS.workdir) == bool(FLAGS.export):
    sys.exit("error: give either --workdir (a trained run's folder) or --export (a run's export/ folder)")
  if FLAGS.export:
    from calrec_jax.data.serving import is_export, read_serving_files
    from calrec_jax.errors import CalrecError
    if not os.path.isdir(FLAGS.export):
      sys.exit(f"error: --export={FLAGS.export}: no such folder; give a run's export/ folder")
    if not is_export(FLAGS.export):
      sys.exit(f"error: --export={FLAGS.export}: not an export with serving files (params, model_config.json, "
               "run_config.json, catalog.jsonl, serving.json); give the export/ folder of a run trained by this "
               "version, or --workdir with the run's folder")
    try:
      recorded = read_serving_files(FLAGS.export)[0]
    except CalrecError as e:
      sys.exit(f"error: {e}")
  else:
    recorded = load_run_config(FLAGS.workdir) if os.path.isdir(FLAGS.workdir) else None
    if not recorded:
      sys.exit(f"error: --workdir={FLAGS.workdir}: no trained run here (no readable config.json); give the folder "
               "of a run trained with python -m calrec_jax.main")
  config = ml_collections.ConfigDict(recorded)
  with config.unlocked():  # this command's processes, not the training run's
    config.multihost = ml_collections.ConfigDict({
        "enabled": FLAGS.multihost, "coordinator": FLAGS.coordinator, "num_processes": FLAGS.num_processes,
        "process_id": FLAGS.process_id})
  source = FLAGS.export or FLAGS.workdir

  def action():
    import jax
    from calrec_jax import progress
    from calrec_jax.errors import CalrecError
    from calrec_jax.eval.recommender import Recommender
    if not os.path.isfile(FLAGS.input):
      raise CalrecError(f"--input={FLAGS.input}: no such file")
    if os.path.isdir(FLAGS.output):
      raise CalrecError(f"--output={FLAGS.output}: is a folder; name a file")
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
      raise CalrecError(f"--output={FLAGS.output}: exists; choose a new file, or add --overwrite to replace it")
    if FLAGS.top_k < 1 or FLAGS.batch_users < 1:
      raise CalrecError("--top_k and --batch_users must be >= 1")
    users = problems = 0
    for n, _, _, problem in read_histories(FLAGS.input):  # every line checked before the model loads
      users += 1
      if problem:
        problems += 1
        if problems <= 20:
          print(f"{FLAGS.input}:{n}: {problem} (answered with this error, not items)", file=sys.stderr)
    if problems > 20:
      print(f"{FLAGS.input}: {problems - 20} more lines like these", file=sys.stderr)
    me, processes = jax.process_index(), jax.process_count()
    partial = FLAGS.output + (".partial" if processes == 1 else f".part-{me}-of-{processes}")
    try:
      out = open(partial, "w", encoding="utf-8")
    except OSError as e:
      raise CalrecError(f"--output={FLAGS.output}: cannot be written ({e.strerror or e})") from None
    rec = Recommender.load(source, None if FLAGS.export else config, catalog=FLAGS.catalog)
    mine = len(range(me, users, processes))
    bar = progress.bar(total=mine, desc=f"recommend ({FLAGS.ranker})", unit="user")
    with out:
      batch = []
      for k, row in enumerate(read_histories(FLAGS.input)):
        if k % processes != me:  # another process ranks this line
          continue
        batch.append(row)
        if len(batch) == FLAGS.batch_users:
          _write(rec, batch, out)
          bar.update(len(batch))
          batch = []
      if batch:
        _write(rec, batch, out)
        bar.update(len(batch))
    bar.close()
    if processes > 1:
      from calrec_jax.model import host_collectives
      host_collectives.sync("recommend: every share written")
      if me != 0:
        return
      merge_shares(FLAGS.output, processes, users)
    else:
      os.replace(partial, FLAGS.output)
    print(f"wrote:\n  recommendations for {users - problems} users"
          + (f", and an \"error\" for {problems} lines that could not be answered" if problems else "")
          + f": {FLAGS.output}", flush=True)
  run_configured(config, action, validate=lambda c: None)  # the recorded config was validated when it trained


def merge_shares(output: str, processes: int, users: int) -> None:
  """Process 0: the P shares (`<output>.part-<p>-of-<P>`, line k in share k % P) into <output>, in input order,
  through <output>.partial; the shares are removed once the output is complete."""
  from calrec_jax.errors import CalrecError
  parts = [f"{output}.part-{p}-of-{processes}" for p in range(processes)]
  files = [open(p, encoding="utf-8") for p in parts]
  try:
    with open(output + ".partial", "w", encoding="utf-8") as out:
      for k in range(users):
        line = files[k % processes].readline()
        if not line:
          raise CalrecError(f"{parts[k % processes]}: ends before line {k + 1} of the input; run the command again")
        out.write(line)
  finally:
    for f in files:
      f.close()
  os.replace(output + ".partial", output)
  for p in parts:
    os.remove(p)


def _write(rec, batch, out) -> None:
  """One output line per input line of `batch`, in order: the recommendations, or the line's problem."""
  good = [h for _, _, h, problem in batch if problem is None]
  results = iter(rec.recommend(good, FLAGS.top_k, FLAGS.ranker, FLAGS.exclude_history) if good else [])
  for n, user, _, problem in batch:
    row = ({"user": user, **next(results)} if problem is None else
           {"user": user, "line": n, "error": problem, "ranker": FLAGS.ranker, "items": []})
    out.write(json.dumps(row, ensure_ascii=False) + "\n")


def run() -> None:
  from calrec_jax.cli import run_absl
  run_absl(main)


if __name__ == "__main__":
  run()
