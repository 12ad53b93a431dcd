"""calrec_jax: CALRec sequential recommendation with a pretrained decoder LLM in JAX/Flax."""

__version__ = "0.1.0"
