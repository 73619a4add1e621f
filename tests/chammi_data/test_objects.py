"""ObjectStore, the location a build writes into: the same behaviour in a folder and on a real S3-compatible
server (moto on 127.0.0.1) - whole objects or nothing, multipart uploads aborted on failure, conditional
creates and replaces, listing, deletion - and the generation a reader resolves."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import pytest

import chammi_data.store.objects as objects
from chammi_data.store.objects import ObjectStore, ReadOnlyLocation, writable_store
from chammi_data.store.storage import ReleaseStore
from tests.servers import S3Server


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.upload(Path(__file__).parent, "objects", "seed")  # creates the bucket
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return ObjectStore(tmp_path / "out")
    server = request.getfixturevalue("s3")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return ObjectStore(f"s3://objects/{request.node.name.replace('[', '-').rstrip(']')}")


def test_put_read_list_delete(store: ObjectStore) -> None:
    store.put("a/b.txt", b"hello")
    store.put("a/c/d.bin", b"x" * 10)
    assert store.read_object("a/b.txt") == b"hello" and store.read_range("a/c/d.bin", 2, 3) == b"xxx"
    assert store.list_files() == ["a/b.txt", "a/c/d.bin"] and store.list_files("a/c") == ["a/c/d.bin"]
    assert store.info("a/b.txt")["size"] == 5 and store.info("nothing") is None
    assert store.child("a").list_files() == ["b.txt", "c/d.bin"]
    assert store.rel_of(store.path("a/b.txt")) == "a/b.txt" and store.rel_of("s3://elsewhere/x") is None
    copy = pickle.loads(pickle.dumps(store))  # travels to dask workers
    assert copy.url == store.url and copy.read_object("a/b.txt") == b"hello"
    store.delete_prefix("a/c")
    store.delete(["a/b.txt", "missing"])
    assert store.list_files() == []
    with pytest.raises(ValueError, match="refusing to delete the whole location"):
        store.delete_prefix("")


def test_a_failed_writer_leaves_nothing(store: ObjectStore) -> None:
    store.put("kept", b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer("kept") as fh:
            fh.write(b"new, half written")
            raise RuntimeError("boom")
    assert store.read_object("kept") == b"old" and store.list_files() == ["kept"]


def test_large_objects_go_in_parts_and_a_failed_upload_is_aborted(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(objects, "MULTIPART_THRESHOLD", 6 << 20)
    monkeypatch.setattr(objects, "PART_SIZE", 5 << 20)
    data = bytes(range(256)) * (12 << 12)  # 12 MiB: 3 parts
    with store.writer("big.bin") as fh:
        fh.write(data)
    assert store.read_object("big.bin") == data
    if store.is_local:
        return
    assert store.info("big.bin")["etag"].rstrip('"').endswith("-3")  # a multipart object's ETag
    real = store.fs.call_s3
    parts = []

    def failing(method, *args, **kw):
        if method == "upload_part":
            parts.append(kw["PartNumber"])
            if kw["PartNumber"] == 2:
                raise PermissionError("injected: part 2 refused")
        return real(method, *args, **kw)

    monkeypatch.setattr(store.fs, "call_s3", failing)
    with pytest.raises(Exception, match="broken.bin: upload part 2: object refused"):
        store.put("broken.bin", data)
    monkeypatch.setattr(store.fs, "call_s3", real)
    assert parts == [1, 2] and store.info("broken.bin") is None
    bucket, key, _ = store.fs.split_path(store.key(""))
    assert not real("list_multipart_uploads", Bucket=bucket, Prefix=key).get("Uploads")  # no hidden parts


def test_conditional_create_and_replace(store: ObjectStore) -> None:
    assert store.conditional_writes
    assert store.create("lock", b"first") and not store.create("lock", b"second")
    assert store.read_object("lock") == b"first"
    etag = store.info("lock")["etag"]
    assert store.replace("lock", b"mine", etag) and store.read_object("lock") == b"mine"
    assert not store.replace("lock", b"stale", etag)  # someone wrote since that ETag was read
    assert store.read_object("lock") == b"mine"


def test_of_many_creators_exactly_one_wins(store: ObjectStore) -> None:
    won: list[int] = []
    start = threading.Barrier(6)

    def contend(i: int) -> None:
        start.wait()
        if store.create("contended", str(i).encode()):
            won.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and store.read_object("contended") == str(won[0]).encode()


def test_http_locations_are_read_only() -> None:
    with pytest.raises(ReadOnlyLocation, match="read-only"):
        writable_store("https://example.invalid/release")


def test_a_reader_reads_the_generation_release_json_names(tmp_path: Path) -> None:
    """release.json at the root names generation g-...: a store reads every file from there; a release
    whose generation folder does not exist (a copied folder) is read from the root."""
    root = ObjectStore(tmp_path / "rel")
    gen = "g-0123456789abcdef0123"
    release = json.dumps({"package": "chammi", "extra": {"generation": gen}, "shards": {}}).encode()
    root.put(f"{gen}/release.json", release)
    root.put(f"{gen}/manifest.csv", b"new")
    root.put("manifest.csv", b"flat")
    root.put("release.json", release)
    reader = ReleaseStore(tmp_path / "rel")
    assert reader.read_bytes("manifest.csv") == b"new" and reader.path("x").endswith(f"{gen}/x")
    root.put("release.json", json.dumps({"extra": {"generation": "g-ffffffffffffffffffff"}}).encode())
    assert pickle.loads(pickle.dumps(reader)).read_bytes("manifest.csv") == b"new"  # resolved once
    assert ReleaseStore(tmp_path / "rel").read_bytes("manifest.csv") == b"flat"  # no such folder: the root
