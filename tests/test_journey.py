"""The journeys users take, with the configs users start from.

Every model config in configs/ (the original's ten as the original wrote them, the released GPT-Neo
ones, our CPU ones) is copied unedited and run through the real entry points, shrunk only by KEY=VALUE
size overrides (`shrunk`): it keeps its attention_types pattern, precision, options and its own layout,
on a mesh of at most 4 virtual CPU devices that splits every mesh dimension the layout names. Data and
dataset configs are made by our own tools: the kind the shipped pile.json is (pretrained GPT-2 tokenizer,
padding id 50257 = n_vocab) and one with a tokenizer trained by tfrecords_tools.train_tokenizer.

The journey: train 2 steps (a loss line printed, though `iterations` is 500 or more) -> --eval ->
--predict -> --export (loaded with tf.saved_model.load as the README shows) -> HuggingFace export ->
HuggingFace import -> --predict from the import (greedy, so the samples must be the same tokens).
Layouts: each config's own, and the ones --auto_layout and --auto_layout_and_mesh_shape print for it on
4 devices (tests/journey_layouts.json; `make journey` recomputes them and fails if they changed).

The default suite runs train -> --predict for every config and every such layout; `make journey`
(pytest -m journey) runs the whole matrix and prints its table.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE, run_main

from gpt_neo_mtf.cli import create_tfrecords, huggingface
from gpt_neo_mtf.cli import train_tokenizer as train_tokenizer_command
from gpt_neo_mtf.tfrecords_tools import train_tokenizer

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.json")))
NAMES = [os.path.splitext(os.path.basename(path))[0] for path in CONFIGS]
LAYOUTS_FILE = os.path.join(REPO, "tests", "journey_layouts.json")
AUTO_FLAGS = ("auto_layout", "auto_layout_and_mesh_shape")
DEVICES = 4
N_CTX = 64
# Size keys only; the rest of each config stays as written.
SIZES = {"n_embd": 64, "n_head": 4, "n_ctx": N_CTX, "local_attention_radius": 16, "train_batch_size": 4,
         "eval_batch_size": 4, "train_steps": 2}
DATASET_IDS = ("pile", "openwebtext-documents", "openwebtext2_new_inputs", "sample")
TRAINED_VOCAB = 1024
PROMPT = "In a shocking finding, scientists discovered"  # fits N_CTX with any tokenizer of TRAINED_VOCAB tokens
STEPS = ("train", "eval", "predict", "export", "hf_export", "hf_import", "predict_import")


def raw_config(name):
    with open(os.path.join(REPO, "configs", name + ".json")) as f:
        return json.load(f)


def own_mesh(raw):
    """The config's mesh dimensions, each split 2 ways if its layout names it (at most DEVICES devices)."""
    used = {pair.split(":")[1] for pair in raw["layout"].replace(" ", "").split(",") if pair}
    names = [pair.split(":")[0] for pair in raw["mesh_shape"].split(",")]
    shape = ",".join("%s:%d" % (name, 2 if name in used else 1) for name in names)
    assert 2 ** len(used) <= DEVICES, shape
    return shape


def shrunk(raw, model_path, mesh_shape=None, layout=None):
    """KEY=VALUE overrides shrinking `raw` (a config as written) to a CPU test's size."""
    pattern = [[kinds, 1] for kinds, _repeat in raw["attention_types"]]
    sizes = dict(SIZES, attention_types=pattern, n_layer=sum(len(kinds) for kinds, _ in pattern),
                 model_path=model_path, mesh_shape=mesh_shape or own_mesh(raw))
    if layout is not None:
        sizes["layout"] = layout
    if raw.get("tokens_per_mb_per_replica"):
        sizes["tokens_per_mb_per_replica"] = N_CTX  # one example per microbatch: 2 microbatches a replica
    if raw.get("eval_steps"):
        sizes["eval_steps"] = 1
    return ["%s=%s" % (key, json.dumps(value)) for key, value in sizes.items()]


# ---------------------------------------------------------------------------------------------
# Data made by our own tools, and the configs copied beside it


