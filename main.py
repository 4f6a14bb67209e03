"""GPT-Neo on Mesh-TensorFlow: train, evaluate or sample a model described by a JSON config.

    python main.py --model configs/demo_cpu.json            # train (and validate every N steps)
    python main.py --model gpt_neo_125M --tpu my-tpu        # on a TPU (or --tpu local on a TPU VM)
    python main.py --model CONFIG --eval                    # evaluate the latest checkpoint
    python main.py --model CONFIG --predict --prompt p.txt  # sample from the latest checkpoint
"""
import argparse
import dataclasses
import logging
import sys

from inputs.prompts import PromptError
from inputs.sequential import DataError
from inputs.tokenizer import TokenizerError, tokenizer_for
from meshtf import tf
from tfrecords_tools import check_dataset
from tfrecords_tools.sources import InputError
from trainer.checkpoints import latest_step
from trainer.config import ConfigError, check_batch_layout, check_tokenizer_vocab, load_config, validate
from trainer.estimator import build_estimator, evaluate, train
from trainer.export import export
from trainer.hardware import select_hardware
from trainer.predict import predict
from trainer.preflight import preflight

log = logging.getLogger("gptneo")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model config: a path ending in .json (local or gs://) or the name of one in configs/")
    p.add_argument("--model_path", default=None, help="override the config's model_path (e.g. a downloaded checkpoint)")
    p.add_argument("--mesh_shape", default=None, help="override the config's mesh_shape (e.g. all:1 on one CPU)")
    p.add_argument("--layout", default=None, help="override the config's layout (\"\" = replicated)")
    p.add_argument("--tpu", default=None,
                   help="TPU name (\"local\" on a TPU VM, \"colab\" to discover it); runs the SIMD mesh on TPU")
    p.add_argument("--gpu_ids", nargs="+", default=None,
                   help="device strings for the placement mesh, one per mesh position (e.g. device:GPU:0 "
                        "device:GPU:1); default: all visible GPUs, else one virtual CPU device per position")
    p.add_argument("--steps_per_checkpoint", type=int, default=5000,
                   help="save a checkpoint (and run validation when eval_steps > 0) every N steps")
    p.add_argument("--eval", action="store_true", help="evaluate the latest checkpoint for eval_steps batches")
    p.add_argument("--predict", action="store_true", help="sample continuations of --prompt from the latest checkpoint")
    p.add_argument("--prompt", default=None,
                   help="prompt file: text (one prompt) or .jsonl ({\"prompt\": ...} per line); default: the "
                        "original's unicorn prompt")
    p.add_argument("--output", default=None,
                   help="where samples go: <output>.txt and <output>.jsonl (default <model_path>/predictions_<step>)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature; 0 = greedy (config key)")
    p.add_argument("--top_k", type=int, default=None, help="keep the k most likely tokens; 0 = off (config key)")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling mass; 1 = off (config key)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="new tokens per sample (config: predict_max_steps)")
    p.add_argument("--num_samples", type=int, default=None, help="samples per prompt (config key)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (config: seed)")
    p.add_argument("--export", action="store_true",
                   help="write SavedModels (logits, and generation with the config's sampling settings) and exit")
    p.add_argument("--export_dir", default=None, help="where --export writes (default <model_path>/export)")
    p.add_argument("--check_dataset", action="store_true",
                   help="check the config's train and eval TFRecords (ids < n_vocab, lengths, CRCs, manifests), "
                        "print a decoded sample, and exit")
    args = p.parse_args(argv)
    if args.steps_per_checkpoint < 1:
        p.error("--steps_per_checkpoint must be at least 1")
    return args


def check_data(config):
    """--check_dataset: every train and eval file of the config's datasets, against its n_vocab and n_ctx."""
    globs = [g for ds in config.data.dataset_configs for g in (ds.path, ds.eval_path) if g]
    problems = check_dataset.check(globs, config.model.n_vocab, config.model.n_ctx, tokenizer_for(config.data))
    if problems:
        raise DataError("%d problem(s) in the dataset (listed above)" % problems)


