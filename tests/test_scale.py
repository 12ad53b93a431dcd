"""Nothing in building a run is worse than linear in items: the work is counted (item texts cleaned), not timed."""
import pytest

from test_train import smoke_config


@pytest.mark.parametrize("small, large", [(420, 4200)])  # items per product type: 5,040 and 50,400 items
def test_building_a_run_cleans_each_item_text_a_constant_number_of_times(small, large, tmp_path, monkeypatch):
  from calrec_jax.data import synthetic, text
  from calrec_jax.model.run_parts import build
  calls = {"n": 0}
  real = text.clean_value

  def counting(value):
    calls["n"] += 1
    return real(value)
  monkeypatch.setattr(text, "clean_value", counting)
  work = {}
  for items in (small, large):
    cat = synthetic.make_category("Office", 30, seed=0, items_per_type=items)
    n_items = len(cat.catalog)
    calls["n"] = 0
    c = smoke_config(1, 1)
    c.tokenizer.vocab_size = 400
    build(c, str(tmp_path / f"run{items}"), categories=[cat])
    work[items] = (calls["n"], n_items)
  (w_small, n_small), (w_large, n_large) = work[small], work[large]
  assert n_large >= 8 * n_small
  assert w_large / w_small <= 1.2 * n_large / n_small, work  # linear: the same work per item
