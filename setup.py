"""GPT-Neo on Mesh-TensorFlow: train GPT-3-style models with model and data parallelism."""
from setuptools import find_packages, setup

setup(
    name="gpt-neo-mtf",
    version="0.1.0",
    description="A GPT-3-style trainer on Mesh-TensorFlow, compatible with EleutherAI GPT-Neo configs and checkpoints",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["models", "inputs", "trainer", "trainer.config", "tfrecords_tools", "convert",
                                    "configs"]),
    py_modules=["meshtf", "errors", "storage", "main"],
    package_data={"inputs": ["assets/gpt2/*"], "configs": ["*.json", "dataset_configs/*.json"]},
    install_requires=[
        # TF 2.16+ cannot import mesh-tensorflow or the estimator. On a TPU VM install
        # tensorflow-tpu==2.15.1 instead, on GPUs tensorflow[and-cuda]==2.15.1 (see README).
        "tensorflow-cpu==2.15.1; platform_machine=='x86_64'",
        "tensorflow==2.15.1; platform_machine!='x86_64'",
        "tensorflow-estimator==2.15.0",
        "mesh-tensorflow==0.1.21",
        # Only this release of TF's GCS plugin works against a GCS emulator (later ones segfault).
        "tensorflow-io-gcs-filesystem==0.34.0",
        "numpy>=1.23.5,<2",
        "tokenizers>=0.15,<0.22",
        "google-cloud-storage>=2.10",
        "zstandard>=0.21",
        "google-crc32c>=1.5",
        "tqdm>=4.60",
        "ftfy>=6.1",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            # Two workers: one builds a graph (Python) while the other computes (TensorFlow).
            "pytest-xdist>=3",
            # HuggingFace's GPT-Neo loader and converter, to check that it reads our checkpoints.
            "transformers==4.47.1",
            "torch==2.13.0",
            "safetensors",
            # Local GCS server for the gs:// tests (tests/gcs_emulator.py).
            "gcp-storage-emulator==2026.7.19",
        ],
    },
)
