"""HF tokenizer.json tokenizers: Llama 3 and Qwen 3 style byte-level BPE checkpoints made by transformers in the
test load with their weights; ids equal transformers' tokenizer, logits equal the model, export round-trips."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Title: Shoe GOO Adhesive, 3.7 fl oz; Brand: Shoe GOO; Price: $7.99",
    "Purchase history:\nFirst item: Title: 3M™ Safety-Glasses (Clear)\nNext item:",
    "Hello  world\n\nnew   line", "12345678 x 0.5 = 6172839", "日本語 テキスト ünïcödé", "emoji 🧪🔬 end",
    "&amp; <b>bold</b>\t tab", "  leading and trailing  ", "a\r\nb", "    4 spaces\n    code", "it's we'll THEY'RE",
]
CORPUS = TEXTS[:3] * 3 + ["the quick brown fox jumps over the lazy dog " * 3, "Title: Lab Beaker, 250 ml; Brand: Pyrex"]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
STYLES = {  # special tokens as the two families name them; Llama 3 prepends BOS, Qwen has none
    "llama": dict(split=LLAMA3_SPLIT, specials=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                  bos="<|begin_of_text|>", eos="<|end_of_text|>"),
    "qwen3": dict(split=QWEN_SPLIT, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None,
                  eos="<|endoftext|>"),
}


def bpe_checkpoint(style: str, folder):
  """A byte-level BPE tokenizer trained here, saved by transformers beside a tiny random model of the family."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  s = STYLES[style]
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(s["split"]), behavior="isolated"),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=s["specials"], show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  if s["bos"]:
    bos = tk.token_to_id(s["bos"])
    tk.post_processor = processors.TemplateProcessing(single=f"{s['bos']} $A", pair=f"{s['bos']} $A $B",
                                                      special_tokens=[(s["bos"], bos)])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=s["bos"], eos_token=s["eos"],
                                              pad_token=s["eos"])
  fast.save_pretrained(folder)
  ids = dict(vocab_size=tk.get_vocab_size(), bos_token_id=tk.token_to_id(s["bos"]) if s["bos"] else None,
             eos_token_id=tk.token_to_id(s["eos"]), pad_token_id=tk.token_to_id(s["eos"]))
  torch.manual_seed(0)
  if style == "llama":
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                   **ids)
    model = transformers.LlamaForCausalLM(cfg)
  else:
    cfg = transformers.Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, **ids)
    model = transformers.Qwen3ForCausalLM(cfg)
  with torch.no_grad():
    for n, p in model.named_parameters():
      if "norm" in n:
        p.add_(torch.randn_like(p) * 0.1)
  model.eval().save_pretrained(folder)
  return fast, model


def with_bos(tok, ids):
  return ([tok.bos_id] if tok.add_bos else []) + ids


@pytest.mark.parametrize("style", ["llama", "qwen3"])
def test_tokenizer_json_checkpoint_gives_transformers_ids_and_logits(style, tmp_path):
  from calrec_jax.data.hf_tokenizer import HFTokenizer
  from calrec_jax.model.decoder import Decoder
  from calrec_jax.model.loading import load_pretrained
  fast, model = bpe_checkpoint(style, tmp_path)
  cfg, params, tok = load_pretrained(str(tmp_path))
  assert isinstance(tok, HFTokenizer) and cfg.family == style
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert tok.add_bos == (style == "llama")
  assert tok.eos_id == hf.eos_token_id and tok.pad_id == hf.pad_token_id
  assert tok.bos_id == (hf.bos_token_id if style == "llama" else hf.eos_token_id)  # Qwen: the document separator
  special = "<|begin_of_text|>x<|eot_id|>" if style == "llama" else "<|im_start|>user\nhi<|im_end|>"
  for text in TEXTS + [special]:
    assert with_bos(tok, tok.encode(text)) == hf(text).input_ids, text
    assert tok.encode(text) == hf(text, add_special_tokens=False).input_ids, text
  for text in TEXTS:
    assert tok.decode(tok.encode(text)) == text
  ids = hf(TEXTS[1]).input_ids
  x = jnp.asarray([ids], jnp.int32)
  dec = Decoder(cfg)
  h, _ = dec.apply({"params": params}, x, jnp.arange(len(ids))[None], x > -1)
  ours = np.asarray(dec.apply({"params": params}, h, method=Decoder.logits))[0]
  with torch.no_grad():
    theirs = model(torch.tensor([ids])).logits[0].numpy()
  assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("style", ["llama", "qwen3"])
def test_exported_tokenizer_json_round_trips_through_transformers(style, tmp_path):
  from calrec_jax.model.loading import load_pretrained, save_converted
  from calrec_jax.model.weights import export_hf_checkpoint
  bpe_checkpoint(style, tmp_path / "src")
  cfg, params, tok = load_pretrained(str(tmp_path / "src"))
  save_converted(str(tmp_path / "conv"), cfg, params, tok)  # what training starts from and exports
  cfg2, params2, tok2 = load_pretrained(str(tmp_path / "conv"))
  export_hf_checkpoint(params2, cfg2, str(tmp_path / "hf"), tok2)
  src = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "src"))
  out = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  for text in TEXTS:
    assert out(text).input_ids == src(text).input_ids == with_bos(tok2, tok2.encode(text)), text
  assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["add_bos_token"] == (style == "llama")
  back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  assert type(back).__name__ == {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[style]


def test_malformed_tokenizer_json_is_named(tmp_path):
  from calrec_jax.data.tokenizer import load_tokenizer
  from calrec_jax.errors import DataError
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(DataError, match="tokenizer.json"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer.json").unlink()
  with pytest.raises(DataError, match="no tokenizer here"):
    load_tokenizer(str(tmp_path))


@pytest.mark.slow
def test_exported_gemma_tokenizer_adds_bos_in_transformers(tmp_path):
  """The source tokenizer gives [2, 9259, 1902] for 'Hello world'; the exported files make transformers agree."""
  from calrec_jax.errors import WeightImportError
  from calrec_jax.model.config import preset
  from calrec_jax.model.gguf_import import open_gguf
  from calrec_jax.model.gguf_tokenizer import tokenizer_from_gguf
  from calrec_jax.model.loading import packaged_path
  from calrec_jax.model.weights import write_hf_tokenizer
  try:
    path = packaged_path("gemma3-270m-gguf")
  except WeightImportError as e:
    pytest.skip(str(e))
  tok = tokenizer_from_gguf(open_gguf(path), path)
  write_hf_tokenizer(tok, preset("gemma3-270m"), str(tmp_path))
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert hf("Hello world").input_ids == [2, 9259, 1902]
  for text in TEXTS:
    assert hf(text).input_ids == [tok.bos_id] + tok.encode(text), text
