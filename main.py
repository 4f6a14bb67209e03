"""GPT-Neo on Mesh-TensorFlow: train, evaluate or sample a model described by a JSON config.

    python main.py --model configs/demo_cpu.json            # train (and validate every N steps)
    python main.py --model gpt3_XL_256_Pile n_layer=2 mesh_shape=x:1,y:2   # config keys overridden
    python main.py --model gpt_neo_125M --tpu my-tpu        # on a TPU (or --tpu local on a TPU VM)
    python main.py --model CONFIG --eval                    # evaluate the latest checkpoint
    python main.py --model CONFIG --predict --prompt p.txt  # sample from the latest checkpoint
"""
import argparse
import dataclasses
import json
import logging
import sys

import storage
from errors import ConfigError, UserError
from inputs.prompts import encode_prompts, read_prompts
from inputs.sequential import DataError
from inputs.tokenizer import tokenizer_for
from meshtf import tf
from tfrecords_tools import check_dataset
from trainer import auto_layout
from trainer.checkpoints import latest_checkpoint, latest_step
from trainer.config import load_config, parse_overrides, raw_config, validate
from trainer.estimator import build_estimator, train
from trainer.evaluation import Evaluator
from trainer.export import export
from trainer.flops import parse_peak_tflops
from trainer.guards import EXIT_STOPPED, NonFiniteError, StoppedEarly
from trainer.hardware import select_hardware
from trainer.predict import predict
from trainer.preflight import device_of, preflight

log = logging.getLogger("gptneo")


MODES = ("eval", "predict", "export", "check_dataset", "auto_layout", "auto_layout_and_mesh_shape")
# Flags that change sampling: --predict, the generation model of --export, and sampling during training.
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "max_new_tokens", "num_samples", "seed", "entmax_sampling")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--peak_tflops", type=parse_peak_tflops, default=None,
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
                        "--auto_layout's choice must fit it (default %g: a TPU v3 core)"
                        % (auto_layout.DEFAULT_DEVICE_MEMORY / 2 ** 30))
    args = p.parse_intermixed_args(argv)  # KEY=VALUE anywhere among the flags
    args.mode = next((mode for mode in MODES if getattr(args, mode)), "train")
    if args.steps_per_checkpoint < 1:
        p.error("--steps_per_checkpoint must be at least 1")
    try:
        args.overrides = parse_overrides(args.overrides)
    except ConfigError as e:
        p.error(str(e))
    for flag in ("model_path", "mesh_shape", "layout"):
        if getattr(args, flag) is not None:
            args.overrides[flag] = getattr(args, flag)
    if args.model is None:
        if "model_path" not in args.overrides:
            p.error("give --model (a config), or --model_path of a run (the config it recorded there)")
        args.model = str(args.overrides["model_path"]).rstrip("/") + "/config.json"
    _check_mode_flags(p, args)
    return args


def _check_mode_flags(p, args):
    """Flags that would be silently ignored in this mode are errors instead."""
    used = {"prompt": ("predict", "train"), "output": ("predict",), "export_dir": ("export",),
            "device_memory": ("auto_layout", "auto_layout_and_mesh_shape", "train"), "new": ("train",),
            "sacred_id": ("train", "eval", "predict")}
    used.update({flag: ("predict", "export", "train") for flag in SAMPLING_FLAGS})
    for flag, modes in used.items():
        if getattr(args, flag) not in (None, False) and args.mode not in modes:
            p.error("--%s has no effect with --%s (it applies to %s)" % (
                flag, args.mode, ", ".join("--" + m if m != "train" else "training" for m in modes)))


def check_data(config):
    """--check_dataset: every train and eval file of the config's datasets, against its n_vocab and n_ctx.

    Records must hold n_ctx + 1 tokens each, except where generic_text joins documents (documents_*
    sampling modes): there the `stitch` shortest together must (the smallest stitch of the dataset's entries).
    """
    d = config.data
    tokenizer = tokenizer_for(d)
    problems = 0
    for ds in d.dataset_configs:
        entries = [e for e in d.datasets if e.id == ds.id]
        joins = d.input_fn == "generic_text" and all(e.sampling_mode != "chunks" for e in entries)
        problems += check_dataset.check([g for g in (ds.path, ds.eval_path) if g], config.model.n_vocab,
                                        config.model.n_ctx, tokenizer,
                                        stitch=min(e.stitch for e in entries) if joins else None)
    if problems:
        raise DataError("%d problem(s) in the dataset (listed above)" % problems)


