"""What `gpt-neo` (main.py) does once its arguments are parsed (cli/gpt_neo.py): load the config, check
everything the mode needs, then train, evaluate, sample, export, check the data or choose a layout.
"""
import contextlib
import dataclasses
import json
import logging
import sys

from .. import storage
from ..errors import ConfigError, UserError
from ..inputs.prompts import encode_prompts, read_prompts
from ..inputs.sequential import DataError
from ..inputs.tokenizer import tokenizer_for
from ..meshtf import tf
from ..tfrecords_tools import check_dataset
from . import auto_layout
from .checkpoints import latest_checkpoint, latest_step
from .cluster import Chief, ClusterUnavailable, check_model_path, load_cluster, serve
from .config import load_config, raw_config, validate
from .estimator import build_estimator, train
from .evaluation import Evaluator
from .export import export
from .guards import EXIT_STOPPED, NonFiniteError, StoppedEarly
from .hardware import select_hardware
from .predict import predict
from .preflight import device_of, preflight

log = logging.getLogger("gptneo")

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
    given = args.sampling_flags + (["prompt"] if args.prompt else [])
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
        log.info("config %s with %s", config.name,
                 " ".join("%s=%s" % (key, json.dumps(value)) for key, value in args.overrides.items()))


def run(args):
    if args.worker:
        return serve(load_cluster(args.cluster), args.task)
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
    cluster = load_cluster(args.cluster) if args.cluster else None
    if cluster is not None:  # before anything is written or started
        cluster.check_mesh(config.mesh)
        check_model_path(cluster, config.model_path)
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
    hardware = select_hardware(config.mesh, args.tpu, args.gpu_ids, peak_tflops=args.peak_tflops, cluster=cluster)
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
    with Chief(cluster, config.model_path) if cluster else contextlib.nullcontext() as chief:
        try:
            # The generation graph prefills the positions every prompt has in one parallel pass.
            estimator = build_estimator(config, hardware, args.steps_per_checkpoint,
                                        min_prompt_length=min(len(row.tokens) for row in rows) if rows else 1,
                                        master=chief.target if chief else None)
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
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as e:
            if chief is None:
                raise
            raise chief.lost_now(e) from None


def main(args):
    """Run the parsed command line (cli/gpt_neo.py); the process's exit status, errors as one line."""
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
    except ClusterUnavailable as e:  # resumable as a stop: restart the lost task and run again
        print("error: %s" % e, file=sys.stderr)
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


