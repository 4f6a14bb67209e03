"""Training across machines on TensorFlow's distributed runtime (docs/clusters.md).

A cluster file lists the tasks (processes) of one job, "worker": task 0 is the chief (it runs the
input, the client graph and the estimator), the others only serve their devices. The placement mesh
runs over every listed device, task by task in file order. Each process runs a gRPC server
(tf.compat.v1.train.Server); the chief's session is a client of its own server, which places ops on
the remote tasks.

Liveness is watched from outside TensorFlow, by HTTP/2 greetings to the tasks' servers: the runtime
itself retries a lost worker forever (MonitoredSession recreates its session on UnavailableError), so
the chief stops with exit status 75 (guards.EXIT_STOPPED) once a worker has been unreachable for
`worker_timeout_secs`, and a worker exits once the chief has been unreachable for `chief_timeout_secs`.
"""
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Tuple

from .. import storage
from ..errors import ConfigError, did_you_mean
from ..meshtf import tf
from .checkpoints import latest_step
from .guards import EXIT_STOPPED

log = logging.getLogger("gptneo")

JOB = "worker"
# How often the watchers connect to the watched addresses.
PROBE_INTERVAL_SECS = 0.5


class ClusterUnavailable(Exception):
    """A task of the cluster cannot be reached; the message names it. Resumable: exit status 75."""


@dataclass(frozen=True)
class Task:
    host: str
    port: int
    cpus: int = 1                  # virtual CPU devices this task gives the mesh (when `gpus` is empty)
    gpus: Tuple[int, ...] = ()     # physical GPU ids this task gives the mesh

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    def devices(self, index):
        """This task's mesh devices. With `gpus` the server sees only those GPUs, renumbered from 0."""
        if self.gpus:
            return tuple("/job:%s/task:%d/device:GPU:%d" % (JOB, index, i) for i in range(len(self.gpus)))
        return tuple("/job:%s/task:%d/device:CPU:%d" % (JOB, index, i) for i in range(self.cpus))