def print_layout(config, with_mesh_shape, device_memory_gib=None):
    """--auto_layout(_and_mesh_shape): log how the choice was made and print it as config lines."""
    device_memory = auto_layout.DEFAULT_DEVICE_MEMORY if device_memory_gib is None else device_memory_gib * 2 ** 30
    choice = auto_layout.search(config, with_mesh_shape, device_memory)
    for line in auto_layout.describe(config, choice, with_mesh_shape, device_memory):
        log.info(line)
    print('"mesh_shape": "%s",' % choice.mesh_shape_string)
    print('"layout": "%s",' % choice.layout_string)


def with_sampling_flags(config, args):
    """The config with the sampling flags that were given (each overrides its config key)."""
    keys = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "predict_max_steps": args.max_new_tokens, "num_samples": args.num_samples,
            "entmax_sampling": args.entmax_sampling}
    changed = {k: v for k, v in keys.items() if v is not None}
    given = [flag for flag in SAMPLING_FLAGS if getattr(args, flag) is not None] + (["prompt"] if args.prompt else [])
    if args.mode == "train" and given and not config.train.predict_steps:
        raise ConfigError("--%s applies to sampling, but this run does not sample: use --predict, or set "
                          "predict_steps=1 to sample every --steps_per_checkpoint steps of training" % given[0])
    config = dataclasses.replace(config, predict=dataclasses.replace(config.predict, **changed))
    if args.seed is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=args.seed))
    validate(config)
    return config


def sampling_rows(config, tokenizer, prompt_path):
    """The rows to sample (inputs.prompts.encode_prompts): `--prompt`'s prompts, or the default one."""
    if tokenizer is None:
        raise ConfigError("--predict and `predict_steps` need a dataset config with a tokenizer to encode prompts")
    if config.model.mlm_training:
        raise ConfigError("`predict_steps` samples text, which a masked-LM model (`mlm_training`) does not "
                          "generate; set it to 0")
    return encode_prompts(read_prompts(prompt_path), tokenizer, config.model.n_ctx, config.model.n_vocab,
                          config.predict.num_samples)


def samples_path(config, step, sacred_id=None):
    return "%s/predictions_%s%d" % (config.model_path.rstrip("/"), sacred_id + "_" if sacred_id else "", step)


def make_model_path(path):
    """Create `model_path` now, so a missing bucket or an unwritable directory is one clear line."""
    problem = storage.write_problem(path)
    if problem:
        raise ConfigError("cannot write to `model_path` %s: %s" % (path, problem))


def start_over(model_path):
    """--new: after the user confirms, delete `model_path` (before anything reads its step, unlike the original)."""
    if not tf.io.gfile.exists(model_path):
        return
    try:
        answer = input("--new: delete %s and everything in it, and train from scratch? [y/N] " % model_path)
    except (EOFError, OSError):  # no terminal to answer from
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise ConfigError("--new was not confirmed: nothing deleted, nothing trained")
    tf.io.gfile.rmtree(model_path)
    log.info("deleted %s", model_path)


def record_run(config, args):
    """Keep what this run trains with in model_path: the model config with the command line's overrides
    (config.json) and its dataset configs (dataset_configs/<id>.json, looked up beside it first), so that
    --predict, --eval and --export run from `--model_path` alone."""
    root = config.model_path.rstrip("/")
    storage.write_json(root + "/config.json", raw_config(args.model, args.overrides))
    tf.io.gfile.makedirs(root + "/dataset_configs")
    for ds in config.data.dataset_configs:
        storage.write_json("%s/dataset_configs/%s.json" % (root, ds.id),
                           {key: value for key, value in dataclasses.asdict(ds).items() if key != "id"})
    if args.overrides:
        log.info("config %s with %s", config.name, " ".join("%s=%s" % (k, json.dumps(v)) for k, v in args.overrides.items()))


