"""Releases at URLs: real servers on 127.0.0.1 (moto's S3 server, a Range-capable HTTP server) give the same
samples, streams, validation, exports and scores as the local files; faults give clear errors."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import chammi_data
from chammi_data.format.manifest import read_manifest
from chammi_data.format.validate import validate_release
from chammi_data.interop.official_export import export_official
from chammi_data.loading.stream_tracker import StreamTracker
from chammi_data.store.storage import (
    ReleaseNotFoundError,
    ReleaseStore,
    RemoteObjectError,
    RemoteReadError,
    RetryPolicy,
)
from tests.servers import HTTPServer, S3Server

QUICK = RetryPolicy(attempts=3, backoff=0.01, timeout=10)


@pytest.fixture(scope="module")
def s3(tiny_release: Path):
    with S3Server() as server:
        url = server.upload(tiny_release, "chammi", "releases/tiny")
        yield server, url


@pytest.fixture
def s3_env(s3, monkeypatch):
    server, url = s3
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    return url


@pytest.fixture(scope="module")
def http(tiny_release: Path):
    with HTTPServer(tiny_release) as server:
        yield server


def _same_samples(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert {k: v for k, v in x.items() if k != "image"} == {k: v for k, v in y.items() if k != "image"}


@pytest.mark.parametrize("kind", ["s3", "http", "file", "mapper"])
def test_load_at_any_location_equals_local(kind, tiny_release, request):
    local = chammi_data.load("all", root=tiny_release)
    if kind == "s3":
        root = request.getfixturevalue("s3_env")
    elif kind == "http":
        root = request.getfixturevalue("http").url
    elif kind == "file":
        root = "file://" + str(tiny_release)
    else:
        mem = fsspec.filesystem("memory")
        for p in tiny_release.rglob("*"):
            if p.is_file():
                mem.pipe_file(f"/tiny/{p.relative_to(tiny_release).as_posix()}", p.read_bytes())
        root = fsspec.get_mapper("memory://tiny")
    remote = chammi_data.load("all", root=root)
    _same_samples(local, remote)
    assert remote.store.url.startswith(
        {"s3": "s3://", "http": "http://", "file": "/", "mapper": "memory://"}[kind]
    )


def test_zarr_backend_over_s3(s3_env, tiny_release):
    local = chammi_data.load("hpa/Task_two", root=tiny_release, backend="zarr")
    remote = chammi_data.load("hpa/Task_two", root=s3_env, backend="zarr")
    _same_samples(local, remote)


@pytest.mark.parametrize("order", ["shards", "exact"])
def test_stream_with_two_workers_equals_local(s3_env, tiny_release, order):
    assert chammi_data.stream(root=s3_env).order_mode == "shards"  # the default for a URL

    def run(root):
        st = chammi_data.stream(root=root, split="train", seed=3, order=order, worker_block=4)
        loader = DataLoader(st, batch_size=4, num_workers=2, collate_fn=list)
        return [(s["cell_id"], s["image"]) for batch in loader for s in batch]

    local, remote = run(tiny_release), run(s3_env)
    assert [c for c, _ in local] == [c for c, _ in remote]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(local, remote, strict=True))


def test_validate_export_and_eval_over_s3(s3_env, tiny_release, tmp_path):
    report = validate_release(s3_env, progress=False)
    assert report.ok, report.summary()
    assert report.checked["shards"] == 9
    export_official(s3_env, tmp_path / "remote", progress=False)
    export_official(tiny_release, tmp_path / "local", progress=False)
    cmp = filecmp.dircmp(tmp_path / "remote", tmp_path / "local")
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    rng = np.random.default_rng(0)
    m = read_manifest(tiny_release)
    feats = {s: rng.normal(size=(int((m["source"] == s).sum()), 8)) for s in ("wtc11", "hpa", "cp")}
    a = chammi_data.evaluate(feats, tiny_release, progress=False)
    b = chammi_data.evaluate(feats, s3_env, progress=False)
    assert a.table.equals(b.table) and a.cps == b.cps


def test_validate_over_http_notes_it_cannot_list(http):
    report = validate_release(http.url, progress=False)
    assert report.ok, report.summary()
    assert any("cannot list files" in n for n in report.notes)


def test_missing_release_names_url_and_credentials_not_the_secret(s3_env):
    with pytest.raises(ReleaseNotFoundError) as err:
        chammi_data.load(root="s3://chammi/nowhere")
    msg = str(err.value)
    assert "s3://chammi/nowhere" in msg and "AWS_ACCESS_KEY_ID (cham...ey)" in msg
    assert S3Server.SECRET not in msg and "chammi-build" not in msg


def test_refused_object_is_not_retried(http):
    before = http.requests()
    http.fault(1, "403", path="manifest.parquet")
    with pytest.raises(
        RemoteObjectError, match=r"manifest.parquet: read: object refused \(HTTP 403\); credentials: no"
    ):
        chammi_data.load(root=ReleaseStore(http.url, retry=QUICK))
    # release.json (where the release is: the root, or a generation folder), then manifest.parquet once
    assert http.requests() - before == 2


@pytest.mark.parametrize("kind", ["503", "500", "reset", "truncate"])
def test_transient_faults_are_retried(http, kind, tiny_release):
    ds = chammi_data.load("all", root=ReleaseStore(http.url, retry=QUICK))
    row = ds.rows.iloc[5]
    http.fault(2, kind, path=row["shard"])
    before = http.requests()
    np.testing.assert_array_equal(ds.read_array(5), chammi_data.load("all", root=tiny_release).read_array(5))
    assert http.requests() - before == 3  # two failed attempts, then the read


def test_persistent_faults_name_url_shard_and_attempts(http):
    ds = chammi_data.load("all", root=ReleaseStore(http.url, retry=QUICK))
    shard = ds.rows.iloc[7]["shard"]
    http.fault(3, "503", path=shard)
    with pytest.raises(
        RemoteReadError, match=rf"{http.url}/{shard}: read bytes \d+\.\.\d+ failed after 3 attempts"
    ):
        ds[7]


def test_cache_dir_verifies_and_refetches(http, tiny_release, tmp_path):
    store = ReleaseStore(http.url, cache_dir=tmp_path / "cache", retry=QUICK)
    ds = chammi_data.load("all", root=store)
    _same_samples(chammi_data.load("all", root=tiny_release), ds)
    shard = ds.rows.iloc[0]["shard"]
    cached = store.cache_path(shard)
    assert cached.is_file() and cached.read_bytes() == (tiny_release / shard).read_bytes()
    # a damaged cached copy is noticed by the next process (a new store) and fetched again
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    again = chammi_data.load("all", root=ReleaseStore(http.url, cache_dir=tmp_path / "cache", retry=QUICK))
    np.testing.assert_array_equal(
        again.read_array(0), chammi_data.load("all", root=tiny_release).read_array(0)
    )
    assert cached.read_bytes() == (tiny_release / shard).read_bytes()


def test_corrupt_download_is_refetched_once_then_refused(tiny_release, tmp_path):
    root = tmp_path / "served"
    shutil.copytree(tiny_release, root)
    with HTTPServer(root) as server:
        ds = chammi_data.load("all", root=ReleaseStore(server.url, cache_dir=tmp_path / "cache", retry=QUICK))
        shard = ds.rows.iloc[0]["shard"]
        server.corrupt(shard, 2000)
        with pytest.raises(
            RemoteReadError, match="does not match the sha256 in release.json after 2 downloads"
        ):
            ds.read_array(0)
        assert not ReleaseStore(server.url, cache_dir=tmp_path / "cache").cache_path(shard).exists()


def test_killed_server_mid_epoch_then_exact_resume(tiny_release, monkeypatch):
    def stream(url):
        return chammi_data.stream(root=ReleaseStore(url, retry=QUICK), split="all", seed=5, buffer=16)

    full = [
        s["cell_id"]
        for s in chammi_data.stream(root=tiny_release, split="all", seed=5, order="shards", buffer=16)
    ]
    with S3Server() as server:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        url = server.upload(tiny_release, "chammi", "r")
        st, tracker = stream(url), StreamTracker()
        it = iter(st)
        seen = []
        for _ in range(20):
            sample = next(it)
            tracker.update(sample)
            seen.append(sample["cell_id"])
        state = st.state_dict(seen=tracker.positions(0))
        server.kill()
        with pytest.raises(RemoteReadError, match=r"s3://chammi/r/shards/.*failed after 3 attempts"):
            for _ in range(60):
                next(it)
    with S3Server() as server:  # back, on another port
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.upload(tiny_release, "chammi", "r")
        resumed = stream(url)
        resumed.load_state_dict(state)
        rest = [s["cell_id"] for s in resumed]
    assert seen + rest == full


def test_webdataset_reads_our_shards_locally_and_over_http(tiny_release, http):
    wds = pytest.importorskip("webdataset")
    from chammi_data.interop.webdataset import shard_urls, wds_decoder

    expected = {s["cell_id"]: s["image"] for s in chammi_data.load("all", root=tiny_release)}
    for root in (tiny_release, http.url):
        urls = shard_urls(root)
        assert len(urls) == 9
        got = {}
        for sample in wds.WebDataset(urls, shardshuffle=False).decode(wds_decoder):
            got[sample["__key__"]] = sample["npy.zst"]
            assert sample["json"]["cell_id"] == sample["__key__"]
        assert set(got) == set(expected)
        for key, img in got.items():
            assert torch.equal(chammi_data.format.release_format.to_float_tensor(img), expected[key])


@pytest.mark.parametrize("client", ["auto", "fsspec"])
def test_s3_ranged_reads_by_either_client_survive_forked_workers(client, s3_env, tiny_release, monkeypatch):
    """obstore (the default for s3:// when installed) and fsspec give the same samples; a DataLoader worker
    forked after the main process used obstore (whose runtime threads a fork does not copy) reads with
    fsspec instead of waiting forever."""
    monkeypatch.setenv("CHAMMI_REMOTE_CLIENT", client)
    ds = chammi_data.load("all", root=s3_env)
    assert (ds.store.obstore is not None) == (client == "auto")
    local = chammi_data.load("all", root=tiny_release)
    np.testing.assert_array_equal(ds.read_array(3), local.read_array(3))  # the runtime starts here
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=list, timeout=60)
    got = {s["cell_id"]: s["image"] for batch in loader for s in batch}
    assert len(got) == len(local)
    assert all(torch.equal(got[local[i]["cell_id"]], local[i]["image"]) for i in range(0, len(local), 7))


@pytest.mark.parametrize("client", ["auto", "fsspec"])
def test_a_release_in_a_generation_folder_is_read_by_either_client(
    client, s3, tiny_release, tmp_path, monkeypatch
):
    """A bucket release that chammi-build published lives under ``g-<id>/``, named by the root release.json:
    cells read through obstore's ranged reads and through fsspec come from that folder, equal to local."""
    import json

    server, _ = s3
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CHAMMI_REMOTE_CLIENT", client)
    gen = "g-0123456789abcdef"
    folder = tmp_path / "release"
    shutil.copytree(tiny_release, folder)
    meta = json.loads((folder / "release.json").read_text())
    meta.setdefault("extra", {})["generation"] = gen
    (folder / "release.json").write_text(json.dumps(meta))
    url = server.upload(folder, "chammi", f"releases/published-{client}/{gen}")
    root = url.rsplit("/", 1)[0]
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": server.endpoint})
    fs.pipe_file(f"{root[5:]}/release.json", (folder / "release.json").read_bytes())
    ds = chammi_data.load("all", root=root)
    assert ds.store.generation_prefix() == gen + "/"
    assert (ds.store.obstore is not None) == (client == "auto")
    local = chammi_data.load("all", root=tiny_release)
    for i in (0, 5, len(local) - 1):
        np.testing.assert_array_equal(ds.read_array(i), local.read_array(i))
