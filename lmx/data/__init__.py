"""Corpora (tfds builders), tokenizers (bytes, SentencePiece), and windows."""
