"""Preparation as array operations equals the plain per-event computation, writes the same bytes, one category at a
time, and holds a bounded number of bytes per review (no Python object per review)."""
import collections
import gzip
import json
import os
import random
import sys
import tracemalloc

import numpy as np
import pytest

from calrec_jax.data import amazon_raw, prepare, prepared_folder, records

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))


def reference_category(reviews_path, meta_path, kcore, dedup, min_len, require_title):
  """The plain computation: every review a Python tuple, sorted, deduplicated, k-core by Counters."""
  skipped = {}
  events = []
  for lineno, rec in amazon_raw.iter_records(reviews_path, skipped, False):
    events.append((str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"]), lineno))
  meta = amazon_raw.read_meta(meta_path, skipped)
  n0 = len(events)
  if require_title:
    events = [e for e in events if meta.get(e[1], {}).get("title")]
    skipped["events_item_without_title_or_meta"] = n0 - len(events)
  else:
    events = [e for e in events if e[1] in meta]
    skipped["events_item_without_meta"] = n0 - len(events)
  events.sort(key=lambda e: (e[0], e[2], e[3]))
  if dedup:
    seen, kept = set(), []
    for e in events:
      if (e[0], e[1]) not in seen:
        seen.add((e[0], e[1]))
        kept.append(e)
    skipped["duplicate_user_item_events"] = len(events) - len(kept)
    events = kept
  n1 = len(events)
  while kcore > 1:
    users = collections.Counter(e[0] for e in events)
    items = collections.Counter(e[1] for e in events)
    kept = [e for e in events if users[e[0]] >= kcore and items[e[1]] >= kcore]
    if len(kept) == len(events):
      break
    events = kept
  skipped["events_removed_by_kcore"] = n1 - len(events)
  by_user = collections.defaultdict(list)
  for user, item, _, _ in events:
    by_user[user].append(item)
  short = [u for u, s in by_user.items() if len(s) < min_len]
  skipped["users_too_short"] = len(short)
  for u in short:
    del by_user[u]
  item_ids = sorted({i for s in by_user.values() for i in s})
  index = {a: n for n, a in enumerate(item_ids)}
  users = sorted(by_user)
  return (users, [[index[i] for i in by_user[u]] for u in users], item_ids, [meta[a] for a in item_ids], skipped)


def write_tricky_category(folder, seed, users=300, items=60):
  """Small raw files with everything the filters must get right: repeated (user, item) events, equal times,
  items without metadata or title, duplicated metadata rows, users that the k-core cascade removes."""
  rng = random.Random(seed)
  os.makedirs(folder, exist_ok=True)
  asins = [f"I{n:03d}" for n in range(items)]
  rows = []
  for u in range(users):
    for _ in range(rng.randint(1, 12)):
      rows.append({"reviewerID": f"U{rng.randint(0, users)}", "asin": rng.choice(asins[:items // 2] * 3 + asins),
                   "unixReviewTime": rng.randint(1, 40)})            # few distinct times: many ties
  rows.append({"reviewerID": "U1", "asin": "no-meta", "unixReviewTime": 3})
  meta = []
  for n, a in enumerate(asins):
    meta.append({"asin": a, "title": "" if n % 17 == 5 else f"Item {a}", "brand": f"B{n % 4}", "price": "$1"})
    if n % 11 == 3:
      meta.append({"asin": a, "title": "a later duplicate row", "brand": "X"})
  for name, lines in (("Toys.json.gz", rows), ("meta_Toys.json.gz", meta)):
    with gzip.open(os.path.join(folder, name), "wt", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in lines)
  return os.path.join(folder, "Toys.json.gz"), os.path.join(folder, "meta_Toys.json.gz")


@pytest.mark.parametrize("seed, kcore, dedup, min_len, require_title", [
    (0, 5, True, 3, True), (1, 3, True, 3, True), (2, 1, False, 3, True), (3, 4, True, 5, False),
    (4, 2, False, 4, False)])
def test_array_preparation_equals_the_per_event_reference(tmp_path, seed, kcore, dedup, min_len, require_title):
  reviews, meta = write_tricky_category(str(tmp_path), seed)
  users, seqs, item_ids, attrs, skipped = reference_category(reviews, meta, kcore, dedup, min_len, require_title)
  assert len(users) > 5 and skipped["events_removed_by_kcore" if kcore > 1 else "users_too_short"] >= 0
  data = amazon_raw.load_amazon_files(reviews, meta, "Toys", kcore=kcore, dedup=dedup,
                                      min_sequence_length=min_len, require_title=require_title)
  assert data.user_ids == users
  assert data.sequences == seqs
  assert data.catalog.item_ids == item_ids and data.catalog.attributes == attrs
  assert data.skipped == skipped


def test_statistics_counted_from_lengths_equal_the_listed_splits():
  rng = np.random.default_rng(0)
  seqs = [list(range(n)) for n in rng.integers(3, 40, 500)]
  data = records.CategoryData("x", records.Catalog(["a"] * 40, [{}] * 40), [str(u) for u in range(500)], seqs)
  stats = records.statistics(data)
  for split in ("train", "valid", "test"):
    ex = records.split_examples(seqs, split)
    hist = np.array([t for _, t in ex])
    counted = {k: stats[split][k] for k in ("examples", "users", "mean_history", "max_history")}
    assert counted == {"examples": len(ex), "users": len({u for u, _ in ex}),
                       "mean_history": float(hist.mean()), "max_history": int(hist.max())}


def test_target_popularity_counts_the_held_out_items_in_the_training_part():
  seqs = [[0, 1, 2, 3], [0, 1, 3, 2], [4, 0, 1, 0, 2]]  # training parts [0, 1], [0, 1], [4, 0, 1]: 0 and 1 seen 3x
  expected = {"valid": {"target_count_mean": 1.0, "target_count_median": 0.0, "target_in_top10": 1 / 3},  # 2, 3, 0
              "test": {"target_count_mean": 0.0, "target_count_median": 0.0, "target_in_top10": 0.0}}   # 3, 2, 2
  store = records.SequenceStore(np.array([0, 4, 8, 13]), np.array(sum(seqs, []), np.int32))
  assert records.target_popularity(seqs, 6, top=10) == records.target_popularity(store, 6, top=10)
  assert records.target_popularity(seqs, 6, top=1)["valid"]["target_in_top1"] == 1 / 3  # item 0 is the most seen
  assert records.target_popularity(seqs, 6, top=10) == expected
  data = records.CategoryData("x", records.Catalog(["a"] * 6, [{}] * 6), ["u0", "u1", "u2"], seqs)
  stats = records.statistics(data)
  assert {k: stats["valid"][k] for k in expected["valid"]} == expected["valid"]
  assert ("held-out items, times training saw them: valid mean 1.0 (median 0, 33.3% in the top 10); "
          "test mean 0.0 (median 0, 0.0% in the top 10)") in records.format_statistics([stats])


def test_prepare_writes_the_same_bytes_as_saving_the_loaded_category(tmp_path):
  from raw_amazon import write_category
  write_category(str(tmp_path / "raw"), 20_000, category="Office", seed=3)
  write_category(str(tmp_path / "raw"), 12_000, category="Tools", seed=4)
  stats = prepare.main(["--source=amazon_raw", f"--input={tmp_path / 'raw'}", "--categories=Office,Tools",
                        f"--output={tmp_path / 'out'}"])
  assert [s["category"] for s in stats] == ["Office", "Tools"]
  for name in ("Office", "Tools"):
    prepared_folder.save_category(amazon_raw.load_amazon_category(str(tmp_path / "raw"), name), str(tmp_path / "ref" / name))
    for f in ("catalog.jsonl", "sequences.jsonl", "stats.json"):
      assert (tmp_path / "out" / name / f).read_bytes() == (tmp_path / "ref" / name / f).read_bytes(), (name, f)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "out" / name).iterdir())


def test_preparation_holds_a_bounded_number_of_bytes_per_review(tmp_path):
  """Peak traced memory grows by well under the ~270 bytes per review that one Python tuple per review cost."""
  from raw_amazon import write_category
  peaks = {}
  for n in (20_000, 80_000):
    reviews, meta = write_category(str(tmp_path / str(n)), n, seed=5)
    tracemalloc.start()
    amazon_raw.prepare_arrays(reviews, meta, {})
    peaks[n] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  per_review = (peaks[80_000] - peaks[20_000]) / 60_000
  assert per_review < 150, peaks


def test_a_failing_category_leaves_the_ones_before_it_written(tmp_path):
  from calrec_jax.errors import DataError
  from raw_amazon import write_category
  write_category(str(tmp_path / "raw"), 10_000, category="Office", seed=3)
  with gzip.open(tmp_path / "raw" / "Tools.json.gz", "wt") as f:
    f.write('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{"reviewerID": "a", \n')
  with gzip.open(tmp_path / "raw" / "meta_Tools.json.gz", "wt") as f:
    f.write('{"asin": "b", "title": "t"}\n')
  with pytest.raises(DataError, match=r"Tools.json.gz:2: malformed line.*--skip-malformed"):
    prepare.main(["--source=amazon_raw", f"--input={tmp_path / 'raw'}", "--categories=Office,Tools",
                  f"--output={tmp_path / 'out'}"])
  assert (tmp_path / "out" / "Office" / "stats.json").exists() and not (tmp_path / "out" / "Tools").exists()


def reference_split(sequences, split):
  out = []
  for u, seq in enumerate(sequences):
    n = len(seq)
    if n >= 3:
      out += {"test": [(u, n - 1)], "valid": [(u, n - 2)], "train": [(u, t) for t in range(1, n - 2)]}[split]
  return out


def reference_units(sequences, stride):
  rows = []
  for u, seq in enumerate(sequences):
    e = len(seq) - 2
    while e > 1 and len(seq) - 2 >= 2:
      rows.append((u, max(1, e - stride), e))
      e -= stride
  return rows


def store_of(seqs):
  offsets = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
  return records.SequenceStore(offsets, np.array([i for s in seqs for i in s], np.int32))


def test_splits_units_and_counts_from_arrays_equal_the_per_user_loops():
  from calrec_jax.data import packed, serving
  rng = np.random.default_rng(1)
  seqs = [rng.integers(0, 30, n).tolist() for n in rng.integers(1, 25, 300)]
  store = store_of(seqs)
  assert store == seqs and store[7] == seqs[7] and store[-1] == seqs[-1] and len(store[2:5]) == 3
  for s in (seqs, store):
    for split in ("train", "valid", "test"):
      assert records.split_examples(s, split) == reference_split(seqs, split)
    for window, context in ((2, 1), (6, 2), (5, 4), (9, 1)):
      spec = packed.PackSpec(window=window, context=context)
      assert packed.training_units(s, spec).tolist() == [list(r) for r in reference_units(seqs, spec.stride)]
    expect = np.zeros(30)
    for q in seqs:
      np.add.at(expect, np.asarray(q[:len(q) - 2], np.int64), 1)
    np.testing.assert_array_equal(serving.item_counts(s, 30), expect)


def test_prepared_folders_are_read_from_memory_mapped_arrays_while_they_match_sequences_jsonl(tmp_path, caplog):
  from calrec_jax.data import synthetic
  cat = synthetic.make_category("Office", 40, seed=2)
  folder = tmp_path / "Office"
  prepared_folder.save_category(cat, str(folder))
  back = prepared_folder.load_category(str(folder))
  assert isinstance(back.sequences.items, np.memmap) and back.sequences == cat.sequences
  assert back.user_ids == cat.user_ids and back.catalog.item_ids == cat.catalog.item_ids
  # an edited sequences.jsonl wins over the arrays written before the edit
  lines = (folder / "sequences.jsonl").read_text().splitlines()
  row = json.loads(lines[0])
  row["items"] = row["items"][:3]
  (folder / "sequences.jsonl").write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
  with caplog.at_level("WARNING"):
    edited = prepared_folder.load_category(str(folder))
  assert edited.sequences[0] == cat.sequences[0][:3] and edited.sequences[1:] == cat.sequences[1:]
  assert "changed after its arrays were written" in caplog.text
  # damaged arrays are not trusted either; a folder of an earlier version (no arrays) reads as before
  prepared_folder.save_category(cat, str(folder))
  (folder / "sequences.offsets.npy").write_bytes(b"garbage")
  assert prepared_folder.load_category(str(folder)).sequences == cat.sequences
  for f in prepared_folder.ARRAY_FILES:
    (folder / f).unlink()
  assert prepared_folder.load_category(str(folder)).sequences == cat.sequences
