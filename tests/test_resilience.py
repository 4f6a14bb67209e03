"""Training survives interruptions and refuses bad state, through the real main.py: kill -9 at any
point (also while a checkpoint is written) and SIGTERM/SIGINT (a checkpoint at the step, exit status 75)
resume to the same losses; incomplete checkpoints are skipped for the previous complete one;
checkpoints of another config are a one-line error; a diverged run stops without saving, and a full
disk ends training with one line and the last complete checkpoint; loss spikes are skipped exactly,
also across a resume."""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, TINY, make, run_main, scalar_events, scalars, write_dataset_config
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from test_model import v3_8_context

from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.checkpoints import CheckpointError, incomplete, latest_checkpoint, latest_step
from gpt_neo_mtf.trainer.config import ConfigError
from gpt_neo_mtf.trainer.guards import EXIT_STOPPED, SignalStop
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.trainer.model_fn import build_model_fn

STEPS = 24
EVERY = 5  # --steps_per_checkpoint


def train_config(make_config, name, **overrides):
    """A tiny config logging every step (`iterations` 1); the lr schedule does not depend on train_steps."""
    return make_config(name, **dict(dict(train_steps=STEPS, lr_decay_end=STEPS, iterations=1), **overrides))


def model_path(config):
    return json.load(open(config))["model_path"]


class Training:
    """main.py training in a process of its own, its output in a file."""

    def __init__(self, config, log_path):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "main.py", "--model", config, "--steps_per_checkpoint", str(EVERY)], cwd=REPO,
                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def step(self):
        """The last step the training log has reached (0 before the first)."""
        return max([int(s) for s in re.findall(r"^\S+ \S+ step (\d+)/\d+ \|", self.output(), re.M)] or [0])

    def signal_when(self, condition, signum):
        """Send `signum` as soon as `condition()` holds (the process must still be running); wait for the
        end and return its exit status."""
        deadline = time.monotonic() + 120
        try:
            while not condition():
                assert self.process.poll() is None, "ended before the signal:\n" + self.output()
                assert time.monotonic() < deadline, "condition not met in 120 s:\n" + self.output()
                time.sleep(0.001)
            self.process.send_signal(signum)
            return self.process.wait(timeout=120)
        finally:
            self.process.kill()
            self.process.wait()


def checkpoint_being_written(path, after):
    """True while the shards of a checkpoint newer than step `after` are in their temporary directory."""
    return any(int(m.group(1)) > after for m in map(re.compile(r"model\.ckpt-(\d+)_temp$").match, os.listdir(path))
               if m)


def assert_losses_repeat(path, expected):
    """Every loss event in `path` (steps written again after a resume included) equals the expected
    loss of its step, and every step has one."""
    events = scalar_events(path, "loss")
    assert sorted({step for step, _ in events}) == sorted(expected)
    np.testing.assert_allclose([loss for _, loss in events], [expected[step] for step, _ in events],
                               rtol=0, atol=1e-6)


def input_overrides(mode, request, tmp_path):
    """Config keys reading the sample corpus in an input mode of tests/test_input_modes.py."""
    if mode == "sequential":  # the chunk records make_config gives, with sequential_input
        return {}
    documents = dict(input_fn="generic_text", records_dir=request.getfixturevalue("sample_documents"))
    if mode == "documents_random":
        return dict(documents, datasets=[["sample", 2, "documents_random", None]])
    assert mode == "mixture"
    write_dataset_config(tmp_path, "chunks", request.getfixturevalue("sample_records")(TINY["n_ctx"]))
    return dict(documents, datasets=[["sample", 2, "documents_fixed", 1], ["chunks", None, "chunks", 1]])


