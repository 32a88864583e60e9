"""A local S3-compatible server (moto's server mode) on 127.0.0.1 for the object-store tests.

It speaks the S3 protocol (buckets, objects, listing, conditional writes) but proves nothing about a real
store's consistency under failures, its latency, or multi-region behaviour: see docs/warehouse.md."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from core.local_postgres import free_port

ACCESS_KEY, SECRET_KEY, REGION = "test-key", "test-secret", "us-east-1"


@contextmanager
def moto_server() -> Iterator[str]:
    """Yield the endpoint URL of a fresh server; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on 127.0.0.1:{port}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def client(endpoint: str):
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
