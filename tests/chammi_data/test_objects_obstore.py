"""A build's object calls on ``s3://`` through obstore (``ObjectStore.read_object`` / ``info`` / ``put`` /
``read_many``), against moto's S3 server on 127.0.0.1: the same bytes, sizes, ETags and errors as through
s3fs (``$CHAMMI_REMOTE_CLIENT=fsspec``) in both directions, missing objects, a stalled server within the
deadline, anonymous access, keys obstore cannot name, a changed endpoint and a forked child."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from chammi_data.store.objects import ObjectStore
from chammi_data.store.obstore_client import CLIENT_ENV
from chammi_data.store.remote import RemoteObjectError, RemoteReadError, RetryPolicy
from tests.pipelines.remote import make_public
from tests.servers import S3Server

#: names with the characters raw tables hold (spaces, +, %, brackets, unicode) and an empty object
OBJECTS = {
    "plain.bin": os.urandom(300_000),
    "a b/p+q%41 [1] ü.tif": b"odd names" * 100,
    "empty": b"",
}


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        server.upload(Path(__file__).parent / "data", "obj", "seed")  # creates the bucket
        server.upload(Path(__file__).parent / "data", "public", "seed")
        make_public(server, "public")
        yield server


@pytest.fixture
def env(s3, monkeypatch):
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    return monkeypatch


def _use(monkeypatch, client: str) -> None:
    monkeypatch.setenv(CLIENT_ENV, "auto" if client == "obstore" else "fsspec")


@pytest.mark.parametrize("writer", ["obstore", "fsspec"])
def test_what_one_client_writes_the_other_reads_the_same(env, writer: str, request) -> None:
    store = ObjectStore(f"s3://obj/{request.node.name.replace('[', '-').rstrip(']')}")
    _use(env, writer)
    assert (store.client is not None) == (writer == "obstore")
    assert store.list_files() == []  # s3fs has listed the folder: a write through obstore must show anyway
    for rel, data in OBJECTS.items():
        store.put(rel, data)
    got = {}
    for client in ("obstore", "fsspec"):
        _use(env, client)
        assert store.list_files() == sorted(OBJECTS)
        got[client] = (
            {rel: store.read_object(rel) for rel in OBJECTS},
            {rel: store.info(rel) for rel in OBJECTS},
            store.read_many(
                [("plain.bin", 1000, 1100), ("plain.bin", -50, None), ("empty", 0, None)]
                + [("a b/p+q%41 [1] ü.tif", -(1 << 20), None), ("a b/p+q%41 [1] ü.tif", 0, None)]
            ),
        )
    assert got["obstore"] == got["fsspec"]
    reads, infos, many = got["obstore"]
    assert reads == OBJECTS
    assert {rel: i["size"] for rel, i in infos.items()} == {rel: len(d) for rel, d in OBJECTS.items()}
    assert all(i["etag"].startswith('"') for i in infos.values())  # as s3fs gives it: If-Match takes it
    data, odd = OBJECTS["plain.bin"], OBJECTS["a b/p+q%41 [1] ü.tif"]
    assert many == [data[1000:1100], data[-50:], b"", odd, odd]
    etag = infos["plain.bin"]["etag"]  # the ETag obstore reported guards a conditional replace (s3fs)
    assert store.replace("plain.bin", b"new", etag) and not store.replace("plain.bin", b"newer", etag)


@pytest.mark.parametrize("client", ["obstore", "fsspec"])
def test_a_missing_object_is_none_or_one_error_naming_it(env, client: str) -> None:
    _use(env, client)
    store = ObjectStore("s3://obj/missing")
    store.put("here", b"x")
    assert store.info("nothing/there") is None and not store.exists("nothing/there") and store.exists("here")
    with pytest.raises(RemoteObjectError) as err:
        store.read_object("nothing/there")
    msg = str(err.value)
    assert err.value.missing and msg.startswith("s3://obj/missing/nothing/there: read: object not found"), msg
    assert "\n" not in msg and "credentials: environment variable AWS_ACCESS_KEY_ID" in msg
    got = store.read_many([("here", 0, None), ("nothing/there", 0, None)])
    assert got[0] == b"x" and isinstance(got[1], FileNotFoundError)


def test_keys_obstore_cannot_name_are_read_with_s3fs(env) -> None:
    store = ObjectStore("s3://obj/keys")
    _use(env, "fsspec")
    for rel in ("a//b", "./c", "d/../e"):
        store.put(rel, rel.encode())
    _use(env, "obstore")
    assert store.client is not None
    for rel in ("a//b", "./c", "d/../e"):
        assert store.read_object(rel) == rel.encode() and store.info(rel)["size"] == len(rel)
    assert store.read_many([("a//b", 0, None), ("./c", 0, None)]) == [b"a//b", b"./c"]


def test_anonymous_access_reads_a_public_bucket_and_is_refused_elsewhere(env) -> None:
    ObjectStore("s3://public/anon").put("x.bin", b"public bytes")
    ObjectStore("s3://obj/anon").put("x.bin", b"private bytes")
    public = ObjectStore("s3://public/anon", {"anon": True})
    assert public.client is not None  # unsigned requests through obstore
    assert public.read_object("x.bin") == b"public bytes" and public.info("x.bin")["size"] == 12
    assert public.read_many([("x.bin", 0, 6)]) == [b"public"]
    private = ObjectStore("s3://obj/anon", {"anon": True})
    with pytest.raises(RemoteObjectError, match=r"^s3://obj/anon/x\.bin: read: object refused") as err:
        private.read_object("x.bin")
    assert "anonymous access" in str(err.value) and not err.value.missing
    with pytest.raises(RemoteObjectError, match=r"^s3://obj/anon/x\.bin: stat: object refused"):
        private.info("x.bin")


def test_a_changed_endpoint_gets_a_new_client(env) -> None:
    store = ObjectStore("s3://obj/endpoint")
    first = store.client
    assert first is not None and ObjectStore("s3://obj/other").client is first  # one per bucket
    env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert store.client is not first


def _child(url: str, queue) -> None:
    store = ObjectStore(url)
    queue.put((store.client is None, store.read_object("k")))


def test_a_process_forked_after_obstore_ran_reads_with_s3fs(env) -> None:
    store = ObjectStore("s3://obj/fork")
    store.put("k", b"forked")
    assert store.client is not None and store.read_object("k") == b"forked"  # obstore's runtime started
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(store.url, queue))
    proc.start()
    try:
        assert queue.get(timeout=60) == (True, b"forked")
    finally:
        proc.join(10)


@pytest.mark.slow  # about 12 s: four calls that each wait for the 3 s deadline
def test_a_stalled_server_fails_each_call_within_the_deadline(monkeypatch) -> None:
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    with S3Server() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.upload(Path(__file__).parent / "data", "stall", "seed")
        store = ObjectStore("s3://stall/x", retry=RetryPolicy(timeout=1.0, deadline=3.0))
        store.put("k", b"bytes")
        assert store.client is not None and store.read_object("k") == b"bytes"
        server.pause()
        try:
            calls = {
                "read": lambda: store.read_object("k"),
                "stat": lambda: store.info("k"),
                "write (5 bytes)": lambda: store.put("k", b"other"),
            }
            for what, call in calls.items():
                t0 = time.monotonic()
                with pytest.raises(RemoteReadError) as err:
                    call()
                elapsed = time.monotonic() - t0
                msg = str(err.value)
                assert msg.startswith(f"s3://stall/x/k: {what} failed after"), msg
                assert "did not answer" in msg and elapsed < 3.0 + 3.0, (elapsed, msg)
            t0 = time.monotonic()
            got = store.read_many([("k", 0, None), ("k", 1, 3)])
            assert all(isinstance(x, TimeoutError) for x in got) and time.monotonic() - t0 < 6.0
        finally:
            server.resume()