def make_data(root, tokenizer):
    """Sample-corpus TFRecords of N_CTX + 1 tokens under `root`, and the dataset config our tool writes
    for them (root/dataset_configs/<id>.json for every id the configs name)."""
    config = os.path.join(root, "dataset_configs", "data.json")
    os.makedirs(os.path.dirname(config))
    for split, source in (("train", "train"), ("eval", "val")):
        assert create_tfrecords.main([
            "--input", os.path.join(SAMPLE, source + ".jsonl.zst"), "--output_dir", os.path.join(root, split),
            "--name", "data", "--chunk_size", str(N_CTX), "--tokenizer", tokenizer, "--files_per", "200",
            "--write_dataset_config", config, "--dataset_split", split, "--quiet"]) == 0
    for dataset_id in DATASET_IDS:
        shutil.copy(config, os.path.join(root, "dataset_configs", dataset_id + ".json"))
    for path in CONFIGS:
        shutil.copy(path, root)  # unedited, beside the dataset configs (looked up there first)
    with open(config) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """{"pile": root, "trained": root}: the two kinds of data, configs copied beside each."""
    pile = str(tmp_path_factory.mktemp("pile_kind"))
    written = make_data(pile, "gpt2")
    # What the shipped configs/dataset_configs/pile.json is: GPT-2 + <|padding|> = 50257 = n_vocab.
    assert (written["tokenizer_is_pretrained"], written["n_vocab"], written["eos_id"], written["padding_id"]) == \
        (True, 50257, 50256, 50257)
    trained = str(tmp_path_factory.mktemp("trained_kind"))
    assert train_tokenizer_command.main(["--input", os.path.join(SAMPLE, "train.jsonl.zst"), "--output_dir",
                                 os.path.join(trained, "tokenizer"), "--vocab_size", str(TRAINED_VOCAB)]) == 0
    written = make_data(trained, os.path.join(trained, "tokenizer", train_tokenizer.TOKENIZER_FILE))
    assert written["tokenizer_is_pretrained"] is False and written["n_vocab"] <= TRAINED_VOCAB
    return {"pile": pile, "trained": trained}


# ---------------------------------------------------------------------------------------------
# The steps of a journey


