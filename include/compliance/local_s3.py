"""A local S3 API (moto server) on 127.0.0.1 for the demo, `make up` and tests.

Binds loopback only (ThreadedMotoServer's default is 0.0.0.0) on a free port, so several runs can
coexist. `python -m compliance local-s3 --port-file F` runs one in the foreground until killed.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path

from moto.server import ThreadedMotoServer


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
    stop.wait()
    server.stop()
