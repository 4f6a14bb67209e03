"""Does distillation help, over a whole run? Validation loss curves of a small student distilled from a
trained teacher against the same student on the labels alone, on the shipped sample corpus
(docs/distillation.md draws them; tests/test_distill.py checks the end point at 40 steps, seed 1).

    python bench/distill_curve.py [--steps 200] [--every 20] [--seeds 1,2,3] [--output curve.png]

The models are tests/test_distill.py's: the tests' tiny config (n_ctx 32, 2 layers, GPT-2 vocabulary), a
teacher of n_embd 64 trained 200 steps, and students of a quarter of its width (n_embd 16, 4 heads),
distilled with alpha 0.5 and T 1. Every student runs `--steps` steps from the same seed in both kinds and is
evaluated (4 batches of the validation split) every `--every` steps. Prints a table of validation
cross-entropy and writes the plot (matplotlib, `pip install -e ".[plot]"`). About 10 minutes on 2 cores.
"""
import argparse
import json
import os
import tempfile

from common import REPO, VOCAB, machine

from gpt_neo_mtf.cli import gpt_neo
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords

N_CTX = 32
BASE = {"n_ctx": N_CTX, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_vocab": VOCAB,
        "attention_types": [[["global", "local"], 1]], "local_attention_radius": 8, "mesh_shape": "x:1",
        "layout": "batch:x", "train_batch_size": 4, "eval_batch_size": 4, "predict_batch_size": 1,
        "eval_steps": 4, "predict_steps": 0, "lr_decay": "cosine", "opt_name": "adam", "beta1": 0.9,
        "beta2": 0.95, "epsilon": 1e-8, "weight_decay": 0.01, "gradient_clipping": 1.0, "embed_dropout": 0.0,
        "attn_dropout": 0.0, "res_dropout": 0.0, "scale_by_depth": True, "scale_by_in": False,
        "datasets": [["sample", None, None, None]]}
TEACHER = dict(n_embd=64, train_steps=200, iterations=200, lr=0.003, warmup_steps=10, eval_steps=0)
STUDENT = dict(n_embd=16, n_head=4, lr=0.003, warmup_steps=5)
KINDS = {"labels": {}, "distilled": dict(distill_alpha=0.5, distill_temperature=1.0)}


def write_config(root, name, **keys):
    path = os.path.join(root, name + ".json")
    with open(path, "w") as f:
        json.dump(dict(BASE, model_path=os.path.join(root, name + "_model"), **keys), f)
    return path


def train(path, every):
    if gpt_neo.main(["--model", path, "--steps_per_checkpoint", str(every)]) != 0:
        raise SystemExit("training %s failed" % path)


def validation_curve(path):
    """{step: validation cross-entropy} of a run, from its eval_results.jsonl."""
    with open(os.path.join(os.path.dirname(path), os.path.basename(path)[:-5] + "_model", "eval_results.jsonl")) as f:
        return {row["global_step"]: row["cross_entropy"] for row in map(json.loads, f)}


def plot(curves, output):
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=110)
    for kind, color in (("labels", "tab:gray"), ("distilled", "tab:blue")):
        runs = [curve for (k, _), curve in curves.items() if k == kind]
        steps = sorted(runs[0])
        for curve in runs:
            axes.plot(steps, [curve[s] for s in steps], color=color, alpha=0.3, linewidth=1)
        mean = [sum(curve[s] for curve in runs) / len(runs) for s in steps]
        axes.plot(steps, mean, color=color, linewidth=2.2,
                  label="%s (mean of %d seeds)" % ("distilled, alpha 0.5" if kind == "distilled" else
                                                   "labels alone", len(runs)))
    axes.set_xlabel("student step")
    axes.set_ylabel("validation cross-entropy (nats)")
    axes.set_title("Quarter-width student (n_embd 16) on the sample corpus")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="student steps")
    p.add_argument("--every", type=int, default=20, help="evaluate every N steps")
    p.add_argument("--seeds", default="1,2,3", help="student seeds, comma-separated")
    p.add_argument("--output", default=os.path.join(REPO, "docs", "images", "distill_curve.png"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(machine("bench/distill_curve.py"))
    root = tempfile.mkdtemp(prefix="distill_curve_")
    records = os.path.join(root, "records")
    for split in ("train", "val"):
        create_tfrecords(os.path.join(REPO, "data", "sample", split + ".jsonl.zst"), os.path.join(records, split),
                         "gpt2", name="sample", chunk_size=N_CTX, files_per=300)
    os.makedirs(os.path.join(root, "dataset_configs"))
    with open(os.path.join(root, "dataset_configs", "sample.json"), "w") as f:
        json.dump({"n_vocab": VOCAB, "path": records + "/train/*.tfrecords", "eval_path": records + "/val/*.tfrecords",
                   "tokenizer_path": "gpt2", "eos_id": 50256, "padding_id": 50256}, f)
    teacher = write_config(root, "teacher", **TEACHER)
    train(teacher, TEACHER["train_steps"])
    curves = {}
    for seed in seeds:
        for kind, keys in KINDS.items():
            if keys:
                keys = dict(keys, distill_teacher=teacher)
            path = write_config(root, "%s_%d" % (kind, seed), **STUDENT, **keys, seed=seed,
                                train_steps=args.steps, iterations=args.every)
            train(path, args.every)
            curves[kind, seed] = validation_curve(path)
    steps = sorted(curves["labels", seeds[0]])
    print("\nvalidation cross-entropy (nats) by student step")
    print("| step | " + " | ".join("%s seed %d" % (k, s) for s in seeds for k in KINDS) + " | mean gap |")
    print("|---|" + "---|" * (2 * len(seeds) + 1))
    for step in steps:
        gap = sum(curves["labels", s][step] - curves["distilled", s][step] for s in seeds) / len(seeds)
        print("| %d | " % step + " | ".join("%.3f" % curves[k, s][step] for s in seeds for k in KINDS)
              + " | %.3f |" % gap)
    plot(curves, args.output)
    print("\nwrote %s (runs in %s)" % (args.output, root))


if __name__ == "__main__":
    main()
