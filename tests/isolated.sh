#!/bin/sh
# Run a command in a network namespace of its own, where only loopback exists, so the tests (and
# the GCS emulator they start on 127.0.0.1) cannot reach any other machine:
#     tests/isolated.sh python -m pytest -q tests
# TCP receive buffers in the namespace are capped at 16 KiB: the GCS plugin the tests use
# (tensorflow-io-gcs-filesystem 0.34.0) corrupts its heap when one read from the socket returns
# more than 16 KiB, which fast plain-HTTP loopback downloads do (tests/gcs_emulator.py).
# Creating the namespace needs root (as in CI) and `ip` (iproute2); without them this warns and
# runs the command unisolated (and the gs:// tests skip).
SETUP='ip link set lo up && echo "4096 8192 16384" > /proc/sys/net/ipv4/tcp_rmem'
if unshare -n sh -c "$SETUP" 2>/dev/null; then
    exec unshare -n sh -c "$SETUP"' && exec "$@"' sh "$@"
fi
echo "tests/isolated.sh: warning: no network isolation (creating a network namespace with \`unshare -n\` and \`ip\` failed; it needs root)" >&2
exec "$@"
