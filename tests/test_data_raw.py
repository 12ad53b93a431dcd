"""Raw Amazon files, RecBole files, TFDS builder: sequences, order, k-core, splits, and bad input."""
import gzip
import json
import os

import pytest

from calrec_jax.data import amazon_raw, prepared_folder, recbole, records
from calrec_jax.errors import DataError


def write_raw(d, reviews, meta, gz=True, category="Toys"):
  def dump(path, rows):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    if gz:
      with gzip.open(path + ".gz", "wb") as f:
        f.write(data)
    else:
      with open(path, "wb") as f:
        f.write(data)
  dump(os.path.join(d, f"{category}.json"), reviews)
  dump(os.path.join(d, f"meta_{category}.json"), meta)


def review(u, i, t):
  return {"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}


def meta(i, title="T", brand="B", price="$1.00"):
  return {"asin": i, "title": title, "brand": brand, "price": price, "category": ["Toys", "Sub " + i]}


def test_sequences_are_chronological_with_deterministic_ties(tmp_path):
  revs = [review("u1", "c", 30), review("u1", "a", 10), review("u1", "b", 20), review("u1", "d", 20),
          review("u2", "a", 5), review("u2", "b", 6), review("u2", "c", 7)]
  write_raw(tmp_path, revs, [meta(i) for i in "abcd"])
  data = amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  seqs = {u: [data.catalog.item_ids[i] for i in s] for u, s in zip(data.user_ids, data.sequences)}
  assert seqs["u1"] == ["a", "b", "d", "c"]  # the tie at t=20 keeps file order (b before d)
  assert seqs["u2"] == ["a", "b", "c"]


def test_dedup_kcore_and_title_filter(tmp_path):
  revs = []
  for u in range(6):
    revs += [review(f"u{u}", i, t) for t, i in enumerate("abcde")]
  revs += [review("u0", "a", 99)]  # duplicate (user, item)
  revs += [review("u9", "z", 1), review("u9", "a", 2), review("u9", "b", 3)]  # z: rare item; u9 drops by k-core
  revs += [review("u0", "notitle", 50)]
  write_raw(tmp_path, revs, [meta(i) for i in "abcdez"] + [meta("notitle", title="")])
  data = amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=5)
  assert len(data.sequences) == 6 and all(len(s) == 5 for s in data.sequences)
  assert sorted(data.catalog.item_ids) == list("abcde")
  assert data.skipped["duplicate_user_item_events"] == 1
  assert data.skipped["events_item_without_title_or_meta"] == 1
  assert data.skipped["events_removed_by_kcore"] == 3
  stats = records.statistics(data)
  assert stats["interactions"] == 30 and stats["test"]["examples"] == 6 and stats["train"]["examples"] == 12


def test_python_dict_literal_lines_and_plain_files(tmp_path):
  revs = [str(review("u1", i, t)) for t, i in enumerate("abc")]  # 2014-style dict literals
  write_raw(tmp_path, revs, [str(meta(i)) for i in "abc"], gz=False)
  data = amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  assert data.sequences == [[0, 1, 2]]


def test_leave_one_out_split():
  seqs = [[0, 1, 2, 3, 4]]
  assert records.split_examples(seqs, "test") == [(0, 4)]
  assert records.split_examples(seqs, "valid") == [(0, 3)]
  assert records.split_examples(seqs, "train") == [(0, 1), (0, 2)]


@pytest.mark.parametrize("bad_line,needle", [
    ('{"reviewerID": "u1", "asin": ', "malformed line"),
    ('{"asin": "a", "unixReviewTime": 3}', "reviewerID"),
    ('{"reviewerID": "u1", "asin": "a"}', "unixReviewTime"),
])
def test_bad_review_lines_name_file_and_line(tmp_path, bad_line, needle):
  write_raw(tmp_path, [review("u1", "a", 1), bad_line], [meta("a")])
  with pytest.raises(DataError) as e:
    amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  assert "Toys.json.gz:2" in str(e.value) and needle in str(e.value)


def test_non_utf8_and_skip_malformed_counts(tmp_path):
  path = tmp_path / "Toys.json"
  lines = [json.dumps(review("u1", i, t)).encode() for t, i in enumerate("abc")]
  path.write_bytes(b"\n".join(lines[:1] + [b'{"reviewerID": "\xff\xfe"}'] + lines[1:] + [b"{broken"]) + b"\n")
  (tmp_path / "meta_Toys.json").write_text("".join(json.dumps(meta(i)) + "\n" for i in "abc"))
  with pytest.raises(DataError, match=r"Toys.json:2: bytes that are not UTF-8"):
    amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  data = amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1, skip_malformed=True)
  assert data.sequences == [[0, 1, 2]]
  assert data.skipped["non_utf8_lines"] == 1 and data.skipped["malformed_lines"] == 1


