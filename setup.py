"""GPT-Neo on Mesh-TensorFlow: train GPT-3-style models with model and data parallelism."""
from setuptools import find_packages, setup

# One import name of our own, with the repository's root as its directory: a clone keeps main.py, models/,
# inputs/, ... at the top, and an install puts nothing but gpt_neo_mtf into site-packages.
PACKAGE = "gpt_neo_mtf"
SUBPACKAGES = find_packages(include=["cli", "models", "inputs", "trainer", "trainer.config", "tfrecords_tools",
                                     "convert", "configs"])

setup(
    name="gpt-neo-mtf",
    version="0.1.0",
    description="A GPT-3-style trainer on Mesh-TensorFlow, compatible with EleutherAI GPT-Neo configs and checkpoints",
    python_requires=">=3.9,<3.12",
    packages=[PACKAGE] + ["%s.%s" % (PACKAGE, name) for name in SUBPACKAGES],
    package_dir={PACKAGE: "."},
    package_data={PACKAGE + ".inputs": ["assets/gpt2/*"],
                  PACKAGE + ".configs": ["*.json", "dataset_configs/*.json"]},
    entry_points={"console_scripts": [
        "gpt-neo = gpt_neo_mtf.cli.gpt_neo:main",
        "gpt-neo-create-tfrecords = gpt_neo_mtf.cli.create_tfrecords:main",
        "gpt-neo-check-dataset = gpt_neo_mtf.cli.check_dataset:main",
        "gpt-neo-train-tokenizer = gpt_neo_mtf.cli.train_tokenizer:main",
        "gpt-neo-hf = gpt_neo_mtf.cli.huggingface:main",
        "gpt-neo-loss-plot = gpt_neo_mtf.cli.loss_plot:main",
    ]},
    # TensorFlow comes from one extra per platform: [cpu], [tpu] or [gpu] (each 2.15.1: TF 2.16+ cannot
    # import mesh-tensorflow or the estimator), so that a later install of this package never puts
    # tensorflow-cpu back over a TPU or GPU build.
    install_requires=[
        "tensorflow-estimator==2.15.0",
        "mesh-tensorflow==0.1.21",
        "absl-py>=1.0",  # trainer/hardware.py marks mesh-tf's absl flags parsed
        "numpy>=1.23.5,<2",
        "tokenizers>=0.15,<0.22",
        "zstandard>=0.21",
        "google-crc32c>=1.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu==2.15.1; platform_machine=='x86_64'",
                "tensorflow==2.15.1; platform_machine!='x86_64'"],
        # With -f https://storage.googleapis.com/libtpu-releases/index.html (see README.md).
        "tpu": ["tensorflow-tpu==2.15.1"],
        "gpu": ["tensorflow[and-cuda]==2.15.1"],
        "ftfy": ["ftfy>=6.1"],  # create_tfrecords / train_tokenizer --ftfy
        "plot": ["matplotlib>=3.7"],  # the loss plot of `make demo` (trainer/loss_plot.py)
        "test": [
            "pytest>=7",
            # Two workers: one builds a graph (Python) while the other computes (TensorFlow).
            "pytest-xdist>=3",
            # HuggingFace's GPT-Neo loader and converter, to check that it reads our checkpoints.
            "transformers==4.47.1",
            "torch==2.13.0",
            "safetensors",
            # lm-evaluation-harness on our HF export (docs/evaluation.md); pyarrow 26, which its `datasets`
            # would bring, needs numpy 2.
            "lm-eval[hf]==0.4.13",
            "pyarrow<26",
            # Local GCS server for the gs:// tests (tests/gcs_emulator.py), the Python client the tests
            # read it with, and the only release of TF's GCS plugin that works against it (later ones segfault).
            "gcp-storage-emulator==2026.7.19",
            "google-cloud-storage>=2.10",
            "tensorflow-io-gcs-filesystem==0.34.0",
            "ftfy>=6.1",
            "matplotlib>=3.7",
        ],
    },
)