@dataclass(frozen=True)
class Cluster:
    tasks: Tuple[Task, ...]
    shared_model_path: bool = False   # a local model_path is on storage every host sees (NFS, ...)
    startup_timeout_secs: float = 120.0  # chief: wait this long for every worker; worker: for the chief
    worker_timeout_secs: float = 10.0    # chief: a worker unreachable this long stops the run (75)
    chief_timeout_secs: float = 30.0     # worker: the chief unreachable this long ends the worker
    path: str = ""                       # the file it was read from (for messages)

    @property
    def kind(self):
        return "gpu" if self.tasks[0].gpus else "cpu"

    @property
    def devices(self):
        """Every mesh device, in mesh order."""
        return tuple(d for i, task in enumerate(self.tasks) for d in task.devices(i))

    @property
    def host_devices(self):
        """One CPU device per task, where the task's share of the checkpointed (master) variables lives."""
        return tuple("/job:%s/task:%d/device:CPU:0" % (JOB, i) for i in range(len(self.tasks)))

    def check_mesh(self, mesh_config):
        """One mesh position per device of the cluster."""
        if len(self.devices) != mesh_config.size:
            raise ConfigError("`mesh_shape` %s has %d positions but the cluster in %s has %d device(s) (%s); give "
                              "one device per mesh position or change mesh_shape"
                              % (mesh_config.shape_string, mesh_config.size, self.path, len(self.devices),
                                 " + ".join(str(len(t.devices(i))) for i, t in enumerate(self.tasks))))

    def cluster_spec(self):
        return tf.train.ClusterSpec({JOB: [task.address for task in self.tasks]})

    def server_config(self, index):
        task = self.tasks[index]
        config = tf.ConfigProto(allow_soft_placement=True)
        if task.gpus:
            # TensorFlow names the visible GPUs 0..n-1 in this order.
            config.gpu_options.visible_device_list = ",".join(str(g) for g in task.gpus)
        else:
            config.device_count["CPU"] = task.cpus
        return config

    def session_config(self):
        """The chief's session, on its own server, which knows the cluster (a cluster_def here would name the
        server's own task again, which TF refuses). No operation_timeout_in_ms: it did not end a step blocked
        on a stopped worker (tried for 2 minutes); the liveness watch (Watch) bounds such hangs instead."""
        # On CPUs every op has a kernel, so a device string that names no device is an error
        # rather than a silent fallback to the chief; GPUs lack kernels for some ops.
        return tf.ConfigProto(allow_soft_placement=self.kind == "gpu")

    def start_server(self, index):
        """This process's gRPC server for task `index`; it serves until the process ends."""
        task = self.tasks[index]
        # Checked first: for a port in use, gRPC's C core prints a page of JSON above TensorFlow's error.
        in_use = port_in_use(task.port)
        if in_use:
            raise ConfigError("cannot start the server of task %d on port %d (%s): %s; is another task or program "
                              "using the port?" % (index, task.port, task.address, in_use))
        try:
            return tf.distribute.Server(self.cluster_spec(), job_name=JOB, task_index=index,
                                        config=self.server_config(index), start=True)
        except (tf.errors.UnknownError, tf.errors.InvalidArgumentError, tf.errors.UnavailableError) as e:
            text = getattr(e, "message", str(e)).strip().splitlines()[0]
            raise ConfigError("cannot start the server of task %d on port %d (%s): %s; is the port in use, or "
                              "another task's?" % (index, task.port, task.address, text)) from None

    def unreachable(self, indices):
        """The first of the tasks `indices` whose server does not answer now (see `reachable`), or None."""
        return next((i for i in indices if not reachable(self.tasks[i])), None)

    def wait_for(self, indices, timeout):
        """Wait until every task in `indices` accepts connections; ClusterUnavailable after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.unreachable(indices)
            if missing is None:
                return
            if time.monotonic() >= deadline:
                raise ClusterUnavailable(
                    "cluster task %d (%s) did not answer within %g s (startup_timeout_secs of %s); start it with "
                    "`gpt-neo --worker --cluster %s --task %d` and run the same command again"
                    % (missing, self.tasks[missing].address, timeout, self.path, self.path, missing))
            time.sleep(PROBE_INTERVAL_SECS)


def port_in_use(port):
    """The OS's reason when `port` cannot be listened on (on every interface, as TF's server does), else None."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
        try:
            s.bind(("", port))
        except OSError as e:
            return e.strerror or str(e)
    return None


# An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server answers with a SETTINGS
# frame of its own (type 4, the fourth byte of a frame header) at once.
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_FRAME = 4


