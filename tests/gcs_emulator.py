"""A local Google Cloud Storage emulator for the gs:// tests (gcp-storage-emulator, on 127.0.0.1 only).

    python tests/gcs_emulator.py start --host 127.0.0.1 --port 9023 --default-bucket testbucket -q -M

runs the emulator's own command line after fixing one of its bugs: an upload with an empty body
(`tf.io.gfile.makedirs("gs://b/d")` PUTs an empty object "d/") crashes its handler
(`len(None)`), and the client then retries forever. `start_emulator(port)` starts it in memory
with the bucket `testbucket`, waits until it answers and returns the process; `with
start_emulator(port):` (or `.stop()`) terminates it, and it exits by itself if its parent dies.

TensorFlow reaches the emulator through tensorflow-io-gcs-filesystem 0.34.0 (google-cloud-cpp 1.x,
libcurl 8.0.1), which corrupts its heap on downloads of more than ~100 KB from the emulator (random
segfaults and malloc aborts, found in CurlDownloadRequest::Read). The crashes stop when TCP receive
buffers hold at most 16 KiB (curl's largest write, the size of google-cloud-cpp's spill buffer), so
apparently a larger read from the socket overflows that buffer. tests/isolated.sh caps them in its
network namespace; `small_receive_buffers()` tells whether that is in effect, and the gs:// tests
skip otherwise rather than crash the whole session.
"""
import functools
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HOST = "127.0.0.1"
BUCKET = "testbucket"


def fix_empty_uploads():
    """Make the XML-API upload handler accept an empty body (the emulator reads it as None).

    Must run before `gcp_storage_emulator.server` is imported: its URL table keeps the handler.
    """
    from gcp_storage_emulator.handlers import objects

    original = objects.xml_upload
    if getattr(original, "empty_body_fixed", False):
        return

    @functools.wraps(original)
    def xml_upload(request, response, storage, *args, **kwargs):
        if request.data is None:
            request._data = b""
        return original(request, response, storage, *args, **kwargs)

    xml_upload.empty_body_fixed = True
    objects.xml_upload = xml_upload


MAX_RECEIVE_BUFFER = 16384  # CURL_MAX_WRITE_SIZE, the size of google-cloud-cpp's spill buffer


def small_receive_buffers():
    """True when TCP receive buffers are capped at MAX_RECEIVE_BUFFER (as tests/isolated.sh does)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            return int(f.read().split()[2]) <= MAX_RECEIVE_BUFFER
    except (OSError, ValueError, IndexError):
        return False


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class EmulatorProcess(subprocess.Popen):
    """The emulator's process; a context manager that stops it on exit."""

    log = None  # an anonymous temporary file with the emulator's stdout and stderr

    def output(self):
        if self.log is None or self.log.closed:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self, timeout=5):
        if self.poll() is None:
            self.terminate()
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()
        if self.log is not None:
            self.log.close()

    def __exit__(self, *exc):
        self.stop()
        return False


def exit_with_parent(parent):
    """Exit when process `parent` ends, also when it dies without stopping us (a TF segfault)."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def start_emulator(port, bucket=BUCKET, timeout=30):
    """Start the emulator in memory on 127.0.0.1:`port` with `bucket`; return once it answers."""
    log = tempfile.TemporaryFile()
    process = EmulatorProcess(
        [sys.executable, os.path.abspath(__file__), "start", "--host", HOST, "--port", str(port),
         "--default-bucket", bucket, "--in-memory", "--quiet"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        cwd=tempfile.gettempdir(),  # the emulator derives its (unused, in memory) disk root from the cwd
        env=dict(os.environ, GCS_EMULATOR_PARENT=str(os.getpid())))
    process.log = log
    url = "http://%s:%d/storage/v1/b" % (HOST, port)
    deadline = time.monotonic() + timeout
    while not _answers(url):
        failed = process.poll() is not None
        output = process.output()
        # A failed bind kills only the server thread; the process would wait forever.
        if failed or "Traceback" in output or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError("the GCS emulator (%s) %s; its output:\n%s" % (
                " ".join(process.args), "exited with code %s" % process.returncode if failed
                else "failed" if "Traceback" in output
                else "did not answer GET %s within %d s" % (url, timeout), output or "(none)"))
        time.sleep(0.1)
    return process


if __name__ == "__main__":
    if os.environ.get("GCS_EMULATOR_PARENT"):
        exit_with_parent(int(os.environ["GCS_EMULATOR_PARENT"]))
    fix_empty_uploads()
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
