"""Evaluation through the real main.py: validation metrics and LAMBADA against an independent numpy
computation on the same checkpoint, the results in eval_results.jsonl and TensorBoard, the byte table
behind bits per byte, and the config errors of eval_tasks."""
import json
import math
import os

import numpy as np
import pytest
from conftest import make, run_main, scalars
from reference_models import numpy_gpt_neo_logits, numpy_token_losses
from test_model import v3_8_context
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys

from gpt_neo_mtf.inputs.lambada import URL
from gpt_neo_mtf.inputs.pipeline import input_fn_for
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import ConfigError, load_config
from gpt_neo_mtf.trainer.evaluation import token_byte_lengths
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.trainer.model_fn import build_model_fn

# Passages in the style of the sample corpus (Python documentation). The last one's word is several
# tokens long; the long one exceeds n_ctx + 1 = 33 tokens, so it is cut from the left.
TEXTS = [
    "The function returns a new list containing all items from the iterable in ascending order",
    "If the file does not exist, the open call raises an exception called FileNotFoundError",
    "A module can contain executable statements as well as function definitions. These statements are "
    "intended to initialize the module. They are executed only the first time the module name is "
    "encountered in an import statement",
    "Use the keyword argument to pass the value",
    "The result is an antidisestablishmentarianism",
]
# Contexts the model continues greedily (see `greedy_passages`).
PROMPTS = ["The value of the", "This module provides a", "Return the number of", "In the"]


def weights_of(model_path):
    """The model's variables of the latest checkpoint, by name (what the numpy reference reads)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("gpt2/") and "adam" not in name}


def greedy_passages(weights, raw, tokenizer, count=6):
    """Each prompt and its numpy-greedy continuation of `count` tokens, as text: passages whose last
    word the model is likely to get right (when the word's tokens are the ones it generated)."""
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt).ids
        for _ in range(count):
            ids.append(int(numpy_gpt_neo_logits(weights, raw, np.array([ids]))[0, -1].argmax()))
        text = tokenizer.decode(ids)
        context, _, word = text.rpartition(" ")
        if context and word:
            texts.append(text)
    return texts


def lambada_reference(weights, raw, tokenizer, texts):
    """(accuracy, perplexity) as EleutherAI's harness defines them, from numpy logits of each passage
    (context and " " + last word tokenized separately, the last n_ctx + 1 tokens kept), and how many
    passages have some but not all of the word's tokens right."""
    nlls, correct, partly = [], [], 0
    for text in texts:
        context, word = text.rsplit(" ", 1)
        target = tokenizer.encode(" " + word).ids
        tokens = (tokenizer.encode(context).ids + target)[-(raw["n_ctx"] + 1):]
        logits = numpy_gpt_neo_logits(weights, raw, np.array([tokens[:-1]]))[0]
        top = logits.max(-1, keepdims=True)
        log_p = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        positions = range(len(tokens) - 1 - len(target), len(tokens) - 1)
        nlls.append(-sum(log_p[p, tokens[p + 1]] for p in positions))
        right = [logits[p].argmax() == tokens[p + 1] for p in positions]
        correct.append(all(right))
        partly += any(right) and not all(right)
    return float(np.mean(correct)), math.exp(np.mean(nlls)), partly


