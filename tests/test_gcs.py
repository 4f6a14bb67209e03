"""gs:// end to end against a real GCS emulator on 127.0.0.1 (no mocks): TensorFlow and
google-cloud-storage share the bucket, the converter writes TFRecords there, and main.py trains,
checkpoints and logs with its data and model directory in the bucket, is killed, resumes and samples."""
import json
import os
import random
import re
import signal

import pytest
from conftest import SAMPLE, run_main, scalars
from test_resilience import EVERY, Training, assert_losses_repeat, model_path, train_config

from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.cli import create_tfrecords
from gpt_neo_mtf.trainer.checkpoints import latest_step

pytestmark = pytest.mark.filterwarnings("ignore:You are using a Python version:FutureWarning")  # google-api-core

RECORD_NAME = re.compile(r"^sample_(\d+)_(\d+)\.tfrecords$")


@pytest.fixture(scope="module")
def client(gcs_bucket):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    # STORAGE_EMULATOR_HOST (set by conftest) points the client at the emulator.
    return storage.Client(project="test", credentials=AnonymousCredentials())


def object_names(client, prefix):
    return sorted(blob.name for blob in client.list_blobs("testbucket", prefix=prefix))


def convert(input_path, output_dir):
    return create_tfrecords.main(["--input", input_path, "--output_dir", output_dir, "--name", "sample",
                                  "--tokenizer", "gpt2", "--chunk_size", "32", "--files_per", "300"])


@pytest.fixture(scope="module")
def gcs_records(gcs_bucket):
    """gs://testbucket/records/{train,val}/ made by the converter's CLI from the shipped sample corpus."""
    root = gcs_bucket + "/records"
    for split in ("train", "val"):
        assert convert(os.path.join(SAMPLE, split + ".jsonl.zst"), root + "/" + split) == 0
    return root


def test_tensorflow_and_the_storage_client_share_the_bucket(gcs_bucket, client):
    bucket = client.bucket("testbucket")
    with tf.io.gfile.GFile(gcs_bucket + "/share/from_tf.txt", "w") as f:
        f.write("written by tf.io.gfile")
    assert bucket.blob("share/from_tf.txt").download_as_bytes() == b"written by tf.io.gfile"

    bucket.blob("share/sub/from_client.bin").upload_from_string(b"\x00\x01 written by the client")
    with tf.io.gfile.GFile(gcs_bucket + "/share/sub/from_client.bin", "rb") as f:
        assert f.read() == b"\x00\x01 written by the client"
    assert tf.io.gfile.exists(gcs_bucket + "/share/sub/from_client.bin")
    assert not tf.io.gfile.exists(gcs_bucket + "/share/sub/missing.bin")
    assert tf.io.gfile.isdir(gcs_bucket + "/share/sub")
    assert sorted(tf.io.gfile.listdir(gcs_bucket + "/share")) == ["from_tf.txt", "sub/"]
    # Wildcards only in the last component: the test plugin (tensorflow-io-gcs-filesystem 0.34.0) finds
    # nothing for "share/*/*.bin" (TF's built-in gs://, used outside the tests, has its own glob).
    assert tf.io.gfile.glob(gcs_bucket + "/share/sub/*.bin") == [gcs_bucket + "/share/sub/from_client.bin"]

    tf.io.gfile.makedirs(gcs_bucket + "/share/made")  # an empty upload, the emulator's bug fixed by the wrapper
    tf.io.gfile.rename(gcs_bucket + "/share/from_tf.txt", gcs_bucket + "/share/made/renamed.txt")
    assert object_names(client, "share/") == ["share/made/", "share/made/renamed.txt", "share/sub/from_client.bin"]
    tf.io.gfile.remove(gcs_bucket + "/share/sub/from_client.bin")
    assert object_names(client, "share/sub/") == []


