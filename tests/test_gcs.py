"""gs:// end to end against a real GCS emulator on 127.0.0.1 (no mocks): TensorFlow and
google-cloud-storage share the bucket, the converter writes TFRecords there, and main.py trains,
checkpoints, logs and resumes with its data and model directory in the bucket."""
import json
import os
import re

import pytest
from conftest import SAMPLE, run_main, scalars

from meshtf import tf
from tfrecords_tools import create_tfrecords

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
    return create_tfrecords.main(["--input_dir", input_path, "--output_dir", output_dir, "--name", "sample",
                                  "--encoder_path", "gpt2", "--chunk_size", "32", "--files_per", "300"])


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


def gcs_config(make_config, tmp_path, records, model_path, **overrides):
    """A tiny config training on `records`/{train,val}/*.tfrecords into `model_path` (gs:// or not)."""
    path = make_config("gcs", records_dir=records, model_path=model_path, **overrides)
    (tmp_path / "dataset_configs" / "sample.json").write_text(json.dumps({
        "n_vocab": 50257, "tokenizer_path": "gpt2", "eos_id": 50256, "padding_id": 50256,
        "path": records + "/train/*.tfrecords", "eval_path": records + "/val/*.tfrecords"}))
    return path


def events_steps(path, tag="loss"):
    return sorted(event.step for event in tf.train.summary_iterator(path)
                  for value in event.summary.value if value.tag == tag)


def test_training_on_gcs_checkpoints_logs_and_resumes(gcs_bucket, gcs_records, client, make_config, tmp_path):
    model = gcs_bucket + "/model"
    assert run_main("--model", gcs_config(make_config, tmp_path, gcs_records, model)) == 0
    names = object_names(client, "model/")
    for name in ("model/checkpoint", "model/model.ckpt-10.index", "model/graph.pbtxt"):
        assert name in names, names
    assert any(n.startswith("model/model.ckpt-10.data-") for n in names), names
    assert tf.train.latest_checkpoint(model) == model + "/model.ckpt-10"
    first = scalars(model, "loss")
    assert sorted(first) == list(range(1, 11))
    first_events = set(tf.io.gfile.glob(model + "/events.out.tfevents.*"))

    assert run_main("--model", gcs_config(make_config, tmp_path, gcs_records, model, train_steps=20)) == 0
    assert tf.train.latest_checkpoint(model) == model + "/model.ckpt-20"
    new_events = set(tf.io.gfile.glob(model + "/events.out.tfevents.*")) - first_events
    assert new_events
    assert sorted(step for path in new_events for step in events_steps(path)) == list(range(11, 21))
    both = scalars(model, "loss")
    assert sorted(both) == list(range(1, 21))
    assert {s: both[s] for s in first} == first


@pytest.mark.parametrize("where", ["model_path", "dataset"])
def test_missing_bucket_is_a_one_line_error(gcs_bucket, gcs_records, make_config, tmp_path, capsys, where):
    missing = "gs://nosuchbucket/x"
    if where == "model_path":
        config = gcs_config(make_config, tmp_path, gcs_records, missing + "/model")
    else:
        config = gcs_config(make_config, tmp_path, missing, gcs_bucket + "/model_missing_data")
    code = run_main("--model", config)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "nosuchbucket" in lines[0]
