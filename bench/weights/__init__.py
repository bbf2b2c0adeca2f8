"""Committed in-project model weights (fp16 safetensors + build.json with sha256 and the rebuild command)."""
