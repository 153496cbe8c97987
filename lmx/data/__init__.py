"""Corpora (tfds builders), the byte tokenizer, and windows."""
