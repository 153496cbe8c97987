"""Sources (text, jsonl, parquet, tfds), the token store, tokenizers (bytes,
SentencePiece), windows, prefetching and the synthetic tasks."""