def with_sampling_flags(config, args):
    """The config with the sampling flags that were given (each overrides its config key)."""
    keys = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "predict_max_steps": args.max_new_tokens, "num_samples": args.num_samples}
    changed = {k: v for k, v in keys.items() if v is not None}
    config = dataclasses.replace(config, predict=dataclasses.replace(config.predict, **changed))
    if args.seed is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, seed=args.seed))
    validate(config)
    return config


def make_model_path(path):
    """Create `model_path` now, so a missing bucket or an unwritable directory is one clear line."""
    try:
        tf.io.gfile.makedirs(path)
        probe = path.rstrip("/") + "/.write_test"
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except tf.errors.OpError as e:
        raise ConfigError("cannot write to `model_path` %s: %s" % (path, e.message.splitlines()[0])) from None


def run(args):
    overrides = {k: getattr(args, k) for k in ("model_path", "mesh_shape", "layout") if getattr(args, k) is not None}
    config = load_config(args.model, overrides)
    if args.check_dataset:
        return check_data(config)
    mode = "eval" if args.eval else "predict" if args.predict or args.export else "train"
    if mode == "predict":
        config = with_sampling_flags(config, args)
    if args.eval and config.train.eval_steps < 1:
        raise ConfigError("--eval needs `eval_steps` > 0 (the number of eval batches) and `eval_batch_size`")
    if mode == "train":
        make_model_path(config.model_path)
    if mode != "train" and not tf.train.latest_checkpoint(config.model_path):
        raise ConfigError("--%s: no checkpoint in %s; train first or fix `model_path`"
                          % ("export" if args.export else mode, config.model_path))
    if args.export:
        paths = export(config, args.export_dir or config.model_path.rstrip("/") + "/export")
        log.info("exported logits to %s and generation to %s", paths["logits"], paths["generate"])
        return
    check_batch_layout(config, mode)
    if config.train.eval_steps > 0 and mode != "predict":
        check_batch_layout(config, "eval")
    parameters = preflight(config, mode)
    tokenizer = tokenizer_for(config.data) if config.data.dataset_configs else None
    if tokenizer is not None:
        check_tokenizer_vocab(config, tokenizer.get_vocab_size(), config.data.dataset_configs[0].tokenizer_path)
    hardware = select_hardware(config.mesh, args.tpu, args.gpu_ids)
    log.info("%s: %s parameters (%d layers, n_embd %d, n_ctx %d) on %s mesh %s, layout %s", config.name,
             "{:,}".format(parameters), config.model.n_layer, config.model.n_embd, config.model.n_ctx,
             hardware.kind, config.mesh.shape_string, config.mesh.layout_string or "replicated")
    if config.train.predict_steps > 0 and not args.eval:
        log.warning("predict_steps > 0: sampling during training is not available yet; training without it")
    estimator = build_estimator(config, hardware, args.steps_per_checkpoint)
    if args.eval:
        evaluate(estimator, config, log.info)
    elif args.predict:
        if tokenizer is None:
            raise ConfigError("--predict needs a dataset config with a tokenizer to encode prompts")
        step = latest_step(config.model_path)
        output = args.output or "%s/predictions_%d" % (config.model_path.rstrip("/"), step)
        predict(estimator, config, tokenizer, args.prompt, output, log.info)
    else:
        train(estimator, config, args.steps_per_checkpoint, log.info)


def main(argv=None):
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.handlers = [handler]  # the current stdout, also when main() runs again in one process
    log.setLevel(logging.INFO)
    tf.logging.set_verbosity(tf.logging.WARN)
    try:
        run(args)
    except (ConfigError, DataError, TokenizerError, InputError, PromptError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as e:
        # Assertions in the input pipeline carry a user-facing message; anything else is a bug.
        if "Data error:" not in e.message:
            raise
        detail = e.message[e.message.index("Data error:"):]
        print("error: %s" % detail[:detail.index("]")] if "]" in detail else detail, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
