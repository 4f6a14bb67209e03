"""Bad inputs through the real entry points (main.py, tfrecords_tools, convert): each gives exit status 2, one
`error: ...` line with the message docs/troubleshooting.md shows, and no traceback.

ROWS is the table "Bad inputs and their messages" of docs/troubleshooting.md: `python tests/test_bad_inputs.py`
prints it, and test_docs_table_is_current fails when the page's copy differs. In a message, `...` stands for
text that varies (a TensorFlow or JSON detail, a list) and `<dir>` for the directory of the example's files.
"""
import collections
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY, run_main, write_dataset_config
from test_inputs import write_records

from gpt_neo_mtf.cli import check_dataset, create_tfrecords, huggingface, loss_plot
from gpt_neo_mtf.cli import gpt_neo as main_py

Row = collections.namedtuple("Row", "id input example message run")
Row.__doc__ = """id: test id; input: what is wrong; example: how to produce it (README); message: the error
line after `error: `; run: run(env) -> exit status, reproducing the example."""

GOOD_RECORD = list(range(1, 34))  # n_ctx + 1 = 33 tokens
SMALL = dict(n_layer=1, n_embd=8, n_head=1, attention_types=[[["global"], 1]])  # for runs that build a graph


class Env:
    """What a row's `run` needs: configs and files in the test's tmp_path, runs of the entry points."""

    def __init__(self, request, tmp_path, make_config):
        self.request, self.tmp, self.make_config = request, tmp_path, make_config

    def path(self, name):
        return str(self.tmp / name)

    def file(self, name, content):
        """A file holding `content` (str, or bytes written as they are)."""
        (self.tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return self.path(name)

    def directory(self, name):
        (self.tmp / name).mkdir()
        return self.path(name)

    def config(self, drop=(), dataset=None, **overrides):
        """A tiny config (conftest.make_config) with `overrides`, without the keys in `drop`; `dataset`:
        fields changed in its dataset config."""
        path = self.make_config(**overrides)
        raw = json.load(open(path))
        for key in drop:
            del raw[key]
        if dataset:
            dataset_path = self.tmp / "dataset_configs" / "sample.json"
            dataset_path.write_text(json.dumps(dict(json.loads(dataset_path.read_text()), **dataset)))
        return self.file("tiny.json", json.dumps(raw))

    def records(self, records, damage=None):
        """A config training 2 steps on `records` (token lists) in <dir>/bad/{train,val}/; `damage(path)`
        then changes each file."""
        root = self.path("bad")
        for split in ("train", "val"):
            path = write_records(os.path.join(root, split, "bad_0_%d.tfrecords" % len(records)), records)
            if damage:
                damage(path)
        return self.config(records_dir=root, train_steps=2, iterations=1, **SMALL)

    def trained(self, dataset=None, **overrides):
        """A config whose model_path <dir>/trained holds a copy of the module's 1-step checkpoint."""
        model_path = self.path("trained")
        shutil.copytree(self.request.getfixturevalue("trained_model"), model_path)
        return self.config(model_path=model_path, dataset=dataset, **dict(SMALL, **overrides))

    def cluster(self, tasks, shared=True):
        """cluster.json: `tasks` tasks of one CPU each on 127.0.0.1 (never started by these rows)."""
        raw = {"tasks": [{"address": "127.0.0.1:%d" % (2222 + i)} for i in range(tasks)]}
        if shared:
            raw["shared_model_path"] = True
        return self.file("cluster.json", json.dumps(raw))

    def main(self, *argv):
        return self.tool(main_py.main, *argv)

    @staticmethod
    def tool(main, *argv):
        """main(argv)'s exit status, also when argparse exits."""
        try:
            return main(list(argv))
        except SystemExit as e:
            return e.code


def flip_byte(path, offset=20):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def keep_bytes(count):
    return lambda path: os.truncate(path, count)


def predict_after_cutting_indexes(env):
    config = env.trained()
    for name in os.listdir(env.path("trained")):
        if name.endswith(".index"):
            os.truncate(os.path.join(env.path("trained"), name), 10)
    return env.main("--model", config, "--predict")


def rerun_create_tfrecords_with_another_chunk_size(env):
    argv = ["--input", env.file("d.jsonl", json.dumps({"text": "some words " * 40}) + "\n"),
            "--output_dir", env.path("out"), "--name", "x", "--quiet"]
    assert env.tool(create_tfrecords.main, *argv, "--chunk_size", "16") == 0
    return env.tool(create_tfrecords.main, *argv, "--chunk_size", "32")


def import_hub_id_offline(env):
    """In a new Python with HF_HUB_OFFLINE=1 (huggingface_hub reads it when imported), so that no test run
    downloads the model, whether the machine has a network or not."""
    done = subprocess.run([sys.executable, "-m", "gpt_neo_mtf.cli.huggingface", "import", "--hf_dir", "EleutherAI/gpt-neo-125M",
                           "--output_dir", env.path("neo")], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2"))
    sys.stderr.write(done.stderr)
    return done.returncode


def teacher_config(env, **overrides):
    """A distillation teacher's config: the tiny config with `overrides`."""
    return env.file("teacher.json", json.dumps(dict(TINY, model_path=env.path("teacher"), **overrides)))


def train_into_missing_bucket(env):
    env.request.getfixturevalue("gcs_bucket")  # the GCS emulator (the test skips without it)
    return env.main("--model", env.config(model_path="gs://nosuchbucket/model"))


ROWS = [
    # Configs
    Row("malformed-json", "malformed JSON", "`--model broken.json` holding `{\"n_ctx\": 32,,}`",
        "model config <dir>/broken.json is not valid JSON: Expecting property name enclosed in double quotes "
        "(line 1, column 14)",
        lambda env: env.main("--model", env.file("broken.json", '{"n_ctx": 32,,}'))),
    Row("unknown-config-name", "misspelled config name", "`--model gpt_neo_125m`",
        "no model config named 'gpt_neo_125m' in .../configs; did you mean 'gpt_neo_125M'?",
        lambda env: env.main("--model", "gpt_neo_125m")),
    Row("misspelled-key", "unknown or misspelled key", "`\"n_heads\": 4`",
        "unknown config key `n_heads`; did you mean 'n_head'?",
        lambda env: env.main("--model", env.config(n_heads=4))),
    Row("missing-key", "required key missing", "no `model_path`",
        "model config tiny is missing required key(s): model_path",
        lambda env: env.main("--model", env.config(drop=["model_path"]))),
    Row("wrong-type", "wrong type", "`\"n_layer\": \"2\"`",
        "model config key `n_layer` must be an integer, got \"2\" (str)",
        lambda env: env.main("--model", env.config(n_layer="2"))),
    Row("wrong-shape", "wrong structure", "`\"datasets\": \"sample\"`",
        "`datasets` must be a list of dataset ids or [id, stitch, sampling_mode, weight] lists",
        lambda env: env.main("--model", env.config(datasets="sample"))),
    Row("zero-size", "impossible size", "`\"n_head\": 0`", "`n_head` must be at least 1, got 0",
        lambda env: env.main("--model", env.config(n_head=0))),
    Row("heads-do-not-divide", "impossible size", "`\"n_embd\": 30, \"n_head\": 4`",
        "`n_embd` (30) must be divisible by `n_head` (4): head size = n_embd / n_head",
        lambda env: env.main("--model", env.config(n_embd=30))),
    Row("negative-lr", "impossible value", "`\"lr\": -1`", "`lr` must not be negative, got -1",
        lambda env: env.main("--model", env.config(lr=-1))),
    Row("unknown-attention", "unknown choice", "`\"attention_types\": [[[\"glob\"], 2]]`",
        "unknown attention type 'glob' in `attention_types`; use one of global, local, linear, none; did you "
        "mean 'global'?",
        lambda env: env.main("--model", env.config(attention_types=[[["glob"], 2]]))),
    Row("unknown-optimizer", "unknown choice", "`\"opt_name\": \"sgd\"`",
        "`opt_name` must be \"adam\" or \"adafactor\", got 'sgd' (the original silently chose Adafactor for "
        "any other value)",
        lambda env: env.main("--model", env.config(opt_name="sgd"))),
    Row("moe-second-level", "a key GPT-Neo's MoE never reads",
        "`\"moe_params\": {\"moe_capacity_factor_second_level\": 2}`",
        "`moe_params` moe_capacity_factor_second_level sizes mesh-tf's two-level mixture of experts, but GPT-Neo's "
        "(transformer_moe_layer_v1) has one level and never reads it; remove it",
        lambda env: env.main("--model", env.config(moe_params={"moe_capacity_factor_second_level": 2}))),
    # Mesh and layout
    Row("mesh-larger-than-devices", "mesh larger than the devices", "`\"mesh_shape\": \"x:2\"`, `--gpu_ids /gpu:0`",
        "`mesh_shape` x:2 has 2 positions but --gpu_ids lists 1 device(s); give one device per mesh position "
        "or change mesh_shape",
        lambda env: env.main("--model", env.config(mesh_shape="x:2"), "--gpu_ids", "/gpu:0")),
    Row("layout-unknown-dim", "layout naming an unknown dimension", "`\"layout\": \"batch:x,foo:x\"`",
        "`layout` names 'foo', which is not a model dimension (known: batch, sequence, ...)",
        lambda env: env.main("--model", env.config(layout="batch:x,foo:x"))),
    Row("layout-no-tensor", "layout naming a dimension no tensor has", "`\"layout\": \"batch:x,axial_dim:x\"`",
        "`layout` names 'axial_dim', which no tensor has (the original's flattened axial position table; lay out "
        "its factors axial_dim_0 and axial_dim_1); remove it from the layout",
        lambda env: env.main("--model", env.config(layout="batch:x,axial_dim:x"))),
    Row("layout-unknown-mesh-dim", "layout naming an unknown mesh dimension", "`\"layout\": \"batch:y\"`",
        "`layout` puts 'batch' on mesh dimension 'y', but `mesh_shape` (x:1) has no such dimension",
        lambda env: env.main("--model", env.config(layout="batch:y"))),
    Row("layout-does-not-divide", "split that does not divide", "`\"mesh_shape\": \"x:8\"`, `\"train_batch_size\": 4`",
        "`train_batch_size` (4) is not divisible by mesh dimension 'x' (8) that `layout` splits batch over; make it "
        "a multiple of 8 or change `layout`",
        lambda env: env.main("--model", env.config(mesh_shape="x:8"))),
    Row("step-larger-than-device", "training step larger than a device's memory", "`--device_memory 0.001`",
        "training needs an estimated ... per device, more than 90% of the 1.02 MiB of --device_memory 0.001 (the "
        "biggest tensors: ...); neither recompute_grad, chunked_loss, tokens_per_mb_per_replica nor another layout on "
        "this mesh fits: use more devices or devices with more memory, or a smaller model",
        lambda env: env.main("--model", env.config(), "--device_memory", "0.001")),
    # Clusters (docs/clusters.md)
    Row("cluster-devices-mismatch", "mesh size differs from the cluster's devices",
        "`\"mesh_shape\": \"x:2\"`, `--cluster cluster.json` listing 3 tasks of 1 CPU",
        "`mesh_shape` x:2 has 2 positions but the cluster in <dir>/cluster.json has 3 device(s) (1 + 1 + 1); give "
        "one device per mesh position or change mesh_shape",
        lambda env: env.main("--model", env.config(mesh_shape="x:2"), "--cluster", env.cluster(3))),
    Row("cluster-local-model-path", "multi-host run with a local `model_path`",
        "`--cluster cluster.json` (2 tasks) and `\"model_path\": \"/data/model\"`",
        "`model_path` <dir>/tiny_model is local, but each of the 2 cluster tasks writes its part of every checkpoint "
        "there: use gs://..., or a shared filesystem mounted at the same path on every host with "
        "\"shared_model_path\": true in <dir>/cluster.json",
        lambda env: env.main("--model", env.config(mesh_shape="x:2"), "--cluster", env.cluster(2, shared=False))),
    Row("cluster-unknown-key", "misspelled key in a cluster file", "`\"shared_model_paths\": true`",
        "cluster file <dir>/cluster.json: unknown key 'shared_model_paths'; did you mean 'shared_model_path'? "
        "(known: ...)",
        lambda env: env.main("--model", env.config(mesh_shape="x:2"), "--cluster", env.file("cluster.json", json.dumps(
            {"tasks": [{"address": "127.0.0.1:2222"}], "shared_model_paths": True})))),
    Row("cluster-bad-address", "task address without a port", "`{\"address\": \"10.0.0.2\"}`",
        "cluster file <dir>/cluster.json: task 1: address \"10.0.0.2\" is not host:port (e.g. 10.0.0.2:2222)",
        lambda env: env.main("--worker", "--task", "1", "--cluster", env.file("cluster.json", json.dumps(
            {"tasks": [{"address": "10.0.0.1:2222"}, {"address": "10.0.0.2"}]})))),
    Row("cluster-worker-task-0", "`--worker` as task 0", "`gpt-neo --worker --cluster cluster.json --task 0`",
        "--task 0: a worker is task 1..1 of <dir>/cluster.json (task 0 is the chief, which runs --model)",
        lambda env: env.main("--worker", "--cluster", env.cluster(2), "--task", "0")),
    Row("cluster-worker-without-task", "`--worker` without `--task`", "`gpt-neo --worker --cluster cluster.json`",
        "--worker needs --cluster FILE and --task N (this host's index in the file)",
        lambda env: env.main("--worker", "--cluster", env.cluster(2))),
    # Dataset configs
    Row("missing-dataset-config", "unknown dataset", "`\"datasets\": [\"nosuch\"]`",
        "dataset 'nosuch' has no config: looked for nosuch.json in <dir>/dataset_configs, ...",
        lambda env: env.main("--model", env.config(datasets=["nosuch"]))),
    Row("n_vocab-too-small", "model vocabulary smaller than the data's", "`\"n_vocab\": 1000` on GPT-2 tokens",
        "dataset 'sample' was encoded with n_vocab 50257 but the model's `n_vocab` is 1000; set n_vocab >= 50257",
        lambda env: env.main("--model", env.config(n_vocab=1000))),
    Row("eos-outside-vocab", "`eos_id` the model has no embedding for", "dataset config `\"eos_id\": 50257`",
        "dataset config 'sample' has eos_id 50257, but the model's ids are 0 to n_vocab - 1 = 50256; set eos_id to "
        "the tokenizer's end-of-text id",
        lambda env: env.main("--model", env.config(dataset={"eos_id": 50257}))),
    Row("missing-tokenizer", "missing tokenizer", "dataset config `\"tokenizer_path\": \"<dir>/nothere.json\"`",
        "tokenizer_path <dir>/nothere.json does not exist (give a tokenizers JSON file, a directory with "
        "vocab.json + merges.txt, or \"gpt2\")",
        lambda env: env.main("--model", env.config(dataset={"tokenizer_path": env.path("nothere.json")}))),
    # Distillation
    Row("distill-vocab", "distillation teacher with another vocabulary",
        "`\"distill_teacher\": \"teacher.json\"`, teacher.json with `\"n_vocab\": 50304`",
        "the teacher (<dir>/teacher.json) has n_vocab 50304 but this model has 50257; the teacher scores the student's "
        "tokens, so set n_vocab to 50304 (distill from a teacher with the same vocabulary)",
        lambda env: env.main("--model", env.config(distill_teacher=teacher_config(env, n_vocab=50304)))),
    Row("distill-untrained-teacher", "distillation teacher without a checkpoint",
        "`\"distill_teacher_checkpoint\": \"<dir>/untrained\"`, an empty directory",
        "`distill_teacher_checkpoint` <dir>/untrained holds no checkpoint; train the teacher first, or give its "
        "model_path or a checkpoint prefix",
        lambda env: env.main("--model", env.config(distill_teacher=teacher_config(env), **SMALL,
                                                   distill_teacher_checkpoint=env.directory("untrained")))),
    # Flags
    Row("bad-flag-value", "flag out of range", "`--steps_per_checkpoint 0`",
        "--steps_per_checkpoint must be at least 1",
        lambda env: env.main("--model", env.config(), "--steps_per_checkpoint", "0")),
    Row("bad-sampling-flag", "sampling flag out of range", "`--predict --top_k -1`",
        "sampling keys out of range: temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), 0 < top_p <= 1, "
        "num_samples >= 1; got temperature 0.9, top_k -1, top_p 1, num_samples 1",
        lambda env: env.main("--model", env.config(), "--predict", "--top_k", "-1")),
    Row("two-modes", "two modes at once", "`--eval --predict`",
        "argument --predict: not allowed with argument --eval",
        lambda env: env.main("--model", env.config(), "--eval", "--predict")),
    Row("flag-without-effect", "a flag the mode ignores", "`--eval --temperature 0.5`",
        "--temperature has no effect with --eval (it applies to --predict, --export, training)",
        lambda env: env.main("--model", env.config(), "--eval", "--temperature", "0.5")),
    Row("sampling-flag-without-sampling", "a sampling flag for a run that does not sample",
        "`--temperature 0.5` when training with `\"predict_steps\": 0`",
        "--temperature applies to sampling, but this run does not sample: use --predict, or set predict_steps=1 to "
        "sample every --steps_per_checkpoint steps of training",
        lambda env: env.main("--model", env.config(), "--temperature", "0.5")),
    Row("override-not-key-value", "override without a value", "`python main.py --model CONFIG n_layer`",
        "'n_layer' is not KEY=VALUE: config keys are replaced as n_layer=2 (flags start with --)",
        lambda env: env.main("--model", env.config(), "n_layer")),
    Row("override-wrong-type", "override of the wrong type", "`n_layer=two`",
        "model config key `n_layer` must be an integer, got \"two\" (str)",
        lambda env: env.main("--model", env.config(), "n_layer=two")),
    Row("new-not-confirmed", "`--new` not confirmed", "`--new`, answering anything but y",
        "--new was not confirmed: nothing deleted, nothing trained",
        lambda env: env.main("--model", env.trained(), "--new")),
    # Data
    Row("glob-matches-nothing", "dataset glob matching nothing", "`\"path\": \"<dir>/none/train/*.tfrecords\"`",
        "dataset `path` glob <dir>/none/train/*.tfrecords matches no files; check the dataset config's path or "
        "create the TFRecords first",
        lambda env: env.main("--model", env.config(records_dir=env.path("none")))),
    Row("dataset-path-is-directory", "dataset `path` naming a directory", "`\"path\": \"<dir>/records\"`",
        "dataset `path` <dir>/records matches the directory <dir>/records, not TFRecord files; name the files, e.g. "
        "<dir>/records/*.tfrecords",
        lambda env: env.main("--model", env.config(dataset={"path": env.directory("records")}))),
    Row("eval-without-eval-path", "evaluation without `eval_path`", "`\"eval_steps\": 1`, no `eval_path`",
        "dataset config 'sample' has no `eval_path`",
        lambda env: env.main("--model", env.config(eval_steps=1, dataset={"eval_path": None}))),
    Row("corrupt-tfrecord", "corrupt TFRecord", "a flipped byte in a record",
        "a data file is corrupt or truncated (corrupted record at 12); `--check_dataset` names bad TFRecords",
        lambda env: env.main("--model", env.records([GOOD_RECORD] * 4, flip_byte))),
    Row("truncated-tfrecord", "truncated TFRecord", "a file cut inside its first record",
        "a data file is corrupt or truncated (truncated record at 0...); `--check_dataset` names bad TFRecords",
        lambda env: env.main("--model", env.records([GOOD_RECORD] * 4, keep_bytes(50)))),
    Row("short-record", "record shorter than n_ctx + 1", "20-token records, `\"n_ctx\": 32`",
        "Data error: a TFRecord record has 20 tokens, fewer than n_ctx + 1 = 33; re-create the TFRecords with "
        "--chunk_size 32 or more",
        lambda env: env.main("--model", env.records([list(range(1, 21))] * 4))),
    Row("id-outside-vocab", "token id >= n_vocab", "a token 60000 with `\"n_vocab\": 50257`",
        "Data error: a TFRecord holds token id 60000, but ids must be < n_vocab = 50257: the data was encoded "
        "with a larger vocabulary; raise n_vocab or re-encode the data",
        lambda env: env.main("--model", env.records([[11] * 20 + [60000] + [11] * 12] * 4))),
    Row("check-dataset-no-files", "`check_dataset` glob matching nothing",
        "`gpt-neo-check-dataset \"<dir>/*.tfrecords\"`", "<dir>/*.tfrecords matches no files",
        lambda env: env.tool(check_dataset.main, env.path("*.tfrecords"))),
    Row("create-tfrecords-no-input", "`create_tfrecords` input missing",
        "`gpt-neo-create-tfrecords --input <dir>/nothere.jsonl.zst ...`",
        "no input files at <dir>/nothere.jsonl.zst (expected files ending in .jsonl.zst, ...)",
        lambda env: env.tool(create_tfrecords.main, "--input", env.path("nothere.jsonl.zst"),
                             "--output_dir", env.path("out"), "--name", "x")),
    Row("create-tfrecords-other-arguments", "`create_tfrecords` rerun with other arguments over complete files",
        "`--chunk_size 32` into an `--output_dir` and `--name` written with `--chunk_size 16`",
        "<dir>/out/x.manifest.json was written with other arguments (chunk_size differ) and lists 1 complete "
        "file(s); pass --overwrite to delete x.manifest.json and the x_<index>_<records>.tfrecords files and start "
        "over, or choose another --output_dir or --name",
        rerun_create_tfrecords_with_another_chunk_size),
    # Prompts
    Row("empty-prompt", "empty prompt", "`--predict --prompt p.txt`, p.txt empty",
        "prompt 1 is empty: give at least one token of text",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt", env.file("p.txt", ""))),
    Row("prompt-too-long", "prompt too long", "`--predict --prompt p.txt`, 40 words, `\"n_ctx\": 32`",
        "prompt 1 has 41 tokens, but n_ctx is 32 and at least one must be generated; shorten it to 31 tokens",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt", env.file("p.txt", "word " * 40))),
    Row("bad-prompt-jsonl", "malformed prompt file", "`--prompt p.jsonl` with a line `{\"nothing\": 1}`",
        "<dir>/p.jsonl line 2 is not a JSON object with a \"prompt\" string",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt",
                             env.file("p.jsonl", '{"prompt": "fine"}\n{"nothing": 1}\n'))),
    Row("missing-prompt-file", "missing prompt file", "`--predict --prompt nothere.txt`",
        "--prompt file <dir>/nothere.txt does not exist",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt", env.path("nothere.txt"))),
    Row("prompt-is-directory", "prompt that is a directory", "`--predict --prompt <dir>/prompts`",
        "--prompt <dir>/prompts is a directory; give a text file (one prompt) or a .jsonl file ({\"prompt\": ...} "
        "per line)",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt", env.directory("prompts"))),
    Row("prompt-not-utf8", "prompt file not in UTF-8", "`--predict --prompt p.txt`, p.txt saved as UTF-16",
        "--prompt file <dir>/p.txt is not UTF-8 text (byte 0xff at offset 0, a UTF-16 byte order mark); save it as "
        "UTF-8, e.g. iconv -f UTF-16 -t UTF-8",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt",
                             env.file("p.txt", "Once upon a time".encode("utf-16")))),
    Row("prompt-token-outside-vocab", "prompt token the model has no embedding for",
        "`--predict` with a prompt holding `<|padding|>` (id 50257 of a pretrained GPT-2 tokenizer, n_vocab 50257)",
        "prompt 1 encodes to token id 50257 ('<|padding|>'), but the model's ids are < n_vocab = 50257: the "
        "tokenizer is larger than the model; remove that text or use the tokenizer the model was trained with",
        lambda env: env.main("--model", env.trained(dataset={"tokenizer_is_pretrained": True, "padding_id": 50257}),
                             "--predict", "--prompt", env.file("p.txt", "Hello <|padding|> world"))),
    # Checkpoints and paths
    Row("predict-without-checkpoint", "predict without a checkpoint", "`--predict` on an empty `model_path`",
        "--predict: no checkpoint in <dir>/tiny_model; train first or fix `model_path`",
        lambda env: env.main("--model", env.config(), "--predict")),
    Row("checkpoint-of-another-config", "checkpoint of another config", "`\"n_embd\": 64` on a checkpoint of 8",
        "<dir>/trained/model.ckpt-1 was written by a different model config (... differ in shape: gpt2/wte is "
        "[50257, 8] there and [50257, 64] here, ...); use a `model_path` of its own for this config",
        lambda env: env.main("--model", env.trained(n_embd=64))),
    Row("incomplete-checkpoint", "only incomplete checkpoints", "`--predict` after each `.index` was cut short",
        "no complete checkpoint in <dir>/trained (model.ckpt-1: its index <dir>/trained/model.ckpt-1.index is "
        "missing or unreadable (...); model.ckpt-0: ...); restore the files, or delete them and the `checkpoint` "
        "file to start over",
        predict_after_cutting_indexes),
    Row("unwritable-model-path", "unwritable `model_path`", "`\"model_path\": \"<dir>/a_file/model\"`",
        "cannot write to `model_path` <dir>/a_file/model: <dir>/a_file is not a directory",
        lambda env: env.main("--model", env.config(model_path=env.file("a_file", "") + "/model"))),
    Row("unwritable-output", "unwritable `--output`", "`--predict --output <dir>/a_file/x`",
        "cannot write the samples to <dir>/a_file/x.txt (<dir>/a_file is not a directory); give --output a path in "
        "a writable directory",
        lambda env: env.main("--model", env.trained(), "--predict", "--prompt", env.file("p.txt", "Hello"),
                             "--output", env.file("a_file", "") + "/x")),
    Row("missing-bucket", "missing bucket", "`\"model_path\": \"gs://nosuchbucket/model\"`",
        "cannot write to `model_path` gs://nosuchbucket/model: bucket gs://nosuchbucket does not exist (or these "
        "credentials cannot see it)",
        train_into_missing_bucket),
    # HuggingFace conversion
    Row("hf-export-untied", "HuggingFace export of a model it cannot hold",
        "`gpt-neo-hf export --model tiny.json ...`, tiny.json with `\"no_weight_tie\": true`",
        "no_weight_tie: no HuggingFace GPT-Neo equivalent (it always applies the final LayerNorm ln_f and ties "
        "its output to wte; this model has neither)",
        lambda env: env.tool(huggingface.main, "export", "--model", env.config(no_weight_tie=True),
                             "--output_dir", env.path("hf"))),
    Row("hf-export-eos-cut", "HuggingFace export cutting off `eos_id`'s row",
        "`gpt-neo-hf export --vocab_size 50000 ...`, `eos_id` 50256",
        "eos_id 50256 has no row in the exported wte of 50000 rows; export at least 50257 rows (--vocab_size)",
        lambda env: env.tool(huggingface.main, "export", "--model", env.trained(), "--vocab_size", "50000",
                             "--output_dir", env.path("hf"))),
    Row("hf-import-hub-offline", "HuggingFace import of a hub id without the hub",
        "`gpt-neo-hf import --hf_dir EleutherAI/gpt-neo-125M ...` offline",
        "EleutherAI/gpt-neo-125M is not a directory here, and downloading it from the HuggingFace hub failed (...); "
        "download it where the hub is reachable (huggingface-cli download EleutherAI/gpt-neo-125M --local-dir DIR) "
        "and give that directory",
        import_hub_id_offline),
    # Other tools
    Row("loss-plot-without-a-run", "loss plot of a directory without a run",
        "`gpt-neo-loss-plot --model_path <dir>/empty --output loss.png`",
        "no training loss in <dir>/empty: train first (its TensorBoard events hold the loss)",
        lambda env: env.tool(loss_plot.main, "--model_path", env.directory("empty"), "--output", env.path("l.png"))),
]


def message_pattern(message, directory):
    """The regular expression of a row's message: `...` matches anything, `<dir>` the test's directory."""
    parts = re.split(r"(\.\.\.|<dir>)", message)
    return "".join(".*" if p == "..." else re.escape(directory) if p == "<dir>" else re.escape(p) for p in parts)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, sample_records):
    """A model_path with a checkpoint of one training step of the tiny config made SMALL."""
    root = tmp_path_factory.mktemp("bad_inputs_trained")
    write_dataset_config(root, "sample", sample_records(TINY["n_ctx"]))
    raw = dict(TINY, **SMALL, train_steps=1, iterations=1, model_path=str(root / "model"))
    (root / "tiny.json").write_text(json.dumps(raw))
    assert run_main("--model", str(root / "tiny.json")) == 0
    return raw["model_path"]


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input_is_one_error_line(row, request, tmp_path, make_config, capsys):
    code = row.run(Env(request, tmp_path, make_config))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "error: " in line]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err + out, err
    message = lines[0].split("error: ", 1)[1]
    assert re.fullmatch(message_pattern(row.message, str(tmp_path)), message), message


def docs_table():
    lines = ["| input | example | message |", "|---|---|---|"]
    for row in ROWS:
        lines.append("| %s | %s | `` error: %s `` |" % (row.input, row.example, row.message.replace("|", "\\|")))
    return "\n".join(lines) + "\n"


def test_docs_table_is_current():
    assert len(ROWS) >= 25 and len({row.id for row in ROWS}) == len(ROWS)
    with open(os.path.join(REPO, "docs", "troubleshooting.md")) as f:
        page = f.read()
    assert docs_table() in page, ("docs/troubleshooting.md's bad-input table is stale: "
                                    "python tests/test_bad_inputs.py prints it")


if __name__ == "__main__":
    print(docs_table(), end="")
