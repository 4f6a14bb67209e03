"""Training over several processes on TensorFlow's gRPC runtime (--cluster, docs/clusters.md), with
real processes on 127.0.0.1: the chief and each worker run main.py. Losses and checkpoints equal one
process on the same mesh; a killed worker stops the chief with exit status 75 and one line, and the
restarted cluster resumes to the uninterrupted losses; workers of a killed chief exit by themselves."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_main, scalar_events, scalars

from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.checkpoints import latest_step
from gpt_neo_mtf.trainer.guards import EXIT_STOPPED

# Small enough for 2 busy cores; one layer keeps graph building short.
SMALL = dict(n_ctx=16, n_embd=16, n_head=4, n_layer=1, attention_types=[[["global"], 1]], iterations=1,
             train_steps=4, lr_decay_end=4, eval_steps=0)
CHIEF_TIMEOUT = 2.0   # chief_timeout_secs of the test clusters: workers exit this long after the chief
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")


def free_ports(n):
    """n distinct TCP ports free on 127.0.0.1 right now (held open together so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_cluster(tmp_path, cpus, **options):
    """A cluster file for tasks on 127.0.0.1 with `cpus` virtual CPU devices each."""
    raw = {"tasks": [{"address": "127.0.0.1:%d" % port, "cpus": c} for port, c in zip(free_ports(len(cpus)), cpus)],
           "shared_model_path": True, "chief_timeout_secs": CHIEF_TIMEOUT, "worker_timeout_secs": 2.0,
           "startup_timeout_secs": 120.0}
    raw.update(options)
    path = tmp_path / ("cluster_%d.json" % len(list(tmp_path.glob("cluster_*.json"))))
    path.write_text(json.dumps(raw))
    return str(path)


class Process:
    """main.py in a process of its own, its output in a file."""

    def __init__(self, log_path, *args):
        self.log_path = str(log_path)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT, env=ENV)

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def wait(self, timeout=300):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running after %d s:\n%s" % (timeout, self.output())) from None

    def end(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def processes(tmp_path):
    """start(*args) -> a started Process; every one still running at the end is killed (by its pid)."""
    started = []

    def start(*args):
        started.append(Process(tmp_path / ("process_%d.log" % len(started)), *args))
        return started[-1]

    yield start
    for p in started:
        p.end()


def start_workers(start, cluster):
    count = len(json.load(open(cluster))["tasks"])
    return [start("--worker", "--cluster", cluster, "--task", str(i)) for i in range(1, count)]


def run_cluster(start, config, cluster, *args):
    """Workers and a chief (all real processes); the chief's exit status and output, after the workers ended."""
    workers = start_workers(start, cluster)
    chief = start("--model", config, "--cluster", cluster, *args)
    status = chief.wait()
    for w in workers:
        assert w.wait(timeout=60) == 0, w.output()
    return status, chief.output()


def model_path(config):
    return json.load(open(config))["model_path"]


def checkpoint_values(path):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(path))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.mark.parametrize("cpus,mesh_shape,layout,batch,evaluates", [
    ([1, 1], "x:2", "batch:x", 4, False),
    ([1, 1, 1], "x:3", "batch:x", 6, False),
    ([2, 2], "x:2,y:2", "batch:x,heads:y", 4, True),
])
def test_a_cluster_trains_and_evaluates_like_one_process(make_config, tmp_path, processes, cpus, mesh_shape, layout,
                                                         batch, evaluates):
    keys = dict(SMALL, mesh_shape=mesh_shape, layout=layout, train_batch_size=batch, eval_batch_size=batch,
                eval_steps=1 if evaluates else 0)
    one = make_config("one", **keys)
    assert run_main("--model", one, "--steps_per_checkpoint", "4") == 0
    many = make_config("many", **keys)
    status, output = run_cluster(processes, many, write_cluster(tmp_path, cpus), "--steps_per_checkpoint", "4")
    assert status == 0, output
    assert "cluster of %d tasks" % len(cpus) in output

    a, b = scalars(model_path(one), "loss"), scalars(model_path(many), "loss")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=0, atol=1e-5)
    if evaluates:
        [eval_one] = [json.loads(line) for line in open(os.path.join(model_path(one), "eval_results.jsonl"))]
        [eval_many] = [json.loads(line) for line in open(os.path.join(model_path(many), "eval_results.jsonl"))]
        assert eval_many["global_step"] == 4 and eval_many["loss"] == pytest.approx(eval_one["loss"], abs=1e-5)

    expected, got = checkpoint_values(model_path(one)), checkpoint_values(model_path(many))
    assert sorted(got) == sorted(expected) and "gpt2/wte" in got
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5, err_msg=name)
    # Each task saved the variables it holds: one shard per task (and the chief's step counter).
    assert len(tf.io.gfile.glob(os.path.join(model_path(many), "model.ckpt-4.data-*"))) == len(cpus) + 1