class Journey:
    """One config on one kind of data and one layout, run step by step through the real entry points."""

    def __init__(self, name, root, work, capsys, mesh_shape=None, layout=None):
        self.name, self.capsys, self.work = name, capsys, work
        self.config = os.path.join(root, name + ".json")
        self.model_path = os.path.join(work, "model")
        self.overrides = shrunk(raw_config(name), self.model_path, mesh_shape, layout)
        self.prompt = os.path.join(work, "prompt.txt")
        with open(self.prompt, "w") as f:
            f.write(PROMPT)
        self.samples = {}
        self.results = {}  # step -> "ok", why it was refused, "-" (skipped) or "FAILED"

    def main(self, *argv, config=None, overrides=None):
        """main.py's exit status and output."""
        code = run_main("--model", config or self.config, *(self.overrides if overrides is None else overrides),
                        *argv)
        out, err = self.capsys.readouterr()
        assert code == 0 and "Traceback" not in err, "%s %s: exit %s\n%s\n%s" % (self.name, argv, code, out, err)
        return out

    def train(self):
        # Configs that sample during training (`predict_steps`) sample this short prompt.
        out = self.main(*(["--prompt", self.prompt] if raw_config(self.name).get("predict_steps") else []))
        # A loss line although train_steps (2) < iterations (500 or more in the original's configs).
        assert "step 2/2 | loss " in out, out

    def eval(self):
        self.main("--eval", "eval_steps=1")
        with open(os.path.join(self.model_path, "eval_results.jsonl")) as f:
            result = [json.loads(line) for line in f][-1]
        assert result["task"] == "validation" and result["global_step"] == 2 and result["loss"] > 0

    def predict(self, key="own", config=None, overrides=None):
        output = os.path.join(self.work, "samples_" + key)
        self.main("--predict", "--prompt", self.prompt, "--temperature", "0", "--max_new_tokens", "4", "--output", output,
                  config=config, overrides=overrides)
        with open(output + ".jsonl") as f:
            samples = [json.loads(line) for line in f]
        assert len(samples) == 1 and samples[0]["tokens"] and samples[0]["finish"] in ("eos", "length"), samples
        self.samples[key] = samples[0]["tokens"]

    def export(self):
        export_dir = os.path.join(self.work, "export")
        self.main("--export", "--export_dir", export_dir, "--temperature", "0")
        ids = load_exported_generation(export_dir, prompt=self.prompt_tokens())
        expected = self.prompt_tokens() + self.samples["own"]
        assert ids[:len(expected)] == expected, (ids[:len(expected)], expected)

    def prompt_tokens(self):
        with open(os.path.join(self.work, "samples_own.jsonl")) as f:
            return json.loads(f.readline())["prompt_tokens"]

    def hf_export(self):
        code = huggingface.main(["export", "--model", self.config, *self.overrides,
                                 "--output_dir", os.path.join(self.work, "hf")])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in err
        if code == 2:  # a model HF's GPT-Neo cannot represent: one line saying why
            lines = [line for line in err.splitlines() if line.startswith("error: ")]
            assert len(lines) == 1, err
            return lines[0]
        assert code == 0, err

    def hf_import(self):
        assert huggingface.main(["import", "--hf_dir", os.path.join(self.work, "hf"),
                                 "--output_dir", os.path.join(self.work, "imported")]) == 0
        self.capsys.readouterr()

    def predict_import(self):
        """--predict from the import (its config_from_hf.json, with this journey's data) samples what the
        original checkpoint sampled."""
        imported = os.path.join(self.work, "imported")
        with open(os.path.join(imported, "config_from_hf.json")) as f:
            datasets = json.load(f)["datasets"]
        shutil.copytree(os.path.join(os.path.dirname(self.config), "dataset_configs"),
                        os.path.join(imported, "dataset_configs"), dirs_exist_ok=True)
        self.predict("import", config=os.path.join(imported, "config_from_hf.json"),
                     overrides=["datasets=%s" % json.dumps(datasets if datasets else [["pile", None, None, None]]),
                                "predict_batch_size=1"])
        assert self.samples["import"] == self.samples["own"], self.samples

    def run(self, steps):
        """Run `steps` in order, recording each in `results`; a refused HF export skips the HF steps after it."""
        for step in steps:
            if self.results.get("hf_export", "ok") != "ok" and step in ("hf_import", "predict_import"):
                self.results[step] = "-"
                continue
            self.results[step] = "FAILED"
            self.results[step] = getattr(self, step)() or "ok"


def load_exported_generation(export_dir, prompt):
    """The ids the exported generation SavedModel makes for one prompt, loaded as README.md shows, in a
    fresh TF2 process."""
    script = """
import glob, json, sys
import numpy as np
import tensorflow as tf
export_dir, prompt = sys.argv[1], json.loads(sys.argv[2])
model = tf.saved_model.load(sorted(glob.glob(export_dir + "/generate/*"))[-1])
serve = model.signatures["serving_default"]
batch, n_ctx = serve.structured_input_signature[1]["input_ids"].shape
ids = np.zeros((batch, n_ctx), np.int32)
ids[:, :len(prompt)] = prompt
out = serve(input_ids=tf.constant(ids), lengths=tf.constant([len(prompt)] * batch, tf.int32))
print(json.dumps(out["ids"].numpy()[0].tolist()))
"""
    done = subprocess.run([sys.executable, "-c", script, export_dir, json.dumps(prompt)], capture_output=True,
                          text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Layouts printed by --auto_layout and --auto_layout_and_mesh_shape


def printed_layout(name, flag, capsys):
    """(mesh_shape, layout) main.py prints for the config as written on DEVICES devices."""
    mesh_shape = own_mesh(raw_config(name)) if flag == "auto_layout" else "all:%d" % DEVICES
    assert run_main("--model", name, "mesh_shape=" + mesh_shape, "--" + flag) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('"')]
    values = dict(line.rstrip(",").replace('"', "").split(": ") for line in lines)
    return values["mesh_shape"], values["layout"]


