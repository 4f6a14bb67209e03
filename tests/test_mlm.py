"""Masked-LM training (`mlm_training`): the masking of known records (statistics, exact labels, exact
resume), the loss on masked positions of the non-causal model against numpy, the reference's
non-causal masks, a real training run, and the config errors."""
import json
import math
import os

import numpy as np
import pytest
from conftest import BASE, make, placement, randomize_and_run, run_main, scalars
from reference_models import attention_mask, numpy_gpt_neo_logits, numpy_token_losses
from test_input_modes import write_file

from gpt_neo_mtf.inputs.pipeline import input_fn_for
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt_losses
from gpt_neo_mtf.trainer.config import ConfigError, load_config

N_CTX = 32
RECORDS = 64
BATCH = 8
IGNORED = list(range(1000, 1100))  # the tokens of the first three records, never masked
MASK_ID, CLS_ID = 50300, 50301
MLM = dict(mlm_training=True, mlm_mask_id=MASK_ID, n_vocab=50304)


def record(r):
    return [1000 + r * (N_CTX + 1) + j for j in range(N_CTX + 1)]


@pytest.fixture
def known_config(tmp_path, make_config):
    """Train and eval files of RECORDS known records each; masked with the CLS id first."""
    for split in ("train", "val"):
        write_file(str(tmp_path / "known" / split / "known"), [record(r) for r in range(RECORDS)])
    return load_config(make_config(
        "known", records_dir=str(tmp_path / "known"), n_ctx=N_CTX, train_batch_size=BATCH, mlm_cls_token_id=CLS_ID,
        mlm_mask_prob=0.3, mlm_same_token_prob=0.2, mlm_random_token_prob=0.3, mlm_mask_ignore_ids=IGNORED, **MLM))


def read(*streams):
    """The first n batches of each (input_fn, n), as (inputs, labels) arrays [n * batch, n_ctx]."""
    with tf.Graph().as_default():
        fetches = [tf.data.make_one_shot_iterator(input_fn(None).batch(n)).get_next() for input_fn, n in streams]
        with tf.Session() as session:
            return [tuple(x.reshape(-1, N_CTX) for x in batches) for batches in session.run(fetches)]


def test_masking_statistics_and_exact_labels_on_known_records(known_config):
    batches = 40
    (inputs, labels), = read((input_fn_for(known_config, "train"), batches))
    # Row k is record k mod RECORDS: the CLS id, then the record's first n_ctx - 1 tokens.
    original = np.array([[CLS_ID] + record(k % RECORDS)[:N_CTX - 1] for k in range(batches * BATCH)])
    masked = labels >= 0
    np.testing.assert_array_equal(labels, np.where(masked, original, -1))
    np.testing.assert_array_equal(inputs[~masked], original[~masked])
    maskable = ~np.isin(original, IGNORED + [CLS_ID])
    assert not masked[~maskable].any() and (inputs[:, 0] == CLS_ID).all()
    assert masked[maskable].mean() == pytest.approx(0.3, abs=0.025)
    # Of the masked positions: 20 % keep the token, 30 % get a random id of the data's vocabulary, the
    # rest mlm_mask_id.
    kept, to_mask_id = inputs[masked] == original[masked], inputs[masked] == MASK_ID
    randomized = ~kept & ~to_mask_id
    assert (kept.mean(), randomized.mean(), to_mask_id.mean()) == pytest.approx((0.2, 0.3, 0.5), abs=0.05)
    assert inputs[masked][randomized].max() < 50257 and len(np.unique(inputs[masked][randomized])) > 100


def test_masks_resume_exactly_and_eval_masks_repeat(known_config):
    (whole, whole_labels), (resumed, resumed_labels), first_eval, second_eval = read(
        (input_fn_for(known_config, "train"), 20), (input_fn_for(known_config, "train", 17), 3),
        (input_fn_for(known_config, "eval"), 2), (input_fn_for(known_config, "eval"), 2))
    np.testing.assert_array_equal(resumed, whole[17 * BATCH:])
    np.testing.assert_array_equal(resumed_labels, whole_labels[17 * BATCH:])
    # Each batch draws its own masks: the same records (every RECORDS / BATCH batches) are masked anew.
    assert (whole_labels[:BATCH] != whole_labels[RECORDS:RECORDS + BATCH]).any()
    for a, b in zip(first_eval, second_eval):
        np.testing.assert_array_equal(a, b)