def test_predict_on_a_cluster_samples_as_one_process(make_config, tmp_path, processes):
    config = make_config("tiny", **dict(SMALL, mesh_shape="x:2", layout="batch:x", predict_max_steps=4))
    assert run_main("--model", config) == 0
    (tmp_path / "prompt.txt").write_text("The cluster")
    sampling = ("--predict", "--prompt", str(tmp_path / "prompt.txt"), "--output")
    assert run_main("--model", config, *sampling, str(tmp_path / "one")) == 0
    status, output = run_cluster(processes, config, write_cluster(tmp_path, [1, 1]), *sampling, str(tmp_path / "many"))
    assert status == 0, output
    one = [json.loads(line) for line in open(tmp_path / "one.jsonl")]
    many = [json.loads(line) for line in open(tmp_path / "many.jsonl")]
    assert many == one and len(one) == 1 and one[0]["tokens"]


def wait_for_step(chief, step):
    """Until the chief's log line reports `step` (it must still be running)."""
    deadline = time.monotonic() + 300
    while not re.search(r"^\S+ \S+ step %d/" % step, chief.output(), re.M):
        assert chief.process.poll() is None and time.monotonic() < deadline, chief.output()
        time.sleep(0.01)


def test_a_killed_worker_stops_the_chief_with_75_and_a_restart_resumes_exactly(make_config, tmp_path, processes):
    steps = dict(SMALL, mesh_shape="x:2", layout="batch:x", train_steps=10, lr_decay_end=10)
    whole = make_config("whole", **steps)
    assert run_main("--model", whole, "--steps_per_checkpoint", "3") == 0
    expected = scalars(model_path(whole), "loss")

    resumed = make_config("resumed", **steps)
    cluster = write_cluster(tmp_path, [1, 1])
    [worker] = start_workers(processes, cluster)
    chief = processes("--model", resumed, "--cluster", cluster, "--steps_per_checkpoint", "3")
    wait_for_step(chief, 5)
    worker.process.send_signal(signal.SIGKILL)
    assert chief.wait() == EXIT_STOPPED
    address = json.load(open(cluster))["tasks"][1]["address"]
    errors = [line for line in chief.output().splitlines() if line.startswith("error:")]
    # The kill lands after step 5, before the save of step 6 can complete (it needs the worker's shard), or
    # rarely just after it.
    kept = latest_step(model_path(resumed))
    assert kept in (3, 6)
    assert errors == ["error: cluster task 1 (%s) is unreachable; the checkpoints in %s are kept (newest: step %d): "
                      "restart that task and run the same command to resume" % (address, model_path(resumed), kept)], \
        chief.output()
    assert "Traceback" not in chief.output()

    status, output = run_cluster(processes, resumed, cluster, "--steps_per_checkpoint", "3")
    assert status == 0, output
    events = scalar_events(model_path(resumed), "loss")
    assert sorted({step for step, _ in events}) == list(range(1, 11))
    np.testing.assert_allclose([loss for _, loss in events], [expected[step] for step, _ in events],
                               rtol=0, atol=1e-6)


