"""A local S3 API (moto server) on 127.0.0.1 for the demo, `make up` and tests.

Binds loopback only (ThreadedMotoServer's default is 0.0.0.0) on a free port, so several runs can
coexist. `python -m compliance local-s3 --port-file F` runs one in the foreground until killed.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
from pathlib import Path

from moto.core.model_instances import reset_model_data
from moto.server import ThreadedMotoServer

GC_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(port: int | None = None) -> tuple[ThreadedMotoServer, str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def serve_forever(port_file: Path, port: int | None = None) -> None:
    server, url = start(port)
    port_file.write_text(url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(GC_SECONDS):
        release_deleted_objects()
    server.stop()


def release_deleted_objects() -> None:
    """Let moto free the bytes of deleted and overwritten object versions.

    moto keeps every model instance it ever created in a class-level list (for its dashboard),
    so a deleted version's bytes (a temporary file above 5 MB) are never freed: a benchmark that
    rewrites gigabytes of logs filled 45 GB of disk with deleted files held open. Dropping those
    lists leaves live objects referenced by their buckets only.
    """
    reset_model_data()
    gc.collect()
