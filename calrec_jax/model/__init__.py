"""Pretrained decoder LLMs in Flax Linen (Gemma 3, Llama family), weight import/export, decoding."""