def run(args):
    overrides = dict(args.overrides)
    if args.mode.startswith("auto_layout"):
        overrides.setdefault("layout", "")  # to be chosen; the config's may not fit an overridden mesh_shape
    config = load_config(args.model, overrides)
    if args.mode.startswith("auto_layout"):
        return print_layout(config, args.auto_layout_and_mesh_shape, args.device_memory)
    if args.check_dataset:
        return check_data(config)
    mode = {"export": "predict"}.get(args.mode, args.mode)
    if mode == "predict" and config.model.mlm_training:
        raise ConfigError("--%s: a masked-LM model (`mlm_training`) does not generate text" % args.mode)
    config = with_sampling_flags(config, args)
    if args.eval and not config.train.evaluates:
        raise ConfigError("--eval needs `eval_steps` > 0 (the number of eval batches) and `eval_batch_size`, "
                          "or `eval_tasks`")
    if args.new:
        start_over(config.model_path)
    if mode == "train":
        make_model_path(config.model_path)
    elif not latest_checkpoint(config.model_path):
        raise ConfigError("--%s: no checkpoint in %s; train first or fix `model_path`" % (args.mode, config.model_path))
    if args.export:
        paths = export(config, args.export_dir or config.model_path.rstrip("/") + "/export")
        log.info("exported logits to %s and generation to %s", paths["logits"], paths["generate"])
        return
    hardware = select_hardware(config.mesh, args.tpu, args.gpu_ids, peak_tflops=args.peak_tflops)
    parameters = preflight(config, mode, device_of(hardware, args.device_memory))
    tokenizer = tokenizer_for(config.data) if config.data.dataset_configs else None
    # Everything a mode reads is found now, before any step runs: samples' prompts, evaluation's files.
    samples = args.predict or (mode == "train" and config.train.predict_steps > 0)
    rows = sampling_rows(config, tokenizer, args.prompt) if samples else None
    evaluates = args.eval or (mode == "train" and config.train.evaluates)
    evaluator = Evaluator(config, tokenizer, args.sacred_id) if evaluates else None
    if mode == "train":
        record_run(config, args)
    layout = (config.mesh.for_decoding(config.train.predict_batch_size) if mode == "predict" else config.mesh)
    log.info("%s: %s parameters (%d layers, n_embd %d, n_ctx %d) on %s mesh %s, layout %s", config.name,
             "{:,}".format(parameters), config.model.n_layer, config.model.n_embd, config.model.n_ctx,
             hardware.kind, config.mesh.shape_string, layout.layout_string or "replicated")
    # The generation graph prefills the positions every prompt has in one parallel pass.
    estimator = build_estimator(config, hardware, args.steps_per_checkpoint,
                                min_prompt_length=min(len(row.tokens) for row in rows) if rows else 1)
    if args.predict:
        output = args.output or samples_path(config, latest_step(config.model_path), args.sacred_id)
        predict(estimator, config, tokenizer, rows, output)
        return
    if args.eval:
        evaluator.run(estimator)
        return

    def sample(step):
        predict(estimator, config, tokenizer, rows, samples_path(config, step, args.sacred_id))

    train(estimator, config, args.steps_per_checkpoint, evaluator, sample if rows else None)


def main(argv=None):
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    log.handlers = [handler]  # the current stdout, also when main() runs again in one process
    log.setLevel(logging.INFO)
    tf.logging.set_verbosity(tf.logging.WARN)
    try:
        run(args)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except StoppedEarly as e:  # not an error: a retry loop runs the command again (docs/tpu-vm.md)
        log.info("%s", e)
        return EXIT_STOPPED
    except tf.errors.InvalidArgumentError as e:
        # Assertions in the input pipeline carry a user-facing message; anything else is a bug.
        if "Data error:" not in e.message:
            raise
        detail = e.message[e.message.index("Data error:"):]
        print("error: %s" % detail[:detail.index("]")] if "]" in detail else detail, file=sys.stderr)
        return 2
    except tf.errors.DataLossError as e:
        # A corrupt or truncated file met inside the graph (a TFRecord, or a checkpoint's data); the
        # message's last line says what, without the file's name.
        what = [line for line in e.message.splitlines() if line.strip() and not line.startswith("\t")][-1]
        print("error: a data file is corrupt or truncated (%s); `--check_dataset` names bad TFRecords" % what,
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