def validation_reference(weights, raw, config, byte_lengths):
    """loss, cross_entropy, bits_per_byte and mean_logits of the eval batches, in numpy."""
    with tf.Graph().as_default():
        batch = tf.data.make_one_shot_iterator(input_fn_for(config, "eval")(None)).get_next()
        with tf.Session() as session:
            batches = [session.run(batch) for _ in range(config.train.eval_steps)]
    ids = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    logits = numpy_gpt_neo_logits(weights, raw, ids)
    cross_entropy, loss = numpy_token_losses(logits, labels, config.model.z_loss)
    return {"loss": loss.mean(), "cross_entropy": cross_entropy.mean(),
            "bits_per_byte": cross_entropy.sum() / math.log(2) / byte_lengths[labels].sum(),
            "mean_logits": logits.mean()}


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def test_validation_and_lambada_equal_numpy_on_the_same_checkpoint(make_config, tmp_path, gpt2_tokenizer, capsys):
    plain = write_jsonl(tmp_path / "plain.jsonl", TEXTS)
    settings = dict(train_steps=4, eval_steps=2, eval_tasks=["lambada"], lambada_path=plain)
    path = make_config("eval", **settings)
    assert run_main("--model", path, "--steps_per_checkpoint", "2") == 0
    config = load_config(path)
    raw = json.load(open(path))
    results = [json.loads(line) for line in open(os.path.join(config.model_path, "eval_results.jsonl"))]
    assert [(r["task"], r["global_step"]) for r in results] == [
        ("lambada", 2), ("validation", 2), ("lambada", 4), ("validation", 4)]
    for task, tag, directory in (("lambada", "lambada_accuracy", "eval_lambada"),
                                 ("validation", "bits_per_byte", "eval")):
        logged = scalars(os.path.join(config.model_path, directory), tag)
        assert logged == pytest.approx({r["global_step"]: r[tag] for r in results if r["task"] == task})

    weights = weights_of(config.model_path)
    byte_lengths = token_byte_lengths(gpt2_tokenizer, config.model.n_vocab)
    validation = results[3]
    expected = validation_reference(weights, raw, config, byte_lengths)
    for key, value in expected.items():
        assert validation[key] == pytest.approx(value, rel=1e-5), key
    assert validation["perplexity"] == pytest.approx(math.exp(expected["cross_entropy"]), rel=1e-5)
    accuracy, perplexity, _ = lambada_reference(weights, raw, gpt2_tokenizer, TEXTS)
    assert (results[2]["lambada_accuracy"], results[2]["lambada_perplexity"]) == pytest.approx(
        (accuracy, perplexity), rel=1e-4)

    # --eval on the same checkpoint with passages the model continues itself: some words are right, and
    # with "zz" added some are right in their first tokens only, which does not count.
    greedy = greedy_passages(weights, raw, gpt2_tokenizer)
    texts = greedy + [text + "zz" for text in greedy] + TEXTS
    accuracy, perplexity, partly = lambada_reference(weights, raw, gpt2_tokenizer, texts)
    assert 0 < accuracy < 1 and partly > 0
    path = make_config("eval", **dict(settings, lambada_path=write_jsonl(tmp_path / "greedy.jsonl", texts)))
    capsys.readouterr()
    assert run_main("--model", path, "--eval") == 0
    again = [json.loads(line) for line in open(os.path.join(config.model_path, "eval_results.jsonl"))][4:]
    assert [(r["task"], r["global_step"]) for r in again] == [("lambada", 4), ("validation", 4)]
    assert (again[0]["lambada_accuracy"], again[0]["lambada_perplexity"]) == pytest.approx(
        (accuracy, perplexity), rel=1e-4)
    assert again[1]["task"] == "validation"
    assert {k: again[1][k] for k in expected} == pytest.approx({k: validation[k] for k in expected}, rel=1e-6)
    out = capsys.readouterr().out
    assert "lambada at step 4: accuracy %.4f" % accuracy in out
    assert "| %d passages" % len(texts) in out and "bits/byte" in out


def test_byte_lengths_add_up_to_the_bytes_of_the_decoded_text(gpt2_tokenizer):
    text = "naïve café — 日本語のテキスト 😀 plain ASCII\n\ttabs and <|endoftext|> end"
    ids = gpt2_tokenizer.encode(text).ids
    lengths = token_byte_lengths(gpt2_tokenizer, 50304)
    # Characters of several bytes are split over tokens; their bytes still add up exactly.
    assert any(len(gpt2_tokenizer.decode([i]).encode()) != lengths[i] for i in ids)
    assert lengths[ids].sum() == len(gpt2_tokenizer.decode(ids).encode()) == len(text.encode()) - len("<|endoftext|>")
    assert lengths[50256] == 0 and not lengths[50257:].any()  # <|endoftext|>, and rows past the vocabulary


def test_lambada_eval_graph_lowers_on_the_tpu_simd_mesh(tmp_path):
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4, train_batch_size=8,
                  eval_batch_size=8, model_path=str(tmp_path))
    model_fn = build_model_fn(config, Hardware("tpu", tpu_name="my-tpu"), steps_per_checkpoint=100)
    with tf.Graph().as_default():
        ids = tf.zeros([8, 16], tf.int32)
        spec = model_fn({"ids": ids, "target_mask": tf.ones([8, 16])}, ids, ModeKeys.EVAL, {"context": v3_8_context()})
        assert spec.loss.shape.as_list() == []
        assert [t.shape.as_list() for t in spec.eval_metrics[1]] == [[8], [8], [8]]


@pytest.mark.parametrize("overrides, message", [
    ({"eval_tasks": ["lambda"]}, "unknown task 'lambda' in `eval_tasks` (known: lambada); did you mean 'lambada'?"),
    ({"eval_tasks": ["lambada"]}, "`eval_tasks` lists lambada but `lambada_path` is not set: download %s and set "
                                  "lambada_path to the file (local or gs://)" % URL),
    ({"eval_tasks": ["lambada"], "lambada_path": "x.jsonl", "mlm_training": True, "mlm_mask_id": 0},
     "LAMBADA scores next-word predictions, which a masked-LM model (`mlm_training`) does not make; remove "
     "lambada from `eval_tasks`"),
], ids=["unknown-task", "no-path", "masked-lm"])
def test_eval_task_config_errors(make_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(make_config(**overrides))
    assert str(error.value) == message


def test_missing_lambada_file_stops_the_run_before_training(make_config, tmp_path, capsys):
    path = make_config("no_file", eval_tasks=["lambada"], lambada_path=str(tmp_path / "missing.jsonl"))
    assert run_main("--model", path) == 2
    assert capsys.readouterr().err == "error: `lambada_path` %s does not exist; download %s and set lambada_path " \
                                      "to it\n" % (tmp_path / "missing.jsonl", URL)
    assert not tf.train.latest_checkpoint(load_config(path).model_path)
