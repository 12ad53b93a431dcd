"""Keys shared by every comparison config: the methods, the baselines' hyper-parameters, the CALRec variants.

A comparison trains and evaluates each method of `methods` on the data, users and metric settings of `calrec`
(a full CALRec run config, configs/base.py keys): `calrec.data` (category = calrec.data.eval_category),
`calrec.eval` (split, eval.max_users subset, eval.ks, eval.exclude_history) and `calrec.seed` are every method's.
"""
import ml_collections

BASELINES = "popularity,bm25_history,text_fused,sasrec,gru4rec"
FUSION = "dense,bm25_history,popularity"  # the fused row's signals (eval.fusion)
VARIANTS = "calrec,calrec_two_stage,calrec_contrastive_only,calrec_lm_only,calrec_no_tt,calrec_no_ut"


def get_config(calrec: ml_collections.ConfigDict, title: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = title                      # heading of comparison.md and the bar chart
  c.methods = BASELINES + "," + VARIANTS  # run in this order; add 'zero_shot' for the untuned pretrained LLM
  c.progress = True                    # progress bars
  c.calrec = calrec                    # the CALRec run config every variant starts from
  with c.calrec.unlocked():
    c.calrec.eval.fusion = FUSION      # every CALRec variant also gets a fused row (weights chosen on validation)
    c.calrec.pipeline = p = ml_collections.ConfigDict()
    p.enabled = False                  # True (a variant's override): stage 1 on the mixture, then stage 2
    p.stage1_categories = ""           # mixture of stage 1 (comma-separated)
    p.stage2_category = ""             # target category of stage 2 (= calrec.data.eval_category)
    p.stage1_steps = 300
    p.stage2_steps = 300
    p.stage2_learning_rate = 5e-4

  # CALRec variants (the paper's ablations): ';'-separated overrides of `calrec`, never a code fork.
  c.variants = v = ml_collections.ConfigDict()
  v.calrec = ""                                         # stage 2 only: the target category alone
  v.calrec_two_stage = "pipeline.enabled=true"          # stage 1 on the mixture -> stage 2
  v.calrec_no_tt = "loss.w_tt=0"                        # without L_TT
  v.calrec_no_ut = "loss.w_ut=0"                        # without L_UT
  v.calrec_lm_only = "loss.w_tt=0; loss.w_ut=0"         # next-item generation loss only
  v.calrec_contrastive_only = "loss.w_nig=0; eval.retrieval=dense"  # contrastive losses only, dense retrieval
  # ensembles: name -> comma-separated CALRec variants (listed before it in `methods`) whose dense scores are fused
  # with the model-free signals of calrec.eval.fusion, weights chosen on validation (eval/ensemble.py)
  c.ensembles = ml_collections.ConfigDict()
  # ensemble_fusion: name -> how that ensemble fuses ("weights" | "learned", eval/fusion_methods.py); an ensemble
  # not named here uses calrec.eval.fusion_method
  c.ensemble_fusion = ml_collections.ConfigDict()
  c.labels = lb = ml_collections.ConfigDict()           # row labels of the variants and ensembles
  lb.calrec = "CALRec (stage 2)"
  lb.calrec_two_stage = "CALRec (stage 1 + 2)"
  lb.calrec_no_tt = "CALRec w/o L_TT"
  lb.calrec_no_ut = "CALRec w/o L_UT"
  lb.calrec_lm_only = "CALRec, L_NIG only"
  lb.calrec_contrastive_only = "CALRec, contrastive only"

  # SASRec: RecBole 1.2.1's defaults (CE loss), early stopping on validation NDCG@10.
  c.sasrec = s = ml_collections.ConfigDict()
  s.max_len = 50                     # most recent history items
  s.hidden = 64
  s.layers = 2
  s.heads = 2
  s.inner = 256                      # feed-forward width
  s.dropout = 0.5                    # hidden dropout
  s.attn_dropout = 0.5
  s.learning_rate = 1e-3             # Adam
  s.weight_decay = 0.0
  s.batch_size = 256
  s.max_epochs = 300
  s.patience = 10                    # epochs without a better validation NDCG@10 before stopping

  # GRU4Rec: RecBole 1.2.1's defaults (CE loss), same training protocol as SASRec.
  c.gru4rec = g = ml_collections.ConfigDict()
  g.max_len = 50
  g.embedding = 64
  g.hidden = 128
  g.dropout = 0.3                    # on the item embeddings
  g.learning_rate = 1e-3
  g.weight_decay = 0.0
  g.batch_size = 256
  g.max_epochs = 300
  g.patience = 10

  c.bm25_history = b = ml_collections.ConfigDict()
  b.num_items = 3                    # the query: texts of the user's last N history items

  c.zero_shot = z = ml_collections.ConfigDict()
  z.overrides = "model.pretrained=gemma3-270m-gguf"  # overrides of `calrec` for the untuned LLM's evaluation

  c.significance = sg = ml_collections.ConfigDict()
  sg.bootstrap = 10000               # paired bootstrap resamples (the paired t-test is reported beside it)
  return c


def add_pretrained_rows(c: ml_collections.ConfigDict, pretrained: str, label: str, steps: int, batch_size: int,
                        ckpt_every: int, learning_rate: float = 3e-4, lora_rank: int = 8,
                        eval_batch_size: int = 16) -> None:
  """The pretrained-decoder recipe as two methods: `zero_shot` (the untuned checkpoint) and
  `calrec_pretrained_lora` (CALRec losses on LoRA adapters); each reports free generation + BM25, catalog-
  constrained generation + BM25, and dense retrieval. The learning rate is constant after a short warmup, so
  the checkpoints every `ckpt_every` steps form the steps-vs-quality curve (`python -m calrec_jax.evaluate
  --step=N`); full finetuning is `model.lora_rank=0` in the variant's overrides."""
  shared = (f"model.pretrained={pretrained}; loss.vocab_chunk=32768; eval.batch_size={eval_batch_size}; "
            "eval.constrained=true; "
            f"eval.max_new_tokens={c.calrec.data.max_item_tokens + 1}")  # constrained samples can end
  c.zero_shot.overrides = shared
  c.variants.calrec_pretrained_lora = (
      f"{shared}; model.lora_rank={lora_rank}; data.batch_size={batch_size}; train.num_steps={steps}; "
      f"optim.learning_rate={learning_rate}; optim.schedule=constant; optim.warmup_steps={max(steps // 30, 1)}; "
      f"ckpt.every={ckpt_every}; ckpt.keep={max(steps // ckpt_every, 1)}")
  c.labels.calrec_pretrained_lora = f"CALRec {label} LoRA r{lora_rank}, {steps} steps"



# The packed recipe's overrides (on top of add_pretrained_rows' shared ones): every next item of a user's window
# from one causal pass, rows holding several windows; L_NIG over the catalog's tokens; bfloat16 compute; L_UT and
# L_TT against every item of the catalog (the item bank). Measured in docs/training.md.
PACKED_RECIPE = ("data.packing=sequence; data.pack_window=6; data.pack_context=2; data.pack_max_len=384; "
                 "data.pack_slots=10; data.pack_item_len=256; loss.lm_vocab=catalog; model.compute_dtype=bfloat16; "
                 "loss.negatives=catalog")


def add_packed_row(c: ml_collections.ConfigDict, label: str, steps: int, batch_size: int, eval_every: int,
                   learning_rate: float = 3e-4, lora_rank: int = 8, lora_layers: int = 0,
                   bank_refresh_steps: int = 50, retrieval: str = "dense", schedule: str = "constant",
                   cache_frozen_layers: bool = False) -> None:
  """`calrec_packed`: the pretrained decoder (c.zero_shot's model) trained with PACKED_RECIPE on LoRA adapters,
  validated every `eval_every` steps (its time_to_quality.png), evaluated by `retrieval`."""
  c.variants.calrec_packed = (
      f"{c.zero_shot.overrides}; {PACKED_RECIPE}; model.lora_rank={lora_rank}; model.lora_layers={lora_layers}; "
      f"data.batch_size={batch_size}; train.num_steps={steps}; train.eval_every={eval_every}; "
      f"loss.bank_refresh_steps={bank_refresh_steps}; optim.learning_rate={learning_rate}; optim.schedule={schedule}; "
      f"optim.warmup_steps={max(steps // 30, 1)}; ckpt.every={eval_every}; ckpt.keep=2; eval.retrieval={retrieval}; "
      f"eval.constrained=false; model.cache_frozen_layers={cache_frozen_layers}")
  c.labels.calrec_packed = f"CALRec {label} LoRA r{lora_rank}, packed, {steps} steps"