def test_loss_of_the_non_causal_model_covers_masked_positions_only():
    config = make(n_ctx=16, local_attention_radius=4, mlm_training=True, mlm_mask_id=63)
    rng = np.random.RandomState(3)
    ids = rng.randint(0, 64, size=(2, 16))
    labels = np.where(rng.uniform(size=(2, 16)) < 0.3, rng.randint(0, 64, size=(2, 16)), -1)
    with tf.Graph().as_default():
        mesh = mtf.Mesh(mtf.Graph(), "mesh")
        d = Dims.build(config.model, 2)
        tokens, targets = (mtf.import_fully_replicated(mesh, tf.constant(x, tf.int32), mtf.Shape([d.batch, d.sequence]))
                           for x in (ids, labels))
        loss, _, _ = gpt_losses(tokens, targets, Context(d, config.model, train=False, seed=1))
        lowering = mtf.Lowering(mesh.graph, {mesh: placement(config, 1)})
        weights, ours = randomize_and_run(lowering, lowering.export_to_tf_tensor(loss))
    logits = numpy_gpt_neo_logits(weights, dict(BASE, n_ctx=16, local_attention_radius=4, mlm_training=True), ids)
    _, per_token = numpy_token_losses(logits, labels, config.model.z_loss)
    assert ours == pytest.approx(per_token[labels >= 0].mean(), rel=1e-5)
    # Not causal: the first position's logits depend on the last token.
    changed = ids.copy()
    changed[:, -1] = (changed[:, -1] + 1) % 64
    changed_logits = numpy_gpt_neo_logits(weights, dict(BASE, n_ctx=16, local_attention_radius=4, mlm_training=True),
                                          changed)
    assert np.abs(changed_logits[:, 0] - logits[:, 0]).max() > 1e-3


def test_reference_local_mask_not_causal_sees_the_window_on_both_sides():
    expected = np.array([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ], bool)
    np.testing.assert_array_equal(attention_mask("local", 6, 2, causal=False), expected)
    assert attention_mask("global", 6, causal=False).all()


def test_masked_lm_trains_and_evaluates_on_the_sample_corpus(make_config):
    path = make_config("mlm", train_steps=12, iterations=4, eval_steps=2, lr=0.01, train_batch_size=8, **MLM)
    assert run_main("--model", path, "--steps_per_checkpoint", "12") == 0
    model_path = json.load(open(path))["model_path"]
    losses = scalars(model_path, "loss")
    assert sorted(losses) == list(range(1, 13)) and all(map(math.isfinite, losses.values()))
    assert np.mean([losses[s] for s in (10, 11, 12)]) < np.mean([losses[s] for s in (1, 2, 3)]) - 0.3
    result, = [json.loads(line) for line in open(os.path.join(model_path, "eval_results.jsonl"))]
    assert result["global_step"] == 12 and all(math.isfinite(v) for v in result.values() if not isinstance(v, str))
    assert result["perplexity"] == pytest.approx(math.exp(result["cross_entropy"]), rel=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"mlm_training": True}, "`mlm_training` needs `mlm_mask_id`, the id put in place of masked tokens (e.g. one "
                             "the tokenizer does not use, below n_vocab)"),
    (dict(MLM, mlm_mask_id=50304), "`mlm_mask_id` is 50304, but ids must be in [0, n_vocab = 50304)"),
    (dict(MLM, mlm_mask_prob=0), "`mlm_mask_prob` is the share of positions masked and must be in (0, 1], got 0"),
    (dict(MLM, mlm_same_token_prob=0.6, mlm_random_token_prob=0.5),
     "`mlm_same_token_prob` (0.6) and `mlm_random_token_prob` (0.5) are shares of the masked positions: each at "
     "least 0 and together at most 1 (the rest get mlm_mask_id)"),
    (dict(MLM, predict_steps=1), "`predict_steps` samples text during training, which a masked-LM model "
                                 "(`mlm_training`) does not generate; set it to 0"),
], ids=["no-mask-id", "mask-id-too-large", "no-masking", "shares-over-1", "sampling"])
def test_mlm_config_errors(make_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(make_config(**overrides))
    assert str(error.value) == message


def test_masked_lm_does_not_sample(make_config, capsys):
    assert run_main("--model", make_config(**MLM), "--predict") == 2
    assert capsys.readouterr().err == "error: --predict: a masked-LM model (`mlm_training`) does not generate text\n"
