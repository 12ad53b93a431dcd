"""CALRec against baselines on Amazon 2014 Office, with the settings of configs/compare/scientific.py:epochs.

  python -m calrec_jax.compare --config=configs/compare/office.py --workdir=workdirs/compare_office

The second real category, as stage 2 with the Scientific recipe unchanged: the `small` random-init decoder
(SentencePiece trained on the item texts) for 5 epochs of the training prefixes at batch 16, L_UT and L_TT
against every item (bank refreshed every 60 steps), dense and fused rows (fusion weights chosen on validation),
beside popularity, BM25 over the last history texts, their fusion and SASRec, on the same fixed 1,000 test
users. Office has 38,543 training prefixes (4,905 users, 53,258 interactions), 3.5x Scientific's, so the same
5 epochs are 12,045 steps: about 4 hours on two CPU cores. `:epochs2` stops at 2 epochs; `:ids` (`:ids2`) adds
learned item identities (model.item_id_offsets).
"""
from configs.compare import scientific

OFFICE = "../shared/data/amazon2014-office"
PREFIXES = 38_543  # Office's training (history -> next item) pairs


def get_config(arg: str = ""):
  if arg not in ("", "epochs2", "ids", "ids2"):
    raise ValueError(f"unknown variant {arg!r}; use '', 'epochs2', 'ids' or 'ids2'")
  epochs = 2 if arg.endswith("2") else 5
  identities = arg.startswith("ids")
  c = scientific.get_config("epochs")
  c.title = (f"Amazon 2014 Office: the small decoder, {epochs} epochs, whole-catalog negatives"
             f"{', learned item identities' if identities else ''}, against baselines")
  c.calrec.data.path = OFFICE
  c.calrec.data.categories = "Office"
  c.calrec.data.eval_category = "Office"
  c.calrec.pipeline.stage1_categories = ""
  c.calrec.pipeline.stage2_category = "Office"
  per_epoch = -(-PREFIXES // c.calrec.data.batch_size)
  steps = per_epoch * epochs
  overrides = (
      f"loss.negatives=catalog; loss.bank_refresh_steps=60; train.num_steps={steps}; "
      f"train.eval_every={per_epoch // 2}; ckpt.every={per_epoch // 4}; ckpt.keep=2; optim.warmup_steps=100; "
      "eval.retrieval=dense")
  label = f"CALRec (stage 2), {epochs} epochs, whole-catalog negatives"
  c.variants.calrec_epochs, c.labels.calrec_epochs = overrides, label
  c.variants.calrec_ids = overrides + "; model.item_id_offsets=True"
  c.labels.calrec_ids = label + ", learned item identities"
  if identities:
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_ids"
  return c
