"""Generation, BM25 / dense retrieval, quasi-round-robin merge and full-ranking metrics."""