def test_empty_file_missing_files_and_no_users(tmp_path):
  (tmp_path / "Toys.json").write_text("")
  (tmp_path / "meta_Toys.json").write_text(json.dumps(meta("a")) + "\n")
  with pytest.raises(DataError, match="Toys.json: the file is empty"):
    amazon_raw.load_amazon_category(str(tmp_path), "Toys")
  with pytest.raises(DataError, match="no reviews file for category 'Games'"):
    amazon_raw.load_amazon_category(str(tmp_path), "Games")
  write_raw(tmp_path, [review("u1", "a", 1), review("u1", "b", 2)], [meta("a"), meta("b")])
  with pytest.raises(DataError, match="no users left after filtering"):
    amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  write_raw(tmp_path, [review("u1", "a", 1), review("u1", "b", 2), review("u1", "zz", 3)], [meta("a"), meta("b")])
  with pytest.raises(DataError, match="no users left"):  # item without metadata removed -> user too short
    amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)


def test_prepared_round_trip_and_bad_prepared_file(tmp_path):
  from calrec_jax.data import synthetic
  cat = synthetic.make_category("Office", 30, seed=1)
  prepared_folder.save_category(cat, str(tmp_path / "Office"))
  back = prepared_folder.load_category(str(tmp_path / "Office"))
  assert back.sequences == cat.sequences and back.catalog.attributes == cat.catalog.attributes
  with open(tmp_path / "Office" / "sequences.jsonl", "a") as f:
    f.write("{not json\n")
  with pytest.raises(DataError, match=r"sequences.jsonl:31: malformed JSON"):
    prepared_folder.load_category(str(tmp_path / "Office"))


def test_recbole_scientific_statistics(scientific_dir):
  data = recbole.load_recbole(scientific_dir, "Scientific")
  s = records.statistics(data)
  assert (s["users"], s["items"], s["interactions"]) == (2928, 1585, 19712)
  assert s["train"]["examples"] == 10928
  # the test history + target reproduce the valid row: valid target = second-to-last item
  first = data.sequences[0]
  assert first == [0, 1, 2, 3, 4]
  assert "&amp;" not in "".join(a["title"] for a in data.catalog.attributes)


def test_office_statistics_match_its_comparison_config():
  from configs.compare import office
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), office.OFFICE)
  if not os.path.exists(os.path.join(folder, "Office.test.inter")):
    pytest.skip("shared Office data not present")
  s = records.statistics(recbole.load_recbole(folder, "Office"))
  assert (s["users"], s["items"], s["interactions"]) == (4905, 2420, 53258)
  assert s["train"]["examples"] == office.PREFIXES  # the config's steps per epoch rest on it


def test_prepare_cli_on_scientific(scientific_dir, tmp_path, capsys):
  from calrec_jax.data import prepare
  stats = prepare.main(["--source=recbole", f"--input={scientific_dir}", "--categories=Scientific",
                        f"--output={tmp_path}"])
  assert stats[0]["users"] == 2928 and stats[0]["items"] == 1585 and stats[0]["interactions"] == 19712
  assert "Scientific" in capsys.readouterr().out
  assert prepared_folder.load_category(str(tmp_path / "Scientific")).num_interactions() == 19712


def test_recbole_bad_rows(tmp_path):
  (tmp_path / "X.item2index").write_text("A\t0\nB\t1\nC\t2\n")
  (tmp_path / "X.text").write_text("item_id:token\ttext:token_seq\nA\ta\nB\tb\nC\tc\n")
  (tmp_path / "X.test.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1\t7\n")
  with pytest.raises(DataError, match=r"X.test.inter:2: item id outside"):
    recbole.load_recbole(str(tmp_path), "X")
  (tmp_path / "X.test.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1\t2\n")
  (tmp_path / "X.meta.jsonl").write_text('{"asin": "A", "title": "a"}\n\n{"title": "b"}\n')
  with pytest.raises(DataError, match=r"X.meta.jsonl:3: metadata row without 'asin'"):
    recbole.load_recbole(str(tmp_path), "X")
  (tmp_path / "X.meta.jsonl").write_text('{"asin": "A", "title": "a"}\n{"asin": "B", "title": \n')
  with pytest.raises(DataError, match=r"X.meta.jsonl:2: malformed JSON .*one object per line"):
    recbole.load_recbole(str(tmp_path), "X")


