"""Learning-rate schedule formulas (spec 7.2) and the optimizers' slot variables."""
import json
import math

import pytest
from conftest import run_main, scalars

from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import TrainConfig
from gpt_neo_mtf.trainer.optimizer import AdamWeightDecay, learning_rate


def schedule(step, **keys):
    config = TrainConfig(train_batch_size=1, train_steps=100, lr=1.0, opt_name="adam", iterations=1, **keys)
    with tf.Graph().as_default(), tf.Session() as session:
        return session.run(learning_rate(config, tf.constant(step, tf.int64)))


@pytest.mark.parametrize("step", [0, 10, 50, 100, 150])
def test_cosine_and_linear_decay_to_ten_percent(step):
    s = min(step, 100) / 100
    assert schedule(step, lr_decay="cosine") == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * s)) + 0.1)
    assert schedule(step, lr_decay="linear") == pytest.approx(0.9 * (1 - s) + 0.1)
    assert schedule(step) == 1.0


def test_warmup_multiplies_the_decayed_rate_and_decay_end_is_honoured():
    decayed = 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 50)) + 0.1
    assert schedule(5, lr_decay="cosine", lr_decay_end=50, warmup_steps=10) == pytest.approx(decayed * 0.5)
    assert schedule(0, lr_decay="cosine", warmup_steps=10) == 0.0
    assert schedule(60, lr_decay="cosine", lr_decay_end=50) == pytest.approx(0.1)


def test_weight_decay_skips_norms_and_biases_only():
    adam = AdamWeightDecay(None, 0.1, 0.9, 0.95, 1e-8)
    assert not adam.decays("gpt2/h0/norm_1/g")
    assert not adam.decays("gpt2/h0/attn/compute_output_bias/o_b")
    assert not adam.decays("gpt2/h0/mlp/conv1d_main/c_fc/bias")
    # As the original: ln_f, embeddings and all kernels are decayed.
    for name in ("gpt2/ln_f/g", "gpt2/wte", "gpt2/wpe", "gpt2/h0/attn/q", "gpt2/h0/mlp/conv1d_main/c_proj/kernel"):
        assert adam.decays(name)
    assert not AdamWeightDecay(None, 0.0, 0.9, 0.95, 1e-8).decays("gpt2/wte")


def test_adafactor_trains_with_factored_slots(make_config):
    # Adafactor scales updates by the weights' RMS, so it wants a larger rate than Adam.
    path = make_config("adafactor", opt_name="adafactor", weight_decay=0, train_steps=10, lr=0.05)
    assert run_main("--model", path) == 0
    model_path = json.load(open(path))["model_path"]
    names = dict(tf.train.list_variables(tf.train.latest_checkpoint(model_path)))
    # wte [50257, 32]: its two largest dims are not both >= 128, so its second moment is not factored.
    assert "gpt2/wte_slot_v" in names and "gpt2/h0/mlp/conv1d_main/c_fc/kernel_slot_v" in names
    assert not any("adam" in n for n in names)
    losses = scalars(model_path, "loss")
    assert sorted(losses) == list(range(1, 11)) and losses[10] < losses[1]
    assert sorted(scalars(model_path, "lr")) == list(range(1, 11))
    assert sorted(scalars(model_path, "tokens_per_sec")) == [5, 10]
