"""Bytes <-> structures: GGUF reader and writer, tokenizers, chat templates, model catalog."""