def reachable(task, timeout=1.0):
    """Whether the task's gRPC server answers within `timeout` seconds. A TCP connect alone is not enough:
    the kernel accepts connections for a process that hangs or is stopped (SIGSTOP)."""
    try:
        with socket.create_connection((task.host, task.port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(HTTP2_HELLO)
            header = b""
            while len(header) < 9:
                chunk = s.recv(9 - len(header))
                if not chunk:
                    return False
                header += chunk
            return header[3] == SETTINGS_FRAME
    except OSError:  # refused, unreachable, or no answer in time (socket.timeout)
        return False


TASK_KEYS = ("address", "cpus", "gpus")
CLUSTER_KEYS = ("tasks", "shared_model_path", "startup_timeout_secs", "worker_timeout_secs", "chief_timeout_secs")


def load_cluster(path):
    """The Cluster of a cluster file (JSON, local or gs://); every problem is one ConfigError line."""
    raw = storage.read_json(path, "cluster file")
    where = "cluster file %s" % path
    if not isinstance(raw, dict):
        raise ConfigError("%s must hold a JSON object with \"tasks\"" % where)
    for key in raw:
        if key not in CLUSTER_KEYS:
            raise ConfigError("%s: unknown key %r%s (known: %s)" % (where, key, did_you_mean(key, CLUSTER_KEYS),
                                                                    ", ".join(CLUSTER_KEYS)))
    tasks = raw.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError("%s: \"tasks\" must be a non-empty list, task 0 first (the chief)" % where)
    parsed = tuple(_task(where, i, t) for i, t in enumerate(tasks))
    addresses = [t.address for t in parsed]
    for i, address in enumerate(addresses):
        if addresses.index(address) != i:
            raise ConfigError("%s: tasks %d and %d both have address %s; each task needs a port of its own"
                              % (where, addresses.index(address), i, address))
    if len({bool(t.gpus) for t in parsed}) > 1:
        raise ConfigError("%s: some tasks list \"gpus\" and others CPUs; the mesh runs on one kind of device"
                          % where)
    options = {}
    if "shared_model_path" in raw:
        if not isinstance(raw["shared_model_path"], bool):
            raise ConfigError("%s: \"shared_model_path\" must be true or false" % where)
        options["shared_model_path"] = raw["shared_model_path"]
    for key in CLUSTER_KEYS[2:]:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError("%s: %r must be a number of seconds > 0, not %s" % (where, key, json.dumps(value)))
            options[key] = float(value)
    return Cluster(parsed, path=path, **options)


def _task(where, index, raw):
    if not isinstance(raw, dict) or "address" not in raw:
        raise ConfigError("%s: task %d must be an object with \"address\": \"host:port\"" % (where, index))
    for key in raw:
        if key not in TASK_KEYS:
            raise ConfigError("%s: task %d: unknown key %r%s (known: %s)" % (
                where, index, key, did_you_mean(key, TASK_KEYS), ", ".join(TASK_KEYS)))
    address = raw["address"]
    host, _, port = str(address).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("%s: task %d: address %s is not host:port (e.g. 10.0.0.2:2222)"
                          % (where, index, json.dumps(address)))
    if "cpus" in raw and "gpus" in raw:
        raise ConfigError("%s: task %d lists both \"cpus\" and \"gpus\"; give one" % (where, index))
    gpus = raw.get("gpus", [])
    if not isinstance(gpus, list) or ("gpus" in raw and not gpus) or \
            not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus) or \
            len(set(gpus)) != len(gpus):
        raise ConfigError("%s: task %d: \"gpus\" must be a list of distinct GPU ids (e.g. [0, 1]), not %s"
                          % (where, index, json.dumps(raw.get("gpus"))))
    cpus = raw.get("cpus", 1)
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ConfigError("%s: task %d: \"cpus\" must be a whole number >= 1 (virtual CPU devices), not %s"
                          % (where, index, json.dumps(cpus)))
    return Task(host.strip("[]"), int(port), cpus=cpus, gpus=tuple(gpus))


def check_model_path(cluster, model_path):
    """Every task writes its shards of each checkpoint to model_path itself: it must be storage all
    hosts see. Only gs:// (or another remote filesystem) is known to be; a local path must be declared."""
    if len(cluster.tasks) > 1 and not storage.is_remote(model_path) and not cluster.shared_model_path:
        raise ConfigError("`model_path` %s is local, but each of the %d cluster tasks writes its part of every "
                          "checkpoint there: use gs://..., or a shared filesystem mounted at the same path on "
                          "every host with \"shared_model_path\": true in %s"
                          % (model_path, len(cluster.tasks), cluster.path))


class Watch(threading.Thread):
    """Connects to `indices`' addresses every PROBE_INTERVAL_SECS; once one has failed for `timeout`
    seconds in a row, calls `gone(index)` and stops."""

    def __init__(self, cluster, indices, timeout, gone):
        super().__init__(daemon=True, name="cluster-watch")
        self._cluster, self._indices, self._timeout, self._gone = cluster, indices, timeout, gone
        self._stop = threading.Event()

    def run(self):
        since = {}
        while not self._stop.wait(PROBE_INTERVAL_SECS):
            now = time.monotonic()
            for i in self._indices:
                if reachable(self._cluster.tasks[i], timeout=min(1.0, self._timeout)):
                    since.pop(i, None)
                elif now - since.setdefault(i, now) >= self._timeout:
                    self._gone(i)
                    return

    def stop(self):
        self._stop.set()


def _end(status, error=None):
    """Ends the process, after printing `error` as its one line. From the chief's watcher thread, because the
    main thread may be blocked in a session run that TensorFlow retries forever (complete checkpoints are
    listed in `checkpoint` only once written, so one being written is skipped on resume); on a worker, because
    TF 2.15's server has no shutdown (Server.join blocks forever)."""
    for handler in log.handlers:
        handler.flush()
    sys.stdout.flush()
    if error:
        print("error: %s" % error, file=sys.stderr)
    sys.stderr.flush()
    os._exit(status)


class Chief:
    """On the chief, while training, evaluating or sampling: its server, and the watch on the workers."""

    def __init__(self, cluster, model_path):
        self.cluster, self._model_path = cluster, model_path
        self.server = None
        self._watch = None

    def __enter__(self):
        workers = range(1, len(self.cluster.tasks))
        # Workers wait for the chief as long, so the order of starts does not matter.
        self.cluster.wait_for(workers, self.cluster.startup_timeout_secs)
        self.server = self.cluster.start_server(0)
        log.info("cluster of %d tasks (%s): %d mesh devices", len(self.cluster.tasks),
                 ", ".join(t.address for t in self.cluster.tasks), len(self.cluster.devices))
        self._watch = Watch(self.cluster, workers, self.cluster.worker_timeout_secs,
                            lambda i: _end(EXIT_STOPPED, self.lost(i)))
        self._watch.start()
        return self

    def __exit__(self, *exc_info):
        if self._watch:
            self._watch.stop()

    @property
    def target(self):
        return self.server.target

    def lost(self, index):
        task = self.cluster.tasks[index]
        return ("cluster task %d (%s) is unreachable; the checkpoints in %s are kept (newest: step %d): restart "
                "that task and run the same command to resume" % (index, task.address, self._model_path,
                                                                  latest_step(self._model_path)))

    def lost_now(self, error):
        """A ClusterUnavailable naming the task an OpError (Unavailable, Aborted, DeadlineExceeded) came
        from: the first unreachable task, else the task the message names."""
        index = self.cluster.unreachable(range(1, len(self.cluster.tasks)))
        if index is None:
            text = getattr(error, "message", "")
            index = next((i for i, t in enumerate(self.cluster.tasks)
                          if "/task:%d/" % i in text or t.address in text), None)
        if index is None:
            return ClusterUnavailable("the cluster stopped answering (%s); run the same command to resume from "
                                      "the newest checkpoint" % type(error).__name__)
        return ClusterUnavailable(self.lost(index))


def serve(cluster, index):
    """`gpt-neo --worker`: serve task `index` until the chief has gone; the process's exit status."""
    if not 0 < index < len(cluster.tasks):
        raise ConfigError("--task %d: a worker is task 1..%d of %s (task 0 is the chief, which runs --model)"
                          % (index, len(cluster.tasks) - 1, cluster.path))
    cluster.start_server(index)
    chief = cluster.tasks[0]
    log.info("task %d serving %d device(s) on %s for the chief at %s", index, len(cluster.tasks[index].devices(index)),
             cluster.tasks[index].address, chief.address)
    try:
        cluster.wait_for([0], cluster.startup_timeout_secs)
    except ClusterUnavailable:
        _end(EXIT_STOPPED, "the chief (task 0, %s) did not answer within %g s (startup_timeout_secs of %s); start it "
             "with `gpt-neo --model CONFIG --cluster %s`" % (chief.address, cluster.startup_timeout_secs, cluster.path,
                                                              cluster.path))
    done = threading.Event()
    Watch(cluster, [0], cluster.chief_timeout_secs, lambda i: done.set()).start()
    done.wait()
    log.info("the chief (%s) has been unreachable for %g s: task %d exits", chief.address,
             cluster.chief_timeout_secs, index)
    _end(0)

