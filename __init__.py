"""gpt_neo_mtf: GPT-3-style models on Mesh-TensorFlow, compatible with EleutherAI GPT-Neo configs and checkpoints.

The repository's root is this package: models/, inputs/, trainer/, tfrecords_tools/, convert/, configs/
and cli/ are its subpackages (setup.py maps them under this one name).
"""
