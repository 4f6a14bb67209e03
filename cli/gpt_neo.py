"""GPT-Neo on Mesh-TensorFlow: train, evaluate or sample a model described by a JSON config.

    gpt-neo --model configs/demo_cpu.json                # train (and validate every N steps)
    gpt-neo --model gpt3_XL_256_Pile n_layer=2 mesh_shape=x:1,y:2   # config keys overridden
    gpt-neo --model gpt_neo_125M --tpu my-tpu            # on a TPU (or --tpu local on a TPU VM)
    gpt-neo --model CONFIG --eval                        # evaluate the latest checkpoint
    gpt-neo --model CONFIG --predict --prompt p.txt      # sample from the latest checkpoint
    gpt-neo --model CONFIG --cluster cluster.json        # the chief of a multi-host run (docs/clusters.md)
    gpt-neo --worker --cluster cluster.json --task 1     # each other host of it

From a clone, `python main.py` is the same program.
"""
import argparse
import sys

from . import parser

MODES = ("eval", "predict", "export", "check_dataset", "auto_layout", "auto_layout_and_mesh_shape")
# Flags that change sampling: --predict, the generation model of --export, and sampling during training.
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "max_new_tokens", "num_samples", "seed", "entmax_sampling")


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--model", default=None,
                   help="model config: a path ending in .json (local or gs://) or the name of one in configs/; "
                        "default with --model_path: the config.json a training run recorded there")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="replace config keys, typed and checked like the file's: a JSON value (2, 0.5, true, "
                        "null, [[[\"global\"], 2]]) or else a string (mesh_shape=x:1,y:2); e.g. n_layer=2 n_embd=64")
    p.add_argument("--model_path", default=None, help="same as model_path=... (e.g. a downloaded checkpoint)")
    p.add_argument("--mesh_shape", default=None, help="same as mesh_shape=... (e.g. all:1 on one CPU)")
    p.add_argument("--layout", default=None, help="same as layout=... (\"\" = replicated)")
    p.add_argument("--tpu", default=None,
                   help="TPU name (\"local\" on a TPU VM, \"colab\" to discover it); runs the SIMD mesh on TPU")
    p.add_argument("--gpu_ids", nargs="+", default=None,
                   help="device strings for the placement mesh, one per mesh position (e.g. device:GPU:0 "
                        "device:GPU:1); default: all visible GPUs, else one virtual CPU device per position")
    p.add_argument("--cluster", default=None,
                   help="cluster file (docs/clusters.md): run the mesh over the devices of every task listed; "
                        "this process is task 0, the chief, unless --worker")
    p.add_argument("--worker", action="store_true",
                   help="serve task --task of --cluster's devices until the chief has finished, then exit")
    p.add_argument("--task", type=int, default=None, help="with --worker: this host's task index in --cluster (1..)")
    p.add_argument("--peak_tflops", default=None,
                   help="peak TFLOP/s of one mesh device (of the whole machine on CPU), or a device in "
                        "trainer/flops.py (v3, a100, ...), for the MFU in the training log")
    p.add_argument("--steps_per_checkpoint", type=int, default=5000,
                   help="save a checkpoint (and evaluate, when eval_steps > 0 or eval_tasks are set) every N steps")
    p.add_argument("--new", action="store_true",
                   help="training: after asking, delete model_path and train from scratch (as the original)")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--eval", action="store_true",
                       help="evaluate the latest checkpoint: eval_tasks, then eval_steps batches of validation")
    modes.add_argument("--predict", action="store_true",
                       help="sample continuations of --prompt from the latest checkpoint")
    modes.add_argument("--export", action="store_true",
                       help="write SavedModels (logits, and generation with the config's sampling settings) and exit")
    modes.add_argument("--check_dataset", action="store_true",
                       help="check the config's train and eval TFRecords (ids < n_vocab, lengths, CRCs, "
                            "manifests), print a decoded sample, and exit")
    modes.add_argument("--auto_layout", action="store_true",
                       help="print the best layout for the config's mesh_shape (trainer/auto_layout.py) and exit")
    modes.add_argument("--auto_layout_and_mesh_shape", action="store_true",
                       help="print the best mesh_shape and layout for as many devices as mesh_shape has, and exit")
    p.add_argument("--prompt", default=None,
                   help="prompt file: text (one prompt) or .jsonl ({\"prompt\": ...} per line); default: the "
                        "original's unicorn prompt")
    p.add_argument("--output", default=None,
                   help="where --predict writes samples: <output>.txt and <output>.jsonl "
                        "(default <model_path>/predictions_<step>)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 = greedy (config key)")
    p.add_argument("--top_k", type=int, default=None, help="keep the k most likely tokens; 0 = off (config key)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass; 1 = off (config key)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="new tokens per sample (config: predict_max_steps)")
    p.add_argument("--num_samples", type=int, default=None, help="samples per prompt (config key)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (config: seed)")
    p.add_argument("--entmax_sampling", action="store_const", const=True, default=None,
                   help="sample from 1.3-entmax of the logits instead of softmax (config: entmax_sampling)")
    p.add_argument("--sacred_id", default=None,
                   help="the original's run id: names the samples predictions_<id>_<step> and the evaluation "
                        "results eval_<id>.jsonl")
    p.add_argument("--export_dir", default=None, help="where --export writes (default <model_path>/export)")
    p.add_argument("--device_memory", type=float, default=None,
                   help="GiB of memory of one mesh device: training checks first that its step fits (default: "
                        "the device's own when known: a GPU, or a TPU named by --peak_tflops; none on CPU), and "
                        "--auto_layout's choice must fit it (default: a TPU v3 core's 16)")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE anywhere among the flags
    if args.worker or args.task is not None:
        _check_worker_flags(p, args, argv if argv is not None else sys.argv[1:])
        return args
    # TensorFlow loads from here on: --help has answered already.
    from ..trainer.config import ConfigError, parse_overrides
    from ..trainer.flops import parse_peak_tflops
    args.mode = next((mode for mode in MODES if getattr(args, mode)), "train")
    if args.steps_per_checkpoint < 1:
        p.error("--steps_per_checkpoint must be at least 1")
    try:
        args.overrides = parse_overrides(args.overrides)
        args.peak_tflops = None if args.peak_tflops is None else parse_peak_tflops(args.peak_tflops)
    except (ConfigError, argparse.ArgumentTypeError) as e:
        p.error(str(e))
    for flag in ("model_path", "mesh_shape", "layout"):
        if getattr(args, flag) is not None:
            args.overrides[flag] = getattr(args, flag)
    if args.model is None:
        if "model_path" not in args.overrides:
            p.error("give --model (a config), or --model_path of a run (the config it recorded there)")
        args.model = str(args.overrides["model_path"]).rstrip("/") + "/config.json"
    _check_mode_flags(p, args)
    if args.cluster and (args.tpu or args.gpu_ids):
        p.error("--cluster lists the devices itself: drop --%s" % ("tpu" if args.tpu else "gpu_ids"))
    args.sampling_flags = [flag for flag in SAMPLING_FLAGS if getattr(args, flag) is not None]
    return args


def _check_worker_flags(p, args, argv):
    """A worker serves devices only: it takes --cluster and --task, and nothing else."""
    if not args.worker:
        p.error("--task applies to --worker (the chief is task 0 and takes no --task)")
    if args.cluster is None or args.task is None:
        p.error("--worker needs --cluster FILE and --task N (this host's index in the file)")
    extra = [a.split("=")[0] for a in argv if a.startswith("--") and a.split("=")[0] not in
             ("--worker", "--cluster", "--task")] + (["KEY=VALUE"] if args.overrides else [])
    if extra:
        p.error("%s has no effect with --worker (it takes --cluster and --task; the chief runs the config)"
                % extra[0])
    args.mode = "worker"


def _check_mode_flags(p, args):
    """Flags that would be silently ignored in this mode are errors instead."""
    used = {"prompt": ("predict", "train"), "output": ("predict",), "export_dir": ("export",),
            "device_memory": ("auto_layout", "auto_layout_and_mesh_shape", "train"), "new": ("train",),
            "sacred_id": ("train", "eval", "predict"), "cluster": ("train", "eval", "predict")}
    used.update({flag: ("predict", "export", "train") for flag in SAMPLING_FLAGS})
    for flag, modes in used.items():
        if getattr(args, flag) not in (None, False) and args.mode not in modes:
            p.error("--%s has no effect with --%s (it applies to %s)" % (
                flag, args.mode, ", ".join("--" + m if m != "train" else "training" for m in modes)))


def main(argv=None):
    args = parse_args(argv)
    from ..trainer import modes  # the work, with TensorFlow
    return modes.main(args)


if __name__ == "__main__":
    sys.exit(main())
