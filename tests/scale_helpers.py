"""Shared by the scale-out tests: a real S3 endpoint (moto's server) and destinations."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid

import numpy as np

import mmwal

BUCKET = "mmwal-test"
CREDS = {"key": "testing", "secret": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server():
    """moto's S3 server as a subprocess on a free port; yields its storage_options."""
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.05)
        opts = {"endpoint_url": f"http://127.0.0.1:{port}", **CREDS}
        import s3fs

        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir(BUCKET)
        yield opts
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def destination(kind: str, tmp_path, s3_opts) -> tuple[str, dict | None]:
    """A fresh, empty destination URL of ``kind`` ("s3" or "file") and its storage_options."""
    if kind == "s3":
        return f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_opts
    d = tmp_path / f"remote-{uuid.uuid4().hex[:8]}"
    return f"file://{d}", None


def fill(store: mmwal.Store, start: int, n: int, dim: int = 8) -> None:
    rng = np.random.default_rng(start)
    store.add_many([f"d{i}" for i in range(start, start + n)],
                   rng.standard_normal((n, dim)).astype(np.float32),
                   contents=[f"text {i}" for i in range(start, start + n)],
                   metadatas=[{"i": i, "even": i % 2 == 0} for i in range(start, start + n)])
