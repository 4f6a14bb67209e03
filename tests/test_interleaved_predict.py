"""predict_steps > 0: main.py samples after every steps_per_checkpoint steps of training, writes
<model_path>/predictions_<step>.txt/.jsonl, and trains exactly as it does without sampling."""
import json
import os

from conftest import run_main, scalars

PROMPTS = ["The meaning of life is", "def main():\n   "]


def test_samples_at_every_checkpoint_and_training_as_without_them(make_config, tmp_path):
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    plain = make_config("plain")
    sampling = make_config("sampling", predict_steps=1, predict_max_steps=4)
    assert run_main("--model", plain, "--steps_per_checkpoint", "5") == 0
    assert run_main("--model", sampling, "--steps_per_checkpoint", "5", "--prompt", str(prompt_file)) == 0

    model_path = json.load(open(sampling))["model_path"]
    assert sorted(n for n in os.listdir(model_path) if n.startswith("predictions_")) == [
        "predictions_10.jsonl", "predictions_10.txt", "predictions_5.jsonl", "predictions_5.txt"]
    for step in (5, 10):
        samples = [json.loads(line) for line in open(os.path.join(model_path, "predictions_%d.jsonl" % step))]
        assert [s["prompt"] for s in samples] == PROMPTS
        assert all(1 <= len(s["tokens"]) <= 4 and s["text"].strip() for s in samples)
        text = open(os.path.join(model_path, "predictions_%d.txt" % step)).read()
        assert "SAMPLE 1" in text and all(p + s["text"] in text for p, s in zip(PROMPTS, samples))

    plain_losses = scalars(json.load(open(plain))["model_path"], "loss")
    assert sorted(plain_losses) == list(range(1, 11))
    assert scalars(model_path, "loss") == plain_losses
