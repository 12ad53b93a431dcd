"""Shared defaults for every calrec_jax run. Stage and demo configs start from `get_config()`.

Restore order at start (first that applies wins):
  1. the latest readable checkpoint in --workdir (full resume: params, optimizer, step, data position);
  2. ckpt.init_from: params of another workdir or params checkpoint (fresh optimizer and step);
  3. model.pretrained: pretrained weights (HF directory or hf:// Hub id, GGUF file, converted checkpoint,
     or a package name);
  4. random init of model.preset.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                         # init and data-order seed
  c.stage = "stage1"                 # label written to logs and metrics

  c.model = m = ml_collections.ConfigDict()
  m.preset = "tiny"                  # architecture when not pretrained: tiny, tiny-llama, small, gemma3-270m, ...
  m.pretrained = ""                  # HF dir | hf://org/name | *.gguf | converted dir | packaged name
  #                                    ('gemma3-270m-gguf', 'smollm2-135m-gguf')
  m.compute_dtype = "float32"        # 'bfloat16' for speed; params, loss and softmax stay float32
  m.remat = False                    # rematerialise blocks in the backward pass (less memory, ~30% slower)
  m.scan_layers = False              # run the blocks as one jax.lax.scan: one block compiled (README: what it
  #                                    saves and costs; off by default)
  m.attention = "einsum"             # training attention: einsum (reference) | xla (jax.nn.dot_product_attention)
  #                                    | cudnn (fused flash attention on NVIDIA GPUs; needs compute_dtype bfloat16)
  m.projection_dim = 0               # optional linear head on tower embeddings (0: none)
  m.item_id_offsets = False          # a learned vector per catalog item added to its text embedding (ID + text;
  #                                    an item never trained on keeps its text vector; docs/results.md measures it)
  m.item_bias = False                # a learned bias per catalog item added to its dense score (v_U . v_T + b_item),
  #                                    trained by SGD at optim.item_bias_rate; an item never trained on keeps 0
  m.lora_rank = 0                    # > 0: train LoRA adapters of this rank on frozen weights (0: full finetuning)
  m.lora_alpha = 16.0                # LoRA scale = lora_alpha / lora_rank
  m.lora_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # projections with adapters
  m.lora_layers = 0                  # adapters in the top N blocks only (0: all); the backward pass stops there
  m.cache_frozen_layers = False      # with lora_layers and packing: run the frozen lower blocks once per unit and
  #                                    item, store their outputs in the workdir, train only the top blocks

  c.tokenizer = t = ml_collections.ConfigDict()
  t.path = ""                        # tokenizer.model, tokenizer.json or their folder; empty: the pretrained
  #                                    checkpoint's, else one trained on the item texts
  t.vocab_size = 2000                # vocabulary of a tokenizer trained on the fly

  c.data = d = ml_collections.ConfigDict()
  d.source = "synthetic"             # synthetic | prepared | recbole | amazon_raw | tfds
  d.path = ""                        # folder of the source (prepared root, RecBole files, raw files, TFDS data_dir)
  d.categories = ""                  # comma-separated; empty: all (prepared/synthetic)
  d.eval_category = ""               # category evaluated (default: the first)
  d.kcore = 5                        # raw/tfds: k-core filter
  d.dedup = True                     # raw: drop repeated (user, item) events
  d.skip_malformed = False           # raw: count and skip malformed lines instead of stopping
  d.min_sequence_length = 3          # raw: shortest user kept after filtering
  d.tfds_manual_dir = ""             # tfds: folder with the raw files (else download)
  d.tfds_beam_options = ""           # tfds: Apache Beam pipeline flags, e.g. "--runner=DataflowRunner --project=P
  #                                    --region=R --temp_location=gs://B/tmp --setup_file=./setup.py"; "": local
  d.synthetic_users = ""             # synthetic: users per category, comma-separated
  d.synthetic_seed = 0               # synthetic: generator seed
  d.cold_start_items = 0.0           # > 0: this fraction of the evaluated category's items is new (never in
  #                                    training); evaluation ranks only users whose held-out item is new
  d.cold_start_seed = 0              # which items are new
  d.mixture_alpha = 0.3              # p(category) ∝ n_users ** alpha
  d.max_len = 256                    # joint-tower tokens (prompt + target)
  d.max_history = 20                 # most recent history items kept
  d.max_item_tokens = 48             # tokens of one item text
  d.user_tokens = 0                  # v_U = mean over the prompt's last N tokens (0: the whole prompt, the
  #                                    paper's; 1: the last token's state; each sees the whole history, causally)
  d.length_buckets = "128,256"       # joint lengths compiled for (comma-separated; max_len is always added)
  d.attributes = "all"               # item attributes rendered, in order ("title,category,brand,price"), or all:
  #                                    every attribute the catalog has (title first, then in the file's order)
  d.min_attribute_coverage = 0.05    # per category, an attribute known for fewer items is left out (0: keep all)
  d.batch_size = 16                  # GLOBAL batch (all devices and hosts): examples, or units when packed
  d.packing = "prefix"               # prefix: one (history -> next item) example per row | sequence: a window of
  #                                    a user's items per row, every next item trained from one causal pass
  d.pack_window = 6                  # sequence: items rendered per row (next items trained: up to window - 1)
  d.pack_context = 2                 # sequence: history items each target of a long user's later window sees
  d.pack_max_len = 384               # sequence: tokens of a row, holding as many whole windows as fit (a window's
  #                                    oldest items are dropped until it fits alone)
  d.pack_slots = 12                  # sequence: targets of one row (>= pack_window - 1)
  d.pack_item_len = 384              # sequence: item-tower tokens of one row (its targets' texts, packed)

  c.loss = ls = ml_collections.ConfigDict()
  ls.w_nig = 1.0                     # next-item generation (LM on target tokens)
  ls.w_tt = 0.5                      # InfoNCE(v_T|U, v_T)
  ls.w_ut = 0.5                      # InfoNCE(v_U, v_T)
  ls.temperature = 0.05              # contrastive temperature
  ls.symmetric = False               # also the key->query direction
  ls.vocab_chunk = 16384             # vocabulary chunk of the LM loss
  ls.lm_vocab = "full"               # full | catalog: L_NIG's softmax over the tokens the item texts use only
  ls.negatives = "batch"             # batch: the other rows' targets | catalog: every item of the run's categories
  #                                    (an item bank in the train state, fresh vectors for the batch's targets)
  ls.bank_refresh_steps = 100        # catalog: steps between re-encodings of the item bank
  ls.sampled_negatives = 0           # catalog: M catalog items drawn uniformly per step and encoded fresh, so that
  #                                    items outside the batch get a gradient as negatives (mixed negative sampling)

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"                   # adamw | adafactor
  o.learning_rate = 1e-4
  o.schedule = "cosine"              # cosine | linear | constant (all with linear warmup)
  o.warmup_steps = 100
  o.final_lr_fraction = 0.1          # lr at the end, as a fraction of the peak
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.01
  o.grad_clip_norm = 1.0             # 0: off
  o.item_id_sgd_rate = 0.0           # > 0: the item identity table (model.item_id_offsets) takes plain SGD steps at
  #                                    this peak rate (same schedule) instead of the optimizer's, so that each row
  #                                    moves in proportion to its gradient (0: the run's optimizer)
  o.item_bias_rate = 0.05            # peak SGD rate of the item bias (model.item_bias), same schedule as the run's
  #                                    (SGD, not the optimizer: Adam would turn every rare item's steady push as a
  #                                    negative into full-size steps instead of steps as large as its gradient)
  o.item_id_min_count = 0            # > 0: only the per-item rows (identities, bias) of items the training
  #                                    sequences hold at least this often train; the others keep their start
  #                                    (zero: text alone) (0: every row)
  o.grad_accum = 1                   # microbatches per step: same gradient, less memory (batch_size must divide)

  c.train = tr = ml_collections.ConfigDict()
  tr.num_steps = 1000
  tr.log_every = 10                  # steps between metric rows
  tr.eval_every = 0                  # steps between validations (0: only at the end)
  tr.max_consecutive_nonfinite = 5   # stop after this many non-finite losses in a row
  tr.progress = True                 # progress bar
  tr.peak_flops = 0.0                # peak FLOP/s of one device (e.g. 989e12: H100 bf16): logs perf/mfu (0: off)

  c.mesh = me = ml_collections.ConfigDict()
  me.data = -1                       # data-parallel size (-1 fills the remaining devices)
  me.fsdp = 1                        # parameter sharding size
  me.tensor = 1                      # tensor-parallel size

  c.ckpt = ck = ml_collections.ConfigDict()
  ck.every = 200                     # steps between checkpoints
  ck.keep = 3                        # checkpoints kept
  ck.async_save = True
  ck.save_concurrent_gb = 96         # GB of the state a save copies to host memory at once (orbax's default)
  ck.init_from = ""                  # params of a stage-1 workdir (or params checkpoint) for stage 2

  c.eval = ev = ml_collections.ConfigDict()
  ev.split = "test"                  # valid | test
  ev.max_users = 10000               # a fixed random subset of at most this many users (0: every user); the
  #                                    log says when it leaves users out
  ev.valid_users = 200               # users of the periodic validation during training
  ev.valid_items = 0                 # > 0: periodic validation ranks a fixed random sample of this many items plus
  #                                    the validation targets (sampled metrics, logged as valid/dense_sampled_*,
  #                                    read higher than whole-catalog ones); 0: the whole catalog
  ev.item_batch_size = 64            # items per item-tower batch when embedding the catalog
  ev.reference_valid_ndcg = ""       # lines on time_to_quality.png: label=validation NDCG@10, e.g. 'SASRec=0.087'
  ev.batch_size = 16                 # users per generation batch
  ev.num_samples = 8                 # sampled continuations per user
  ev.temperature = 1.0
  ev.top_k = 0                       # 0: off
  ev.top_p = 1.0                     # 1.0: off
  ev.beam_search = False             # beam search with num_samples beams instead of sampling
  ev.max_new_tokens = 64
  ev.retrieval = "bm25"              # bm25 (generation + BM25, and dense beside it) | dense
  ev.constrained = False             # also a row of catalog-constrained generation + BM25 (samples = real items)
  ev.exclude_history = True          # never recommend items already in the history
  ev.beams = 0                       # > 0: a row ranked by catalog-constrained beam search with this many beams
  ev.beam_length_penalty = 0.0       # beam scores: summed log-probability / length ** this
  ev.sub_vocabulary = True           # beams score only the tokens the catalog's texts use (softmax over them)
  ev.fusion = ""                     # signals of a fused row ("dense,beam,bm25_history,popularity" or some): per
  #                                    item a weighted sum of per-user standardised scores, the weights chosen on
  #                                    the validation split (eval.split must be test); "" for none
  ev.fusion_history_items = 3        # bm25_history: the query is the texts of the user's last N items
  ev.fusion_metric = "ndcg@10"       # what the weights maximise on validation (recall@k, ndcg@k or mrr)
  ev.fusion_method = "weights"       # weights: one weight per signal | learned: a small network over the signals,
  #                                    their ranks and each user's confidence, also fitted on validation only
  ev.ks = "1,5,10,20"                # Recall@k / NDCG@k cut-offs
  ev.bm25_k1 = 1.5
  ev.bm25_b = 0.75
  ev.bm25_epsilon = 0.25

  c.compile_cache = cc = ml_collections.ConfigDict()
  cc.dir = "auto"                    # JAX's persistent compilation cache: auto ($CALREC_COMPILE_CACHE, else
                                     # ~/.cache/calrec_jax/xla) | a folder or gs:// URL | "" (off)
  cc.min_compile_secs = 1.0          # only programs that took this long to compile are written

  c.pipeline = p = ml_collections.ConfigDict()  # --mode=pipeline: stage 1 -> stage 2 -> evaluation, one command
  p.stage1_categories = "Garden,Kitchen,Lab_Supplies,Office"  # stage 1's mixture (comma-separated)
  p.stage2_category = "Office"       # stage 2's target category, which the evaluation ranks
  p.stage1_steps = 600
  p.stage2_steps = 300
  p.stage2_learning_rate = 5e-4      # stage 2 starts a fresh optimizer from stage 1's params at this rate

  c.multihost = ml_collections.ConfigDict()
  c.multihost.enabled = False        # call jax.distributed.initialize (automatic on TPU pods)
  c.multihost.coordinator = ""       # host:port of process 0 (empty: auto-detect)
  c.multihost.num_processes = 0
  c.multihost.process_id = -1
  return c
