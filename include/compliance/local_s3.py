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
from typing import Any

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
    untrack_instances()
    server, url = start(port)
    port_file.write_text(url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


def untrack_instances() -> None:
    """Stop moto from keeping every model instance it ever created (for its dashboard).

    Those lists keep deleted and overwritten object versions alive, so their bytes (a temporary
    file above 5 MB) are never freed: the large benchmark, which rewrites gigabytes of logs,
    filled 45 GB of disk with deleted files held open. Untracked, a version is freed when its
    bucket drops it (or when the last request still reading it ends). Only for the dedicated
    server process: in-process mocks reset through those lists.
    """
    from moto.core.common_models import BaseModel

    def new(cls: type, *_args: Any, **_kwargs: Any) -> Any:
        return object.__new__(cls)

    BaseModel.__new__ = new  # type: ignore[method-assign,assignment]