def test_a_hung_worker_stops_the_chief_with_75(make_config, tmp_path, processes):
    """A stopped process still accepts TCP connections (the kernel does), but its server does not answer."""
    config = make_config("tiny", **dict(SMALL, mesh_shape="x:2", layout="batch:x", train_steps=1000,
                                        lr_decay_end=1000))
    cluster = write_cluster(tmp_path, [1, 1])
    [worker] = start_workers(processes, cluster)
    chief = processes("--model", config, "--cluster", cluster, "--steps_per_checkpoint", "2")
    wait_for_step(chief, 3)
    worker.process.send_signal(signal.SIGSTOP)
    assert chief.wait(timeout=120) == EXIT_STOPPED
    address = json.load(open(cluster))["tasks"][1]["address"]
    errors = [line for line in chief.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cluster task 1 (%s) is unreachable; " % address), \
        chief.output()


def test_workers_of_a_killed_chief_exit_by_themselves(make_config, tmp_path, processes):
    config = make_config("tiny", **dict(SMALL, mesh_shape="x:3", layout="batch:x", train_batch_size=6,
                                        train_steps=1000, lr_decay_end=1000))
    cluster = write_cluster(tmp_path, [1, 1, 1])
    workers = start_workers(processes, cluster)
    chief = processes("--model", config, "--cluster", cluster)
    wait_for_step(chief, 2)
    chief.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    for w in workers:
        assert w.wait(timeout=60) == 0, w.output()
    # The bound of docs/clusters.md: chief_timeout_secs, plus one probe interval and one connect timeout.
    assert time.monotonic() - killed <= CHIEF_TIMEOUT + 0.5 + 1.0 + 2.0  # + slack for a busy machine
    assert all("has been unreachable for 2 s" in w.output() for w in workers)


def test_an_unreachable_worker_at_start_is_one_line_and_75(make_config, tmp_path, capsys):
    config = make_config("tiny", **dict(SMALL, mesh_shape="x:2", layout="batch:x"))
    cluster = write_cluster(tmp_path, [1, 1], startup_timeout_secs=1)
    address = json.load(open(cluster))["tasks"][1]["address"]
    assert run_main("--model", config, "--cluster", cluster) == EXIT_STOPPED
    assert capsys.readouterr().err == (
        "error: cluster task 1 (%s) did not answer within 1 s (startup_timeout_secs of %s); start it with "
        "`gpt-neo --worker --cluster %s --task 1` and run the same command again\n" % (address, cluster, cluster))


def test_a_worker_whose_chief_never_comes_exits_75(tmp_path, processes):
    cluster = write_cluster(tmp_path, [1, 1], startup_timeout_secs=1)
    [worker] = start_workers(processes, cluster)
    assert worker.wait(timeout=120) == EXIT_STOPPED
    chief = json.load(open(cluster))["tasks"][0]["address"]
    assert [line for line in worker.output().splitlines() if line.startswith("error:")] == [
        "error: the chief (task 0, %s) did not answer within 1 s (startup_timeout_secs of %s); start it with "
        "`gpt-neo --model CONFIG --cluster %s`" % (chief, cluster, cluster)]


def test_a_server_listens_on_every_interface_at_its_port(tmp_path, processes):
    """What docs/clusters.md says of binding: TF 2.15's gRPC server takes a port, not an address."""
    cluster = write_cluster(tmp_path, [1, 1], startup_timeout_secs=60)
    port = json.load(open(cluster))["tasks"][1]["address"].rsplit(":", 1)[1]
    [worker] = start_workers(processes, cluster)
    deadline = time.monotonic() + 120
    while "serving" not in worker.output():
        assert worker.process.poll() is None and time.monotonic() < deadline, worker.output()
        time.sleep(0.05)
    listening = subprocess.run(["ss", "-Htln", "sport = :%s" % port], stdout=subprocess.PIPE, text=True).stdout
    assert listening.split()[3] in ("0.0.0.0:%s" % port, "*:%s" % port, "[::]:%s" % port), listening


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    cluster = write_cluster(tmp_path, [1, 1])
    address = json.load(open(cluster))["tasks"][1]["address"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(address.rsplit(":", 1)[1])))
        taken.listen()
        assert run_main("--worker", "--cluster", cluster, "--task", "1") == 2
    assert capsys.readouterr().err == (
        "error: cannot start the server of task 1 on port %s (%s): Address already in use; is another task or "
        "program using the port?\n" % (address.rsplit(":", 1)[1], address))


def test_a_mesh_that_does_not_match_the_cluster_stops_before_writing(make_config, tmp_path, capsys):
    config = make_config("tiny", **dict(SMALL, mesh_shape="x:2", layout="batch:x"))
    assert run_main("--model", config, "--cluster", write_cluster(tmp_path, [1, 2])) == 2
    assert "`mesh_shape` x:2 has 2 positions but the cluster in " in capsys.readouterr().err
    assert not os.path.exists(model_path(config))