def test_recbole_standard_item_file_is_read(tmp_path):
  """RecBole's own layout: `<name>.inter` (user, item, timestamp) + `<name>.item` features, no item2index."""
  from calrec_jax.data import recbole
  from calrec_jax.errors import DataError
  (tmp_path / "toy.inter").write_text(
      "user_id:token\titem_id:token\ttimestamp:float\n"
      + "".join(f"u{u}\tI{(u + t) % 5}\t{t}\n" for u in range(4) for t in range(4)))
  (tmp_path / "toy.item").write_text(
      "item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\tprice:float\n"
      "I0\tRed &amp; Blue Pen\tOffice Products, Pens\tAcme\t1.5\n"
      "I1\tStapler\tOffice Products, Staplers\t\t\n"
      "I2\tNotebook\tOffice Products\tUnknown\t3.0\n"
      "I3\tInk\tOffice Products, Ink\tHP\t12.0\n"
      "I4\tLamp\tOffice Products, Lamps\tLumen\t20.0\n")
  data = recbole.load_recbole(str(tmp_path), "toy")
  assert data.catalog.item_ids == ["I0", "I1", "I2", "I3", "I4"]
  assert data.catalog.attributes[0] == {"title": "Red & Blue Pen", "category": "Pens", "brand": "Acme", "price": "1.5"}
  assert data.catalog.attributes[2]["brand"] == "" and data.catalog.attributes[1]["category"] == "Staplers"
  assert data.sequences[0] == [0, 1, 2, 3] and len(data.sequences) == 4
  (tmp_path / "bad.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu0\tX9\t1\n")
  (tmp_path / "bad.item").write_text("item_id:token\ttitle:token_seq\nI0\tPen\n")
  with pytest.raises(DataError, match=r"bad.inter:2: item 'X9' is not in the item index"):
    recbole.load_recbole(str(tmp_path), "bad")


def test_raw_inputs_that_used_to_be_silently_wrong_or_a_traceback(tmp_path):
  revs = [review("u1", "a", 10), review("u1", "b", 20), review("u1", "c", 30)]
  # a UTF-8 byte-order mark before the first record is not a malformed line
  write_raw(tmp_path, revs, [meta(i) for i in "abc"], gz=False)
  path = tmp_path / "Toys.json"
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  data = amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1)
  assert data.sequences == [[0, 1, 2]] and not data.skipped.get("malformed_lines")
  # numeric asins in both files are the same items
  num = tmp_path / "num"
  num.mkdir()
  write_raw(num, [review("u1", 1, 10), review("u1", 2, 20), review("u1", 3, 30)], [meta(i) for i in "123"])
  (num / "meta_Toys.json.gz").unlink()
  write_raw(num, [review("u1", 1, 10), review("u1", 2, 20), review("u1", 3, 30)],
            [dict(meta("x"), asin=i) for i in (1, 2, 3)])
  assert amazon_raw.load_amazon_category(str(num), "Toys", kcore=1).catalog.item_ids == ["1", "2", "3"]
  # a title that is a list or a dict is an error naming the line, not its last element or a repr
  for bad in (["A", "B"], {"en": "A"}):
    d = tmp_path / f"title_{type(bad).__name__}"
    d.mkdir()
    write_raw(d, revs, [meta("a"), dict(meta("b"), title=bad), meta("c")])
    with pytest.raises(DataError, match=rf"meta_Toys.json.gz:2: 'title' is a {type(bad).__name__}"):
      amazon_raw.load_amazon_category(str(d), "Toys", kcore=1)
  # a boolean time is not a timestamp
  d = tmp_path / "booltime"
  d.mkdir()
  write_raw(d, [review("u1", "a", True)] + revs[1:], [meta(i) for i in "abc"])
  with pytest.raises(DataError, match=r"Toys.json.gz:1: unixReviewTime is not an integer: True"):
    amazon_raw.load_amazon_category(str(d), "Toys", kcore=1)
  # a line nested too deeply for the parsers is a malformed line, not a RecursionError
  d = tmp_path / "deep"
  d.mkdir()
  write_raw(d, revs + ["[" * 100000 + "]" * 100000], [meta(i) for i in "abc"])
  with pytest.raises(DataError, match=r"Toys.json.gz:4: malformed line"):
    amazon_raw.load_amazon_category(str(d), "Toys", kcore=1)


