"""Vector quantization for the VQ first-stage models (our own, replacing taming-transformers)."""
