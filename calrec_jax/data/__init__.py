"""Data: sources (raw Amazon, RecBole, TFDS, synthetic) -> one representation -> tokenized batches."""
