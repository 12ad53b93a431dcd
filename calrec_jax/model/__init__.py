"""Pretrained decoder LLMs in Flax Linen (Gemma 3, Llama family, Qwen 3 / 2), weight import/export, decoding."""