def stored_layouts():
    if not os.path.exists(LAYOUTS_FILE):
        return {}
    with open(LAYOUTS_FILE) as f:
        return json.load(f)


def layout_cases():
    """(config, flag, mesh_shape, layout) for every printed layout that differs from the config's own
    (shrunk) mesh and layout."""
    cases = []
    for name, printed in sorted(stored_layouts().items()):
        raw = raw_config(name)
        for flag in AUTO_FLAGS:
            mesh_shape, layout = printed[flag]
            if (mesh_shape, layout) != (own_mesh(raw), raw["layout"]):
                cases.append((name, flag, mesh_shape, layout))
    return cases


def distinct_layout_cases():
    """One case per distinct (mesh_shape, layout): the default suite's share of `layout_cases`."""
    seen, cases = set(), []
    for case in layout_cases():
        if case[2:] not in seen:
            seen.add(case[2:])
            cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------
# The default suite: every config and every printed layout, train -> --predict


@pytest.mark.parametrize("name", NAMES)
def test_config_trains_and_samples(name, data, tmp_path, capsys):
    Journey(name, data["pile"], str(tmp_path), capsys).run(("train", "predict"))


@pytest.mark.parametrize("name,flag,mesh_shape,layout", distinct_layout_cases(),
                         ids=["%s-%s-%s-%s" % case for case in distinct_layout_cases()])
def test_printed_layout_trains_and_samples(name, flag, mesh_shape, layout, data, tmp_path, capsys):
    Journey(name, data["pile"], str(tmp_path), capsys, mesh_shape, layout).run(("train", "predict"))


def test_trained_tokenizer_config_trains_and_samples(data, tmp_path, capsys):
    Journey("gpt_neo_125M", data["trained"], str(tmp_path), capsys).run(("train", "predict"))


def test_stored_layouts_cover_every_config():
    assert sorted(stored_layouts()) == NAMES, "make journey rewrites tests/journey_layouts.json"


# ---------------------------------------------------------------------------------------------
# The whole matrix: `make journey`


@pytest.mark.journey
def test_stored_layouts_are_what_main_prints(capsys):
    printed = {name: {flag: list(printed_layout(name, flag, capsys)) for flag in AUTO_FLAGS} for name in NAMES}
    if printed != stored_layouts():
        with open(LAYOUTS_FILE, "w") as f:
            json.dump(printed, f, indent=1, sort_keys=True)
            f.write("\n")
        pytest.fail("the printed layouts changed; tests/journey_layouts.json is rewritten: review and commit it")


MATRIX = [(name, kind, "own", None, None) for name in NAMES for kind in ("pile", "trained")] + \
         [(name, "pile", flag, mesh_shape, layout) for name, flag, mesh_shape, layout in layout_cases()]
TABLE = []


@pytest.mark.journey
@pytest.mark.parametrize("name,kind,flag,mesh_shape,layout", MATRIX, ids=["-".join(map(str, case)) for case in MATRIX])
def test_whole_journey(name, kind, flag, mesh_shape, layout, data, tmp_path, capsys):
    journey = Journey(name, data[kind], str(tmp_path), capsys, mesh_shape, layout)
    TABLE.append((name, kind, flag, mesh_shape or own_mesh(raw_config(name)),
                  layout if layout is not None else raw_config(name)["layout"], journey.results))
    journey.run(STEPS)


@pytest.fixture(scope="module", autouse=True)
def journey_table():
    """Print the matrix's table (config x mode -> result) after the module's tests."""
    yield
    if TABLE:
        lines = ["| config | data | layout from | mesh | layout | " + " | ".join(STEPS) + " |",
                 "|---" * (5 + len(STEPS)) + "|"]
        for name, kind, flag, mesh_shape, layout, results in TABLE:
            cells = [results.get(step, "") for step in STEPS]
            lines.append("| %s | %s | %s | %s | %s | %s |" % (name, kind, flag, mesh_shape, layout or "(replicated)",
                                                             " | ".join(cells)))
        os.makedirs(os.path.join(REPO, "build"), exist_ok=True)
        with open(os.path.join(REPO, "build", "journey_table.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
