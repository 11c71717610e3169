"""Encoders for raw input: video decoding (PyAV), frame encoders and token-level text encoders.

Weights load from local paths only; nothing is downloaded."""
