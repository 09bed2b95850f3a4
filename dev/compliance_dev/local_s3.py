"""A local S3 API (moto server) on 127.0.0.1 for the demo, `make up` and tests.

Binds loopback only (ThreadedMotoServer's default is 0.0.0.0) on a free port, so several runs can
coexist. `python -m compliance_dev local-s3 --port-file F` runs one in the foreground until killed.
"""

from __future__ import annotations

import io
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
    light_version_listings()
    copies_keep_checksum_type()
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


def light_version_listings() -> None:
    """Make moto's ListObjectVersions cost what S3's does: nothing per byte stored, and nothing
    for keys outside the prefix asked.

    moto answers every ListObjectVersions call by deep-copying every version in the bucket,
    and a key's deep copy goes through its pickling hooks, which read the object's bytes and
    write them to a new temporary file. One listing of one key in a bucket of 20,000 recordings
    (or 643 MB of logs) copied the whole bucket: erasing the recordings of a batch of 1,000
    consumers spent two minutes in it. Here a version's copy shares its attributes, keeps its
    ETag and owns an empty buffer (a copy's finaliser closes its own buffer, never the
    object's), and only the keys under the listing's prefix are copied at all (moto filters by
    prefix after copying; the result is the same). Idempotent.
    """
    from moto.s3.models import FakeKey, S3Backend
    from moto.s3.utils import _VersionedKeyStore

    if getattr(FakeKey, "_light_copy", False):
        return

    def listing_copy(self: Any, memo: dict[int, Any]) -> Any:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        self.etag  # noqa: B018 (computes and caches the ETag from the object's own bytes)
        clone._etag = self._etag
        clone._value_buffer = io.BytesIO()
        clone.multipart = None  # disposing the copy must not dispose the object's parts
        clone.disposed = True  # nothing of the object's to release
        return clone

    listing = threading.local()  # the prefix of the listing this thread is answering
    every_list = _VersionedKeyStore.iterlists
    list_versions = S3Backend.list_object_versions

    def lists_under_prefix(self: Any) -> Any:
        prefix = getattr(listing, "prefix", "")
        return ((k, v) for k, v in every_list(self) if k.startswith(prefix))

    def list_object_versions(self: Any, bucket_name: str, **kwargs: Any) -> Any:
        listing.prefix = kwargs.get("prefix") or ""
        try:
            return list_versions(self, bucket_name, **kwargs)
        finally:
            listing.prefix = ""

    FakeKey.__deepcopy__ = listing_copy  # type: ignore[attr-defined]
    FakeKey._light_copy = True  # type: ignore[attr-defined]
    _VersionedKeyStore.iterlists = lists_under_prefix  # type: ignore[method-assign]
    S3Backend.list_object_versions = list_object_versions  # type: ignore[method-assign]


def copies_keep_checksum_type() -> None:
    """Make moto's CopyObject keep the source's checksum *type* with its value, as S3 does.

    moto (5.2) copies a multipart object's composite checksum (a checksum of its parts'
    checksums) without marking it composite, so the copy claims it as the checksum of its
    bytes, and boto3 refuses to read it (`FlexibleChecksumError`). The large benchmark's
    backup rewrite, which copies the world's snapshots (multipart uploads) into a scratch
    bucket, failed on it. Idempotent.
    """
    from moto.s3.models import S3Backend

    if getattr(S3Backend, "_copies_keep_checksum_type", False):
        return
    copy = S3Backend.copy_object

    def copy_object(
        self: Any, src_key: Any, dest_bucket_name: str, dest_key_name: str, *a: Any, **kw: Any
    ) -> Any:
        out = copy(self, src_key, dest_bucket_name, dest_key_name, *a, **kw)
        if src_key.checksum_value and getattr(src_key, "checksum_type", None):
            new_key = self.get_bucket(dest_bucket_name).keys[dest_key_name]
            new_key.checksum_type = src_key.checksum_type
            new_key.checksum_parts = src_key.checksum_parts
        return out

    S3Backend.copy_object = copy_object  # type: ignore[method-assign]
    S3Backend._copies_keep_checksum_type = True  # type: ignore[attr-defined]
