"""CALRec against baselines on Amazon 2014 Office, with the settings of configs/compare/scientific.py:epochs.

  python -m calrec_jax.compare --config=configs/compare/office.py --workdir=workdirs/compare_office

The second real category, as stage 2 with the Scientific recipe unchanged: the `small` random-init decoder
(SentencePiece trained on the item texts) for 5 epochs of the training prefixes at batch 16, L_UT and L_TT
against every item (bank refreshed every 60 steps), dense and fused rows (fusion weights chosen on validation),
beside popularity, BM25 over the last history texts, their fusion and SASRec, on the same fixed 1,000 test
users. Office has 38,543 training prefixes (4,905 users, 53,258 interactions), 3.5x Scientific's, so the same
5 epochs are 12,045 steps: about 4 hours on two CPU cores. `:epochs2` stops at 2 epochs; `:ids` (`:ids2`) adds
learned item identities (model.item_id_offsets); `:bias` (`:bias2`) a learned bias per item in the dense score
(model.item_bias), Scientific's `:epochs_bias`. `:packed2_bias` is Scientific's `:packed2_bias` on Office:
Gemma-3-270M, 2 epochs of the packed recipe with the item bias (2,570 steps of 8 packed rows; the frozen-layer
cache of Office's 11,507 units and 2,420 items takes about an hour on two CPU cores, the steps about 5 hours).
"""
from configs.compare import scientific

OFFICE = "../shared/data/amazon2014-office"
PREFIXES = 38_543  # Office's training (history -> next item) pairs
PACKED_STEPS = 2570  # 2 epochs of Office's 11,507 packed units at 8 rows per step (2,566, Gemma's tokenizer)


# arg without its epoch suffix -> (method, overrides added, title part, label part)
CHANGES = {
    "": ("calrec_epochs", "", "", ""),
    "ids": ("calrec_ids", "; model.item_id_offsets=True", ", learned item identities", ", learned item identities"),
    "bias": ("calrec_bias", scientific.FIVE_EPOCH_VARIANTS["epochs_bias"][1], ", a learned item bias",
             ", learned item bias"),
}
VARIANTS = ("", "epochs2", "ids", "ids2", "bias", "bias2", "packed2_bias")


def on_office(c) -> None:
  """Point a Scientific comparison config at Office, stage 2 only."""
  c.calrec.data.path = OFFICE
  c.calrec.data.categories = "Office"
  c.calrec.data.eval_category = "Office"
  c.calrec.pipeline.stage1_categories = ""
  c.calrec.pipeline.stage2_category = "Office"


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r}; use one of {', '.join(repr(v) for v in VARIANTS)}")
  if arg == "packed2_bias":
    c = scientific.get_config()
    c.title = "Amazon 2014 Office: Gemma-3-270M, packed recipe, 2 epochs, a learned item bias, against baselines"
    on_office(c)
    scientific.packed_two_epochs(c, steps=PACKED_STEPS, eval_every=PACKED_STEPS // 10, item_bias=True)
    return c
  epochs = 2 if arg.endswith("2") else 5
  name, change, title, label = CHANGES[arg.removesuffix("2").removesuffix("epochs")]
  c = scientific.get_config("epochs")
  c.title = f"Amazon 2014 Office: the small decoder, {epochs} epochs, whole-catalog negatives{title}, against baselines"
  on_office(c)
  per_epoch = -(-PREFIXES // c.calrec.data.batch_size)
  steps = per_epoch * epochs
  overrides = (
      f"loss.negatives=catalog; loss.bank_refresh_steps=60; train.num_steps={steps}; "
      f"train.eval_every={per_epoch // 2}; ckpt.every={per_epoch // 4}; ckpt.keep=2; optim.warmup_steps=100; "
      "eval.retrieval=dense")
  del c.variants["calrec_epochs"], c.labels["calrec_epochs"]
  c.variants[name] = overrides + change
  c.labels[name] = f"CALRec (stage 2), {epochs} epochs, whole-catalog negatives{label}"
  c.methods = f"popularity,bm25_history,text_fused,sasrec,{name}"
  return c
