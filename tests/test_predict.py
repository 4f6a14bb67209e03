"""main.py --predict on a trained checkpoint: greedy equals HuggingFace's generate; outputs (bad prompts: tests/test_bad_inputs.py)."""
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import pytest
from conftest import run_main
from reference_models import hf_model_from_mesh_tf_checkpoint

from gpt_neo_mtf.convert.huggingface import export_hf
from gpt_neo_mtf.inputs.tokenizer import load_tokenizer
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import ConfigError, load_config
from gpt_neo_mtf.trainer.predict import write_samples


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_records):
    """A 2-layer global/local model with the 256-token window HF's converter assumes, n_ctx 320."""
    from conftest import TINY
    root = tmp_path_factory.mktemp("predict")
    raw = dict(TINY, n_ctx=320, local_attention_radius=256, train_batch_size=2, predict_batch_size=3,
               train_steps=8, iterations=4, model_path=str(root / "model"))
    records = sample_records(320)
    (root / "dataset_configs").mkdir()
    (root / "dataset_configs" / "sample.json").write_text(json.dumps({
        "n_vocab": 50257, "path": os.path.join(records, "train", "*.tfrecords"),
        "eval_path": os.path.join(records, "val", "*.tfrecords"), "tokenizer_path": "gpt2",
        "eos_id": 50256, "padding_id": 50256}))
    path = root / "model.json"
    path.write_text(json.dumps(raw))
    assert run_main("--model", str(path)) == 0
    return str(path), raw


def prompts_of_lengths(lengths):
    """Real text from the sample corpus, cut to the given token counts."""
    tokenizer = load_tokenizer("gpt2")
    text = open(os.path.join(os.path.dirname(__file__), "..", "inputs", "prompts.py")).read()
    ids = tokenizer.encode(text * 4).ids
    return [tokenizer.decode(ids[i * 7:i * 7 + n]) for i, n in enumerate(lengths)], tokenizer


def test_greedy_decoding_equals_huggingface_generate(trained, tmp_path):
    """Prompts of 20, 230 and 250 tokens in one batch, 64 new tokens each: generation crosses the
    256-token local window. HF loads the checkpoint through its own mesh-tf converter, and
    separately our export of it."""
    import torch
    from transformers import GPTNeoForCausalLM
    path, raw = trained
    texts, tokenizer = prompts_of_lengths([20, 230, 250])
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    out = str(tmp_path / "greedy")
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--temperature", "0",
                    "--max_new_tokens", "64", "--output", out) == 0
    ours = [json.loads(line) for line in open(out + ".jsonl")]
    assert [s["prompt_index"] for s in ours] == [0, 1, 2]

    checkpoint = tf.train.latest_checkpoint(raw["model_path"])
    exported = str(tmp_path / "exported")
    export_hf(checkpoint, load_config(path), exported)
    for model in (hf_model_from_mesh_tf_checkpoint(checkpoint, raw, str(tmp_path / "hf")),
                  GPTNeoForCausalLM.from_pretrained(exported, attn_implementation="eager").eval()):
        for sample in ours:
            prompt = torch.tensor([sample["prompt_tokens"]])
            with torch.no_grad():
                generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                                           do_sample=False, eos_token_id=50256, pad_token_id=50256)
            theirs = generated[0, prompt.shape[1]:].tolist()
            if 50256 in theirs:
                theirs = theirs[:theirs.index(50256)]
            assert sample["tokens"] == theirs
            assert sample["text"] == tokenizer.decode(theirs)


def test_samples_files_and_reproducible_seeded_sampling(trained, tmp_path, capsys):
    path, raw = trained
    prompt_file = tmp_path / "one.txt"
    prompt_file.write_text("def main():\n    ")
    runs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--num_samples", "4",
                        "--max_new_tokens", "12", "--top_k", "40", "--seed", "5", "--output", out) == 0
        runs.append([json.loads(line) for line in open(out + ".jsonl")])
    assert runs[0] == runs[1]
    assert [s["sample_index"] for s in runs[0]] == [0, 1, 2, 3]
    assert all(len(s["tokens"]) <= 12 and s["prompt"] == "def main():\n    " for s in runs[0])
    assert len({tuple(s["tokens"]) for s in runs[0]}) > 1  # four different samples
    text = open(str(tmp_path / "a") + ".txt").read()
    assert text.count(" SAMPLE ") == 4 and "def main():" in text
    assert "SAMPLE 3" in capsys.readouterr().out


