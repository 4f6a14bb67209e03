"""Shared fixtures: TFRecords made from the shipped sample corpus by our own converter, tiny
configs written to a temp dir, runs of the real `main.py`, and scalars read back from TensorBoard."""
import copy
import json
import os
import signal
import urllib.parse

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Ctrl-C as a terminal delivers it, in this process and (reset to the default on exec) in every process the
# tests start: a suite run as a background job (`make test &`, some CI runners) inherits SIGINT ignored, and
# the Ctrl-C tests of create_tfrecords and training would then see nothing.
signal.signal(signal.SIGINT, signal.default_int_handler)

# gs:// tests use a GCS emulator on 127.0.0.1 (fixture `gcs_bucket`) through TF's modular GCS plugin,
# which reads these variables when TensorFlow is imported: set them before anything imports TF.
# Test-only (production code never reads them); preset them to override.
from gcs_emulator import BUCKET, free_port, small_receive_buffers, start_emulator  # noqa: E402

os.environ.setdefault("TF_USE_MODULAR_FILESYSTEM", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # each pytest-xdist worker runs an emulator of its own
    os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = os.environ["STORAGE_EMULATOR_HOST"] = \
        "http://127.0.0.1:%d" % free_port()
os.environ.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", "http://127.0.0.1:%d" % free_port())
os.environ.setdefault("STORAGE_EMULATOR_HOST", os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"])
os.environ.setdefault("GCS_READ_CACHE_BLOCK_SIZE_MB", "0")
# The test plugin keeps a file's size for 5 s even after this process rewrites it (TF's built-in gs://
# forgets it on rename), so a `checkpoint` file rewritten shorter would read as "File contents are inconsistent".
os.environ.setdefault("GCS_STAT_CACHE_MAX_AGE", "0")
for _name in ("no_proxy", "NO_PROXY"):  # the emulator is never reached through a proxy
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1"]))

from gpt_neo_mtf.inputs.tokenizer import load_tokenizer  # noqa: E402
from gpt_neo_mtf.meshtf import mtf, tf  # noqa: E402
from gpt_neo_mtf.trainer.config import build_config  # noqa: E402
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords  # noqa: E402

SAMPLE = os.path.join(REPO, "data", "sample")

TINY = {
    "n_ctx": 32, "n_embd": 32, "n_head": 4, "n_layer": 2, "n_vocab": 50257,
    "attention_types": [[["global", "local"], 1]], "local_attention_radius": 8,
    "mesh_shape": "x:1", "layout": "batch:x",
    "train_batch_size": 4, "eval_batch_size": 4, "predict_batch_size": 1,
    "train_steps": 10, "eval_steps": 0, "predict_steps": 0, "iterations": 5,
    "lr": 0.002, "warmup_steps": 2, "lr_decay": "cosine", "opt_name": "adam",
    "beta1": 0.9, "beta2": 0.95, "epsilon": 1e-8, "weight_decay": 0.01, "gradient_clipping": 1.0,
    "embed_dropout": 0.0, "attn_dropout": 0.0, "res_dropout": 0.0,
    "scale_by_depth": True, "scale_by_in": False,
    "datasets": [["sample", None, None, None]],
}


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def sample_records(tmp_path_factory, gpt2_tokenizer):
    """records(n_ctx) -> directory with train/ and val/ TFRecords of n_ctx + 1 tokens (made once per n_ctx)."""
    made = {}

    def records(n_ctx):
        if n_ctx not in made:
            root = str(tmp_path_factory.mktemp("records_%d" % n_ctx))
            for split in ("train", "val"):
                create_tfrecords(os.path.join(SAMPLE, split + ".jsonl.zst"), os.path.join(root, split),
                                 "gpt2", name="sample", chunk_size=n_ctx, files_per=300)
            made[n_ctx] = root
        return made[n_ctx]

    return records


@pytest.fixture(scope="session")
def sample_documents(tmp_path_factory):
    """The sample corpus as documents-mode TFRecords (one record per document), train/ and val/."""
    root = tmp_path_factory.mktemp("sample_documents")
    for split in ("train", "val"):
        create_tfrecords(os.path.join(SAMPLE, split + ".jsonl.zst"), str(root / split), "gpt2", name="docs",
                         mode="documents", files_per=40)
    return str(root)


def write_dataset_config(tmp_path, name, root):
    """tmp_path/dataset_configs/<name>.json: GPT-2 tokens in `root`/{train,val}/*.tfrecords (local or gs://)."""
    (tmp_path / "dataset_configs").mkdir(exist_ok=True)
    (tmp_path / "dataset_configs" / (name + ".json")).write_text(json.dumps({
        "n_vocab": 50257, "path": root + "/train/*.tfrecords", "eval_path": root + "/val/*.tfrecords",
        "tokenizer_path": "gpt2", "eos_id": 50256, "padding_id": 50256}))


@pytest.fixture
def make_config(tmp_path, sample_records):
    """make_config(**overrides) -> path of a tiny model config (and its dataset config "sample", on
    `records_dir`) in tmp_path."""

    def make(name="tiny", records_dir=None, **overrides):
        raw = copy.deepcopy(TINY)
        raw["model_path"] = str(tmp_path / (name + "_model"))
        raw.update(overrides)
        write_dataset_config(tmp_path, "sample", records_dir or sample_records(raw["n_ctx"]))
        path = tmp_path / (name + ".json")
        path.write_text(json.dumps(raw))
        return str(path)

    return make


@pytest.fixture(scope="session")
def gcs_bucket():
    """The bucket "gs://testbucket" on a GCS emulator on 127.0.0.1, started on first use, stopped at session end."""
    if not small_receive_buffers():
        pytest.skip("gs:// tests run only through tests/isolated.sh as root (as `make test` in CI does): "
                    "TF's GCS test plugin crashes on large loopback reads otherwise (tests/gcs_emulator.py)")
    endpoint = urllib.parse.urlsplit(os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"])
    if endpoint.hostname != "127.0.0.1" or not endpoint.port:
        pytest.fail("CLOUD_STORAGE_EMULATOR_ENDPOINT must be http://127.0.0.1:PORT, not %s" % endpoint.geturl())
    with start_emulator(endpoint.port):
        yield "gs://" + BUCKET


# A small model for graph-level tests (no data needed).
BASE = dict(n_embd=16, n_head=4, n_layer=2, n_vocab=64, attention_types=[[["local", "global"], 1]],
            model_path="/unused", train_batch_size=2, train_steps=10, lr=1e-3, opt_name="adam",
            iterations=1, datasets=[], no_dataset=True, gradient_clipping=1.0, weight_decay=0.1)


def make(mesh_shape="x:1", layout="", **overrides):
    raw = dict(BASE, mesh_shape=mesh_shape, layout=layout, **overrides)
    return build_config(raw, "test", [])


def placement(config, devices):
    return mtf.placement_mesh_impl.PlacementMeshImpl(
        mtf.convert_to_shape(config.mesh.shape_string), mtf.convert_to_layout_rules(config.mesh.layout_string),
        ["/cpu:%d" % i for i in range(devices)])


def randomize_and_run(lowering, fetches, seed=0, devices=1, weights=None):
    """Give every model variable random values (std 0.2, norm gains around 1), or `weights` by
    name, and run `fetches` in the current graph; returns (weights, results)."""
    rng = np.random.RandomState(seed)
    given = weights
    with tf.Session(config=tf.ConfigProto(device_count={"CPU": devices})) as session:
        session.run(tf.global_variables_initializer())
        weights = {}
        for v in sorted(tf.global_variables(), key=lambda v: v.name):
            name = v.name.split(":")[0]
            if not v.dtype.base_dtype.is_floating or "adam" in name:
                continue
            value = rng.normal(0, 0.2, v.shape.as_list()).astype(np.float32)
            if name.endswith("/g"):
                value += 1.0
            value = given[name] if given is not None else value
            v.load(value.astype(v.dtype.base_dtype.as_numpy_dtype), session)
            weights[name] = value
        session.run(lowering.copy_masters_to_slices())
        return weights, session.run(fetches)



def run_main(*args):
    from gpt_neo_mtf.cli import gpt_neo
    return gpt_neo.main(list(args))


def scalars(model_path, tag):
    """{step: value} of a TensorBoard scalar written under model_path (not its subdirectories)."""
    return dict(scalar_events(model_path, tag))


def scalar_events(model_path, tag):
    """[(step, value)] of every event of a TensorBoard scalar under model_path, repeats included (a
    resumed run writes the steps after its checkpoint again). A file whose writer was killed may
    end in a cut-off record: it is read up to there."""
    values = []
    for path in sorted(tf.io.gfile.glob(os.path.join(model_path, "events.out.tfevents.*"))):
        for event in _readable_events(path):
            for value in event.summary.value:
                if value.tag == tag:
                    number = value.simple_value if value.HasField("simple_value") else \
                        float(tf.make_ndarray(value.tensor))
                    values.append((event.step, number))
    return values


def _readable_events(path):
    events = tf.train.summary_iterator(path)
    while True:
        try:
            yield next(events)
        except (StopIteration, tf.errors.DataLossError):
            return


def checkpoint_logits(config, checkpoint, ids):
    """Our model's logits for `ids` [batch, n_ctx] from a checkpoint, on a one-device mesh."""
    from gpt_neo_mtf.models.context import Context
    from gpt_neo_mtf.models.dims import Dims
    from gpt_neo_mtf.models.gpt import gpt

    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, ids.shape[0])
        tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, d.sequence]))
        logits = gpt(tokens, Context(d, config.model, train=False, seed=config.data.seed))
        impl = mtf.placement_mesh_impl.PlacementMeshImpl(mtf.convert_to_shape("all:1"),
                                                          mtf.convert_to_layout_rules(""), ["/cpu:0"])
        lowering = mtf.Lowering(graph, {mesh: impl})
        out = lowering.export_to_tf_tensor(logits)
        saver = tf.train.Saver(tf.global_variables())
        with tf.Session() as session:
            saver.restore(session, checkpoint)
            session.run(lowering.copy_masters_to_slices())
            return np.asarray(session.run(out))
