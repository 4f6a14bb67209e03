"""Converters between our Mesh-TF checkpoints and other formats (`convert.huggingface`)."""