def test_default_output_goes_under_model_path(trained):
    path, raw = trained
    assert run_main("--model", path, "--predict", "--max_new_tokens", "3") == 0
    assert tf.io.gfile.exists(os.path.join(raw["model_path"], "predictions_8.jsonl"))
    assert not os.path.exists("predictions_8.jsonl")


def test_an_unwritable_output_stops_before_sampling(trained, tmp_path, capsys):
    """Root may write anywhere, except under a regular file (tests/test_bad_inputs.py has the message)."""
    path, raw = trained
    (tmp_path / "a_file").write_text("")
    assert run_main("--model", path, "--predict", "--output", str(tmp_path / "a_file" / "x")) == 2
    out, err = capsys.readouterr()
    assert "SAMPLE" not in out and err.startswith("error: cannot write the samples to %s/a_file/x.txt" % tmp_path)


def test_samples_go_to_the_temp_directory_when_the_output_fails_after_sampling(trained, tmp_path, capsys,
                                                                                monkeypatch):
    """The output directory turns into a file while the samples are printed (after sampling, before
    writing them): they are written to the system's temp directory, and the error says where."""
    path, raw = trained
    out = tmp_path / "out"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def break_output(record):
        if " SAMPLE 0 " in record.getMessage():
            shutil.rmtree(out)
            out.write_text("")
        return True

    logger = logging.getLogger("gptneo")
    logger.addFilter(break_output)
    try:
        code = run_main("--model", path, "--predict", "--num_samples", "2", "--max_new_tokens", "3",
                        "--output", str(out / "x"))
    finally:
        logger.removeFilter(break_output)
    printed, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error: " in line]
    saved = re.fullmatch(re.escape("error: cannot write the samples to %s/x.txt (%s/x.txt.incomplete; Not a "
                                   "directory), so they are in " % (out, out)) + r"(\S+/x)" +
                         re.escape(".txt and .jsonl instead; give --output a path in a writable directory"), line)
    assert saved and os.path.dirname(saved.group(1)).startswith(str(tmp_path / "gptneo_samples_")), line
    samples = [json.loads(line) for line in open(saved.group(1) + ".jsonl")]
    assert [s["sample_index"] for s in samples] == [0, 1] and all(1 <= len(s["tokens"]) <= 3 for s in samples)
    text = open(saved.group(1) + ".txt").read()
    assert text.count(" SAMPLE ") == 2 and all(s["prompt"] + s["text"] in text + printed for s in samples)


def test_samples_that_cannot_be_written_anywhere_are_pointed_to_in_the_output(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "a_file" / "temp"))
    with pytest.raises(ConfigError) as e:
        write_samples(str(tmp_path / "a_file" / "x"), {".txt": "text", ".jsonl": "{}\n"})
    assert re.fullmatch(re.escape("cannot write the samples to {0}/a_file/x.txt ({0}/a_file/x.txt.incomplete; Not a "
                                  "directory), nor to the system's temp directory ([Errno 20] Not a directory: "
                                  "'{0}/a_file/temp/gptneo_samples_".format(tmp_path)) +
                        r"\w+'\): copy them from the output above; give --output a path in a writable directory",
                        str(e.value)), str(e.value)


def test_continuation_cuts_at_eos_and_limit():
    from gpt_neo_mtf.trainer.predict import continuation
    ids = np.array([7, 8, 9, 1, 2, 50256, 4, 0])
    assert continuation(ids, 3, 8, None, 50256) == ([1, 2], "eos")
    assert continuation(ids, 3, 8, 2, 50256) == ([1, 2], "length")
    assert continuation(ids, 6, 8, None, 50256) == ([4, 0], "length")


def test_flags_override_model_path_mesh_and_layout(trained, tmp_path, capsys):
    """A released-model config samples from a downloaded checkpoint on one CPU: --model_path, --mesh_shape, --layout."""
    path, raw = trained
    elsewhere = dict(raw, model_path=str(tmp_path / "not_here"), mesh_shape="x:4,y:2", layout="batch:x,embd:y")
    config = tmp_path / "released.json"
    config.write_text(json.dumps(elsewhere))
    (tmp_path / "dataset_configs").symlink_to(os.path.join(os.path.dirname(path), "dataset_configs"))
    assert run_main("--model", str(config), "--model_path", raw["model_path"], "--mesh_shape", "all:1",
                    "--layout", "", "--predict", "--max_new_tokens", "2", "--output", str(tmp_path / "s")) == 0
    assert os.path.exists(str(tmp_path / "s.jsonl"))
    assert run_main("--model", str(config), "--layout", "head:x") == 2
    assert "did you mean 'heads'" in capsys.readouterr().err