@pytest.mark.parametrize("mode", ["sequential", "documents_random", "mixture"])
def test_kill_9_and_signals_at_random_steps_resume_to_the_same_losses(make_config, tmp_path, request, mode):
    overrides = input_overrides(mode, request, tmp_path)
    reference = train_config(make_config, "reference", **overrides)
    assert run_main("--model", reference, "--steps_per_checkpoint", str(EVERY)) == 0
    expected = scalars(model_path(reference), "loss")
    assert sorted(expected) == list(range(1, STEPS + 1))

    config = train_config(make_config, "interrupted", **overrides)
    path = model_path(config)
    rng = random.Random(0)

    # The whole scenario with the sequential input; the generic_text inputs (whose resume skips into
    # shuffle blocks, document crops and mixing choices) get one kill -9 after a checkpoint.
    whole = mode == "sequential"
    at = rng.randrange(2, 9) if whole else rng.randrange(EVERY + 1, 2 * EVERY)
    run = Training(config, tmp_path / "kill_at_step.log")
    assert run.signal_when(lambda: run.step() >= at, signal.SIGKILL) == -signal.SIGKILL
    assert latest_step(path) <= run.step()
    if whole:
        interrupt_in_a_save_and_with_sigterm(config, path, rng, tmp_path)
    else:
        assert latest_step(path) >= EVERY

    assert run_main("--model", config, "--steps_per_checkpoint", str(EVERY)) == 0
    assert latest_step(path) == STEPS
    assert_losses_repeat(path, expected)


def interrupt_in_a_save_and_with_sigterm(config, path, rng, tmp_path):
    """Resume, kill -9 while the next checkpoint is written; resume, SIGTERM at a random step."""
    start = latest_step(path)
    run = Training(config, tmp_path / "kill_in_save.log")
    assert run.signal_when(lambda: checkpoint_being_written(path, start), signal.SIGKILL) == -signal.SIGKILL
    assert checkpoint_being_written(path, start)  # killed before the shards were merged

    at = rng.randrange(latest_step(path) + 2, latest_step(path) + 7)
    run = Training(config, tmp_path / "sigterm.log")
    assert run.signal_when(lambda: run.step() >= at, signal.SIGTERM) == EXIT_STOPPED
    stopped = int(re.search(r"SIGTERM: stopped with a checkpoint at step (\d+) in ", run.output()).group(1))
    # The checkpoint is at the step the run reached, whether or not a multiple of EVERY.
    assert stopped == run.step() >= at and latest_step(path) == stopped