def test_converter_writes_complete_tfrecords_to_gcs(gcs_records, client, tmp_path):
    for split in ("train", "val"):
        prefix = "records/%s/" % split
        objects = object_names(client, prefix)
        names = [name[len(prefix):] for name in objects if name != prefix]  # "records/train/" is makedirs'
        records = [name for name in names if RECORD_NAME.match(name)]
        # Final names only: no *.incomplete (or other temporary) object is left behind.
        assert records and set(names) - set(records) <= {"sample.manifest.json"}, objects

        # The same names as the same conversion to local disk, and the same TFRecord bytes.
        local = str(tmp_path / split)
        assert convert(os.path.join(SAMPLE, split + ".jsonl.zst"), local) == 0
        assert sorted(os.listdir(local)) == names
        for name in records:
            with open(os.path.join(local, name), "rb") as f:
                assert client.bucket("testbucket").blob(prefix + name).download_as_bytes() == f.read(), name

        # TensorFlow reads them back from gs://: the counts in the names, records of n_ctx + 1 tokens.
        for name in records:
            count = 0
            for raw in tf.compat.v1.io.tf_record_iterator("%s/%s/%s" % (gcs_records, split, name)):
                example = tf.train.Example.FromString(raw)
                assert len(example.features.feature["text"].int64_list.value) == 33
                count += 1
            assert count == int(RECORD_NAME.match(name).group(2))


def events_steps(path, tag="loss"):
    return sorted(event.step for event in tf.train.summary_iterator(path)
                  for value in event.summary.value if value.tag == tag)


def test_training_on_gcs_is_killed_resumes_and_samples(gcs_bucket, gcs_records, client, make_config, tmp_path):
    """Data, checkpoints and TensorBoard events on gs://: a run killed with SIGKILL resumes from its gs://
    checkpoint to the losses of an uninterrupted run, and --predict samples from the result."""
    steps = 12
    # Narrow (the emulator takes seconds per 20 MB checkpoint); an uninterrupted run on the same gs://
    # records into a local model_path gives the expected losses.
    narrow = dict(n_embd=8, n_head=2, train_steps=steps)
    uninterrupted = train_config(make_config, "uninterrupted", records_dir=gcs_records, **narrow)
    assert run_main("--model", uninterrupted, "--steps_per_checkpoint", str(EVERY)) == 0
    expected = scalars(model_path(uninterrupted), "loss")
    assert sorted(expected) == list(range(1, steps + 1))

    model = gcs_bucket + "/model"
    config = train_config(make_config, "gcs", records_dir=gcs_records, model_path=model, **narrow)
    run = Training(config, tmp_path / "killed.log")
    at = random.Random(0).randrange(EVERY + 1, 2 * EVERY)
    assert run.signal_when(lambda: run.step() >= at, signal.SIGKILL) == -signal.SIGKILL
    assert latest_step(model) == EVERY
    killed_events = set(tf.io.gfile.glob(model + "/events.out.tfevents.*"))

    assert run_main("--model", config, "--steps_per_checkpoint", str(EVERY)) == 0
    names = object_names(client, "model/")
    for name in ("model/checkpoint", "model/model.ckpt-%d.index" % steps, "model/config.json"):
        assert name in names, names
    assert any(n.startswith("model/model.ckpt-%d.data-" % steps) for n in names), names
    assert tf.train.latest_checkpoint(model) == model + "/model.ckpt-%d" % steps
    resumed_events = set(tf.io.gfile.glob(model + "/events.out.tfevents.*")) - killed_events
    assert sorted(step for path in resumed_events for step in events_steps(path)) == list(range(EVERY + 1, steps + 1))
    assert_losses_repeat(model, expected)

    prompt = gcs_bucket + "/prompt.txt"
    with tf.io.gfile.GFile(prompt, "w") as f:
        f.write("The Python standard library")
    assert run_main("--model", config, "--predict", "--prompt", prompt, "--max_new_tokens", "8",
                    "--num_samples", "2") == 0
    output = "%s/predictions_%d" % (model, steps)
    samples = [json.loads(line) for line in tf.io.gfile.GFile(output + ".jsonl").read().splitlines()]
    assert len(samples) == 2 and all(sample["tokens"] and sample["text"] for sample in samples), samples
    text = tf.io.gfile.GFile(output + ".txt").read()
    assert all(sample["prompt"] + sample["text"] in text for sample in samples)


@pytest.mark.parametrize("where", ["model_path", "dataset"])
def test_missing_bucket_is_a_one_line_error(gcs_bucket, gcs_records, make_config, capsys, where):
    missing = "gs://nosuchbucket/x"
    if where == "model_path":
        config = make_config(records_dir=gcs_records, model_path=missing + "/model")
    else:
        config = make_config(records_dir=missing, model_path=gcs_bucket + "/model_missing_data")
    code = run_main("--model", config)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "nosuchbucket" in lines[0]
