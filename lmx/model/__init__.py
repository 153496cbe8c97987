"""The Transformer: architecture, attention and its backends, the KV cache and decoding."""