def test_sigint_and_sigterm_set_a_flag_once_then_act_as_before():
    """SIGINT takes the path SIGTERM takes in the test above: a flag the training hook reads."""
    # Python's own Ctrl-C handler, whatever this process inherited (a background job ignores SIGINT).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler), signal.getsignal(signal.SIGTERM)
    try:
        with SignalStop() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == "SIGINT"
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C interrupts at once
                os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == "SIGINT"  # the first signal is the one reported
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) == inherited[1]
    finally:
        signal.signal(signal.SIGINT, inherited[0])


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_truncated_checkpoint_is_skipped_for_the_previous_complete_one(make_config, capsys, request, where):
    # Narrow (the emulator takes seconds per 20 MB checkpoint).
    overrides = dict(n_embd=8, n_head=2)
    if where == "gs":
        overrides["model_path"] = request.getfixturevalue("gcs_bucket") + "/truncated"
    first = train_config(make_config, "truncated", train_steps=10, **overrides)
    assert run_main("--model", first, "--steps_per_checkpoint", str(EVERY)) == 0
    path = model_path(first)
    expected = scalars(path, "loss")
    [shard] = [p for p in tf.io.gfile.glob(path + "/model.ckpt-10.data-*") if tf.io.gfile.stat(p).length > 8]
    content = tf.io.gfile.GFile(shard, "rb").read()
    with tf.io.gfile.GFile(shard, "wb") as f:
        f.write(content[:len(content) // 2])

    capsys.readouterr()
    resumed = train_config(make_config, "truncated", train_steps=12, **overrides)
    assert run_main("--model", resumed, "--steps_per_checkpoint", str(EVERY)) == 0
    out = capsys.readouterr().out
    assert re.search(r"skipping incomplete checkpoint model\.ckpt-10: its data files hold \d+ bytes where its "
                     r"index needs \d+; using model\.ckpt-5 instead", out), out
    # The estimator restored step 5: steps 6-10 ran again, with the same losses, and the saver went on.
    events = scalar_events(path, "loss")
    assert sorted(step for step, _ in events) == list(range(1, 6)) + sorted(2 * list(range(6, 11))) + [11, 12]
    np.testing.assert_allclose([loss for step, loss in events if step <= 10],
                               [expected[step] for step, _ in events if step <= 10], rtol=0, atol=1e-6)
    assert latest_step(path) == 12


def test_incomplete_checkpoints_are_detected(make_config, tmp_path):
    config = train_config(make_config, "pieces", train_steps=1)
    assert run_main("--model", config) == 0
    path = model_path(config)
    prefix = latest_checkpoint(path)
    assert prefix == path + "/model.ckpt-1" and incomplete(prefix) is None
    files = sorted(tf.io.gfile.glob(prefix + ".*"))
    data = max((p for p in files if ".data-" in p), key=lambda p: os.path.getsize(p))

    def broken(name, damage):
        copy = str(tmp_path / name)
        os.makedirs(copy)
        for p in files:
            tf.io.gfile.copy(p, os.path.join(copy, os.path.basename(p)))
        damage(os.path.join(copy, os.path.basename(prefix)))
        return incomplete(os.path.join(copy, os.path.basename(prefix)))

    def truncate(suffix, size):
        return lambda p: os.truncate(p + suffix, size)

    def append(suffix):
        def damage(p):
            with open(p + suffix, "ab") as f:
                f.write(b"x")
        return damage

    data_suffix = data[len(prefix):]
    needed = 4 * 3 * 1634528 + 8  # the parameters and their two Adam slots in float32, the int64 global_step
    assert broken("short", truncate(data_suffix, 1000)) == \
        "its data files hold 1008 bytes where its index needs %d" % needed
    assert broken("long", append(data_suffix)) == \
        "its data files hold %d bytes where its index needs %d" % (needed + 1, needed)
    assert re.fullmatch(r"its data files are incomplete \(found model\.ckpt-1\.data-0000\d-of-00002\)",
                        broken("missing_shard", lambda p: os.remove(p + data_suffix)))
    assert broken("no_index", lambda p: os.remove(p + ".index")).startswith("its index ")
    assert broken("short_index", truncate(".index", 100)).startswith("its index ")

    # Every checkpoint listed broken: an error, not training from scratch over them.
    for p in tf.io.gfile.glob(path + "/model.ckpt-*.index"):
        os.truncate(p, 10)
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*model\.ckpt-1: its index .*"
                                              r"model\.ckpt-0: its index "):
        latest_checkpoint(path)


def test_a_checkpoint_of_another_config_is_a_one_line_error(make_config, capsys):
    small = train_config(make_config, "small", train_steps=1)
    assert run_main("--model", small) == 0
    path = model_path(small)
    bigger = make_config("bigger", model_path=path, n_embd=64, n_layer=4, attention_types=[[["global", "local"], 2]])
    capsys.readouterr()
    assert run_main("--model", bigger) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: %s/model.ckpt-1 was written by a different model config (" % path)
    assert re.search(r"\(90 variable\(s\) differ in shape: gpt2/wte is \[50257, 32\] there and \[50257, 64\] here, "
                     r".* and 87 more; it lacks 26 of the model's weights: gpt2/h2/.* and 23 more\); use a `model_path` "
                     r"of its own for this config$", line), line
    assert latest_step(path) == 1


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # lr 1e39 in float32
@pytest.mark.parametrize("lr, message, newest", [
    # Step 2 makes the weights huge but finite (saved); the loss of step 3 overflows.
    (1e30, r"the loss is nan at step 3; ", 2),
    # An infinite rate (1e39 in float32) makes step 1's update NaN (inf * 0) while its loss is fine.
    (1e39, r"30 variable\(s\) hold NaN or Inf at step 1 \(gpt2/wte, gpt2/wpe, gpt2/h0/norm_1/g and 27 more\); ", 0)])
def test_divergence_stops_without_saving(make_config, capsys, lr, message, newest):
    config = train_config(make_config, "diverged", lr=lr, train_steps=10)
    assert run_main("--model", config, "--steps_per_checkpoint", "1") == 1
    path = model_path(config)
    assert re.fullmatch("error: " + message + re.escape(
        "stopped without saving, so model.ckpt-%d stays the newest checkpoint in %s (resume from it with a lower "
        "`lr`, or other data)" % (newest, path)), capsys.readouterr().err.splitlines()[-1])
    assert latest_step(path) == newest
    reader = tf.train.load_checkpoint(latest_checkpoint(path))
    assert all(np.isfinite(reader.get_tensor(name)).all() for name in reader.get_variable_to_shape_map())


# In a mount namespace of its own: model_path on a 58 MiB tmpfs, which holds the tiny model's graph
# files (~7 MB) and two checkpoints (~21 MB each) but not a third; training runs three times, the
# third after the tmpfs has grown (space freed), and each run's model_path is copied out for the test.
FULL_DISK = """
mount -t tmpfs -o size=58m tmpfs "$1" || exit 99
for run in 1 2 3; do
    if [ $run = 3 ]; then mount -o remount,size=200m "$1"; fi
    "$2" main.py --model "$3" --steps_per_checkpoint 5 >"$4/out$run" 2>"$4/err$run"
    echo $? >"$4/status$run"
    cp -a "$1/model" "$4/model$run"
done
"""


def test_a_full_disk_ends_training_with_one_line_keeping_the_last_checkpoint(make_config, tmp_path):
    """A real full disk (a tmpfs; it needs root, as in CI): the save at step 10 fails, and the run ends
    with one line and no trace of the failed save; run again on the full disk (a resumed run first
    saves the step it restored, 5, again), the same; once there is space, training resumes from step 5
    with the same losses."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    config = train_config(make_config, "full", train_steps=12, model_path=str(disk / "model"))
    try:
        mount = subprocess.run(["unshare", "-m", "sh", "-c", FULL_DISK, "sh", str(disk), sys.executable, config,
                                str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        pytest.skip("`unshare` (util-linux) is not installed: the full disk is a tmpfs in a mount namespace")
    if not (out / "status1").exists():
        pytest.skip("cannot mount a tmpfs in a mount namespace (`unshare -m` and `mount` need root, as "
                    "tests/isolated.sh runs in CI): " + mount.stderr.strip())

    path = str(disk / "model")
    for run, step in ((1, 10), (2, 5)):
        err = (out / ("err%d" % run)).read_text()
        assert (out / ("status%d" % run)).read_text() == "2\n", err
        assert [line for line in err.splitlines() if "error: " in line] == [
            "error: the disk of `model_path` %s is full (No space left on device): saving the checkpoint of step %d "
            "failed; the newest complete checkpoint, model.ckpt-5, is kept: free space and run the same command "
            "again to resume from it" % (path, step)], err
        assert "Traceback" not in err
        copy = str(out / ("model%d" % run))
        assert latest_checkpoint(copy) == copy + "/model.ckpt-5" and incomplete(copy + "/model.ckpt-5") is None
        assert [n for n in os.listdir(copy) if "_temp" in n or n.startswith("model.ckpt-10")] == []

    assert (out / "status3").read_text() == "0\n", (out / "err3").read_text()
    assert re.findall(r"^\S+ \S+ step (\d+)/12 \|", (out / "out3").read_text(), re.M) == \
        [str(s) for s in range(6, 13)]
    copy = str(out / "model3")
    assert latest_step(copy) == 12
    # Steps 6-10 ran twice: before the disk filled up, and after the resume from step 5.
    events = scalar_events(copy, "loss")
    assert sorted(step for step, _ in events) == list(range(1, 6)) + sorted(2 * list(range(6, 11))) + [11, 12]
    first = {}
    for step, loss in events:
        first.setdefault(step, loss)
    assert_losses_repeat(copy, first)


def test_loss_spikes_are_skipped_counted_and_resumed_exactly(make_config, capsys):
    # A window of one step and a factor just above 1: every rise of the loss is a "spike".
    keys = dict(n_embd=8, n_head=2, skip_loss_spike_factor=1.0001, skip_loss_spike_window=1, lr_decay_end=12)
    whole = train_config(make_config, "spiky", train_steps=12, keep_checkpoint_max=20, **keys)
    assert run_main("--model", whole, "--steps_per_checkpoint", "1") == 0
    path = model_path(whole)
    losses = scalars(path, "loss")
    # float32, as the graph compares: the window holds every step's loss, skipped or not.
    spikes = [s for s in range(2, 13) if np.float32(losses[s]) > np.float32(1.0001) * np.float32(losses[s - 1])]
    assert 2 <= len(spikes) < 11
    assert re.findall(r"step (\d+): skipped the update of 1 loss spike", capsys.readouterr().out) \
        == [str(s) for s in spikes]
    assert scalars(path, "skipped_updates") == {s: i + 1 for i, s in enumerate(spikes)}
    # A skipped step leaves every weight and slot exactly as it was; an applied one does not.
    readers = [tf.train.load_checkpoint("%s/model.ckpt-%d" % (path, s)) for s in range(13)]
    names = [n for n in readers[0].get_variable_to_shape_map() if n != "global_step"]
    for s in range(2, 13):
        unchanged = all(np.array_equal(readers[s - 1].get_tensor(n), readers[s].get_tensor(n)) for n in names)
        assert unchanged == (s in spikes), s

    # Stopped just before a spike, the resumed run takes its window from loss_spikes.json: with an
    # empty one it would apply that step.
    halves = train_config(make_config, "spiky_halves", train_steps=spikes[-1] - 1, **keys)
    assert run_main("--model", halves, "--steps_per_checkpoint", str(EVERY)) == 0
    halves = train_config(make_config, "spiky_halves", train_steps=12, **keys)
    assert run_main("--model", halves, "--steps_per_checkpoint", str(EVERY)) == 0
    resumed = scalars(model_path(halves), "loss")
    np.testing.assert_allclose([resumed[s] for s in range(1, 13)], [losses[s] for s in range(1, 13)], rtol=0, atol=1e-6)
    assert scalars(model_path(halves), "skipped_updates") == scalars(path, "skipped_updates")


@pytest.mark.parametrize("keys, message", [
    ({"keep_checkpoint_max": 0}, r"`keep_checkpoint_max` must be at least 1, got 0"),
    ({"keep_checkpoint_every_n_hours": -1}, r"`keep_checkpoint_every_n_hours` must not be negative"),
    ({"skip_loss_spike_factor": 0.9}, r"`skip_loss_spike_factor` must be 0 \(off\) or above 1.* got 0.9 with adam"),
    ({"skip_loss_spike_factor": 2, "opt_name": "adafactor", "weight_decay": 0}, r"Adafactor cannot skip"),
    ({"skip_loss_spike_window": 0}, r"`skip_loss_spike_window` must be at least 1, got 0")])
def test_bad_checkpoint_and_spike_keys_are_config_errors(keys, message):
    with pytest.raises(ConfigError, match=message):
        make(n_ctx=8, **keys)


def test_spike_skipping_builds_on_the_tpu_simd_mesh_outside_the_checkpoint(tmp_path):
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4, train_batch_size=8,
                  model_path=str(tmp_path), skip_loss_spike_factor=2.0, skip_loss_spike_window=10)
    model_fn = build_model_fn(config, Hardware("tpu", tpu_name="my-tpu"), steps_per_checkpoint=100)
    with tf.Graph().as_default():
        features = tf.zeros([8, 16], tf.int32)
        spec = model_fn(features, features, ModeKeys.TRAIN, {"context": v3_8_context()})
        assert spec.train_op is not None
        window = {"loss_spikes/losses", "loss_spikes/seen", "loss_spikes/skipped"}
        assert window <= {v.op.name for v in tf.local_variables()}
        assert not any(v.op.name.startswith("loss_spikes") for v in tf.global_variables())
