"""Recording erasure lists versions by folder or by key (recordings._versions_of); either way it
must delete every version of exactly the asked keys (R16.1) and nothing else, byte for byte."""

from __future__ import annotations

import pytest

from compliance.core.stores import recordings

BUCKET = "audio"


def _world(s3) -> dict[tuple[str, str], str]:
    """Three folders, two versions per key, some delete markers, keys that prefix each other."""
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for folder in ("recordings/1/", "recordings/2/", "other/"):
        for i in range(30):
            for rev in (b"a", b"b"):
                s3.put_object(Bucket=BUCKET, Key=f"{folder}{i}.wav", Body=rev + bytes([i]))
            s3.put_object(Bucket=BUCKET, Key=f"{folder}{i}.wav.txt", Body=b"note")
        for i in range(0, 30, 7):
            s3.delete_object(Bucket=BUCKET, Key=f"{folder}{i}.wav")
    s3.put_object(Bucket=BUCKET, Key="top.wav", Body=b"top")
    return _snapshot(s3)


def _snapshot(s3) -> dict[tuple[str, str], str]:
    out = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        for v in page.get("Versions", []):  # a version is immutable: its ETag is its bytes' MD5
            out[(v["Key"], v["VersionId"])] = v["ETag"]
        for m in page.get("DeleteMarkers", []):
            out[(m["Key"], m["VersionId"])] = "<marker>"
    return out


@pytest.mark.parametrize(
    ("targets", "page_size", "by_key"),
    [
        (["recordings/1/3.wav"], 1000, "all"),  # one key: listed by key
        ([f"recordings/1/{i}.wav" for i in range(0, 30, 2)], 1000, "none"),  # one folder page
        ([f"recordings/2/{i}.wav" for i in range(0, 30)] + ["top.wav"], 7, "some"),  # budget out
        ([f"{f}{i}.wav" for f in ("recordings/1/", "other/") for i in range(25)], 20, "some"),
    ],
    ids=["one-key", "folder", "budget-exhausted", "two-folders-paged"],
)
def test_deletes_every_version_of_exactly_the_targets(s3, targets, page_size, by_key, monkeypatch):
    before = _world(s3)
    real, one_key = recordings._versions_of, recordings._versions
    calls: list[str] = []
    monkeypatch.setattr(
        recordings, "_versions_of", lambda c, b, k: real(c, b, k, page_size=page_size)
    )
    monkeypatch.setattr(
        recordings, "_versions", lambda c, b, k: calls.append(k) or one_key(c, b, k)
    )

    existed = recordings.delete_all_versions(s3, BUCKET, targets)

    after = _snapshot(s3)
    # keys the folder listings did not reach are listed one by one
    assert {"all": len(targets), "none": 0}.get(by_key, len(calls)) == len(calls)
    assert (0 < len(calls) < len(targets)) == (by_key == "some")
    assert existed == len(set(targets))
    assert {k for k, _ in after} & set(targets) == set()
    assert after == {kv: body for kv, body in before.items() if kv[0] not in set(targets)}
    assert recordings.remaining(s3, BUCKET, targets) == 0
    assert recordings.remaining(s3, BUCKET, ["recordings/1/29.wav.txt"]) == 1


def test_listing_by_folder_sees_what_key_by_key_sees(s3):
    _world(s3)
    keys = [f"recordings/{f}/{i}.wav" for f in (1, 2) for i in range(25)] + ["missing/x.wav"]
    by_folder = recordings._versions_of(s3, BUCKET, keys, page_size=9)
    by_key = {k: recordings._versions(s3, BUCKET, k) for k in keys}
    assert {k: sorted(v["VersionId"] for v in vs) for k, vs in by_folder.items()} == {
        k: sorted(v["VersionId"] for v in vs) for k, vs in by_key.items()
    }
    assert by_folder["missing/x.wav"] == []
