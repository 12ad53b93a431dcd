"""Classic baselines evaluated by the same harness as CALRec: ID-based sequential models (SASRec, GRU4Rec),
popularity and text-only BM25 over the user's history."""