def test_recbole_item_columns_by_name_and_inter_without_timestamps(tmp_path, caplog):
  """A dataset laid out as RecBole ships it (movies: movie_title, release_year, genre): every .item column is kept
  under its own name, data.attributes picks the rendered ones (a log line says what is rendered and what is not);
  an .inter without timestamps keeps the file's order, and same-time events stay in file order."""
  import logging
  from calrec_jax.data import recbole
  from calrec_jax.data.examples import ExampleEncoder, ExampleSpec
  from calrec_jax.data.tokenizer import train_tokenizer
  (tmp_path / "ml.item").write_text(
      "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n"
      "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tJumanji\t1995\tAdventure Children's Fantasy\n"
      "3\tHeat\t1995\tAction Crime Thriller\n4\tCasino\t1995\tDrama Thriller\n")
  (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\n" + "".join(
      f"u{u}\t{i}\n" for u, items in enumerate([[3, 1, 2, 4], [2, 4, 1]]) for i in items))
  data = recbole.load_recbole(str(tmp_path), "ml")
  assert [[data.catalog.item_ids[i] for i in s] for s in data.sequences] == [["3", "1", "2", "4"], ["2", "4", "1"]]
  assert data.catalog.attributes[0] == {"movie_title": "Toy Story", "release_year": "1995",
                                        "genre": "Animation Children's Comedy"}
  (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                     "u0\t2\t5\nu0\t3\t1\nu0\t1\t5\nu0\t4\t9\n")
  assert recbole.load_recbole(str(tmp_path), "ml").sequences == [[2, 1, 0, 3]]  # time, then file order
  tok = train_tokenizer(["Toy Story 1995 Animation Heat Casino Jumanji Drama"] * 20, 500)
  with caplog.at_level(logging.INFO):
    enc = ExampleEncoder(tok, [data], ExampleSpec(attributes=("movie_title", "release_year", "director")))
  assert enc.item_text(0, 0) == "Movie title: Toy Story, Release year: 1995."
  assert "item texts render movie_title, release_year; dropped (on fewer than data.min_attribute_coverage of " \
         "the items): director; not rendered (add them to data.attributes, or set data.attributes=all, to use " \
         "them): genre" in caplog.text
  everything = ExampleEncoder(tok, [data], ExampleSpec(attributes=("all",)))  # the default: every column
  assert everything.item_text(0, 0) == "Movie title: Toy Story, Release year: 1995, Genre: Animation Children's Comedy."
  from configs import base
  assert base.get_config().data.attributes == "all"


def test_data_that_used_to_pass_silently_wrong(tmp_path):
  """Duplicate .inter rows, an item2index giving a token two ids, a reviewerID of 0, a script in a title."""
  from calrec_jax.data import recbole
  from calrec_jax.data.text import clean_value
  from calrec_jax.errors import DataError
  (tmp_path / "d.item").write_text("item_id:token\ttitle:token_seq\nA\tPen\nB\tInk\nC\tPad\n")
  (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                    "u\tA\t1\nu\tB\t2\nu\tB\t2\nu\tC\t3\n")
  data = recbole.load_recbole(str(tmp_path), "d")
  assert data.sequences == [[0, 1, 2]] and data.skipped == {"duplicate_events": 1}  # B at time 2 counted once
  (tmp_path / "e.item2index").write_text("A\t0\nB\t1\nA\t2\n")
  (tmp_path / "e.text").write_text("item_id:token\ttext:token_seq\nA\ta\nB\tb\n")
  (tmp_path / "e.test.inter").write_text("user_id:token\titem_id_list:token_seq\titem_id:token\n0\t0 1\t1\n")
  with pytest.raises(DataError, match=r"e.item2index:3: 'A' is given two ids \(0 and 2\)"):
    recbole.load_recbole(str(tmp_path), "e")
  revs = [review(0, "a", 10), review(0, "b", 20), review(0, "c", 30)]
  write_raw(tmp_path, revs, [meta(i) for i in "abc"], gz=False)
  assert amazon_raw.load_amazon_category(str(tmp_path), "Toys", kcore=1).user_ids == ["0"]
  assert clean_value('Pen<script type="text/javascript">var x = "<b>";</script> Set<STYLE>p{}</STYLE>') == "Pen Set"


def test_the_generated_raw_files_of_the_scale_benchmark_prepare_like_amazon_s(tmp_path):
  """benchmarks/raw_amazon.py (the scale figures' input) writes files the raw loader reads as Amazon's: every
  review line kept or filtered for a reason, chronological users, long-tail items removed by the 5-core filter,
  duplicated metadata rows and rows without a title handled."""
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
  from raw_amazon import write_category
  write_category(str(tmp_path), 30_000, seed=1)
  again = tmp_path / "again"
  write_category(str(again), 30_000, seed=1)
  assert (tmp_path / "Synthetic.json.gz").read_bytes() != b"" and gzip.open(again / "Synthetic.json.gz").read() == \
      gzip.open(tmp_path / "Synthetic.json.gz").read()  # deterministic for a seed
  data = amazon_raw.load_amazon_category(str(tmp_path), "Synthetic")
  stats = records.statistics(data)
  lines = sum(1 for _ in gzip.open(tmp_path / "Synthetic.json.gz"))
  assert lines == 30_000 and 0 < stats["interactions"] < lines and stats["skipped"]["events_removed_by_kcore"] > 0
  assert 1_000 < stats["users"] and 100 < stats["items"] < 2_000
  assert all(len(s) >= 5 for s in data.sequences)  # 5-core: every user kept has >= 5 items
  assert all(a["title"] for a in data.catalog.attributes)
