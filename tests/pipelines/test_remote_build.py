"""Builds where the data lives, against real servers on 127.0.0.1: raw data in an anonymous-read bucket and
over HTTP (with faults: 5xx answers, connection resets, a slow server, a server killed mid-build), releases
written into a credentialed bucket - byte-identical to the local build, every file and release.json too."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

import chammi_data
from chammi_data.format.manifest import read_manifest
from tests.pipelines.remote import bucket_release, chammi_build, local_release, make_public, s3fs_of
from tests.servers import HTTPServer, S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(raw_tree: Path):
    """moto with ``raw`` (anyone may read: the raw tree under ``tree/``), ``private`` (the same tree, signed
    reads only) and ``out`` (releases)."""
    with S3Server() as server:
        server.upload(raw_tree, "raw", "tree")
        server.upload(raw_tree / "wtc11", "private", "wtc11")
        s3fs_of(server).mkdir("out")
        make_public(server, "raw")
        yield server


@pytest.fixture(scope="module")
def local_all(raw_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local-to-local build of the raw tree, all three sources (the reference bytes)."""
    out = tmp_path_factory.mktemp("local") / "rel"
    run = chammi_build("--source", "all", "--input", str(raw_tree), "--output", str(out), "--quiet")
    assert run.returncode == 0, run.stderr
    return out


def test_bucket_to_bucket_is_byte_identical_to_local_to_local(s3, local_all: Path, monkeypatch) -> None:
    """Anonymous reads of the raw bucket, signed writes of the release: every file of the release, the
    generation's release.json and the committed root release.json, has the local build's bytes."""
    run = chammi_build(
        "--source", "all", "--input", "s3://raw/tree", "--anon", "--output", "s3://out/all", "--quiet",
        env=s3.env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    fs = s3fs_of(s3)
    files, gen = bucket_release(fs, "s3://out/all")
    assert files == local_release(local_all)
    assert fs.cat_file("out/all/release.json") == (local_all / "release.json").read_bytes()
    assert json.loads((local_all / "release.json").read_text())["extra"]["generation"] == gen
    left = sorted(k.split("/", 2)[2] for k in fs.find("out/all") if not k.startswith(f"out/all/{gen}/"))
    assert left == ["build_report.json", "release.json"]  # no spills, lock or sample left behind
    assert not fs.call_s3("list_multipart_uploads", Bucket="out").get("Uploads")
    report = json.loads(fs.cat_file("out/all/build_report.json"))
    assert report["inputs"]["cp"] == "s3://raw/tree/cp" and report["status"] == "ok"
    for key, value in s3.env().items():  # for this test only: later tests start servers of their own
        monkeypatch.setenv(key, value)
    remote = chammi_data.load("all", root="s3://out/all")
    local = chammi_data.load("all", root=local_all)
    assert len(remote) == len(local) and remote[len(local) - 1]["cell_id"] == local[len(local) - 1]["cell_id"]


def test_a_private_bucket_read_anonymously_is_one_line_naming_the_object(s3) -> None:
    run = chammi_build(
        "--source", "wtc11", "--input", "s3://private/wtc11", "--anon", "--output", "s3://out/never",
        "--quiet", env=s3.env(),
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    line = run.stderr.strip()
    assert len(line.splitlines()) == 1 and "s3://private/wtc11/metadata.csv" in line
    assert "object refused" in line and "anonymous access" in line
    assert not s3fs_of(s3).find("out/never")  # refused before anything was written


def test_cp_load_data_naming_its_images_by_s3_url_is_read_as_it_is(
    s3, raw_tree: Path, tmp_path: Path
) -> None:
    """The Gallery's form: a gzipped load_data.csv whose URL_<Channel> columns hold s3:// URLs of images kept
    elsewhere in the bucket; only the tables sit under --input. The cells are the local build's cells."""
    fs = s3fs_of(s3)
    for pdir in sorted(p.parent for p in (raw_tree / "cp").rglob("load_data.csv")):
        rel = pdir.relative_to(raw_tree / "cp").as_posix()
        table = pd.read_csv(pdir / "load_data.csv", dtype=str)
        for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
            table[f"URL_Orig{ch}"] = [
                f"s3://raw/gallery-images/{rel}/{n}" for n in table.pop(f"FileName_Orig{ch}")
            ]
            table.pop(f"PathName_Orig{ch}")
        fs.pipe_file(
            f"raw/workspace/{rel}/load_data.csv.gz", gzip.compress(table.to_csv(index=False).encode())
        )
        for img in (pdir / "images").iterdir():
            fs.pipe_file(f"raw/gallery-images/{rel}/{img.name}", img.read_bytes())
        for f in pdir.rglob("Nuclei.csv"):
            fs.pipe_file(f"raw/workspace/{f.relative_to(raw_tree / 'cp').as_posix()}", f.read_bytes())
    for f in (raw_tree / "cp").glob("*/platemaps/*"):
        fs.pipe_file(f"raw/workspace/{f.relative_to(raw_tree / 'cp').as_posix()}", f.read_bytes())
    out = tmp_path / "rel"
    run = chammi_build(
        "--source", "cp", "--input", "s3://raw/workspace", "--anon", "--output", str(out), "--quiet",
        env=s3.env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    local = tmp_path / "local"
    assert (
        chammi_build(
            "--source", "cp", "--input", str(raw_tree / "cp"), "--output", str(local), "--quiet"
        ).returncode
        == 0
    )
    got, want = read_manifest(out), read_manifest(local)
    assert list(got["cell_id"]) == list(want["cell_id"]) and list(got["sha256"]) == list(want["sha256"])
    assert json.loads(got["meta"].iloc[0])["files"]["DNA"].startswith("s3://raw/gallery-images/")


def test_the_cell_painting_gallery_layout_is_read_as_it_is(s3, raw_tree: Path, tmp_path: Path) -> None:
    """A plate laid out as the Gallery publishes it: --input at <project>/<source>/workspace, load_data_csv/
    <batch>/<plate>/load_data.csv.gz naming the images by the CellProfiler machine's paths, platemaps in
    metadata/platemaps/<batch>/, nuclei in analysis/<batch>/<plate>/, illumination functions in
    images/<batch>/illum/<plate>/: the cells (ids, pixels, dataset) of the same plate in our layout."""
    import numpy as np

    fs, src = s3fs_of(s3), raw_tree / "cp" / "LINCS" / "P1"
    base, machine = "raw/cpg0004-lincs/broad", "/home/ubuntu/bucket/projects/2016_x/B1/images/P1__M1/Images"
    table = pd.read_csv(src / "load_data.csv", dtype=str)
    for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
        table[f"PathName_Orig{ch}"] = machine
    fs.pipe_file(
        f"{base}/workspace/load_data_csv/B1/P1/load_data.csv.gz",
        gzip.compress(table.to_csv(index=False).encode()),
    )
    for img in (src / "images").iterdir():
        fs.pipe_file(f"{base}/images/B1/images/P1__M1/Images/{img.name}", img.read_bytes())
    for f in (src / "analysis").rglob("Nuclei.csv"):
        fs.pipe_file(f"{base}/workspace/analysis/B1/P1/analysis/{f.parent.name}/Nuclei.csv", f.read_bytes())
    pm = raw_tree / "cp" / "LINCS" / "platemaps"
    fs.pipe_file(
        f"{base}/workspace/metadata/platemaps/B1/barcode_platemap.csv",
        (pm / "barcode_platemap.csv").read_bytes(),
    )
    fs.pipe_file(f"{base}/workspace/metadata/platemaps/B1/platemap/MAP1.txt", (pm / "MAP1.txt").read_bytes())
    ours = tmp_path / "ours" / "LINCS"
    shutil.copytree(raw_tree / "cp" / "LINCS", ours)
    shutil.rmtree(ours / "P2", ignore_errors=True)
    (ours / "P1" / "illum").mkdir()
    vignette = np.linspace(0.6, 1.0, 200)[None, :] * np.ones((200, 1))
    for ch in ("DNA", "ER", "RNA", "AGP", "Mito"):
        buf = io.BytesIO()
        np.save(buf, vignette)
        fs.pipe_file(f"{base}/images/B1/illum/P1/P1_Illum{ch}.npy", buf.getvalue())
        np.save(ours / "P1" / "illum" / f"P1_Illum{ch}.npy", vignette)
    out, local = tmp_path / "gallery", tmp_path / "local"
    run = chammi_build(
        "--source", "cp", "--input", f"s3://{base}/workspace", "--anon", "--output", str(out), env=s3.env()
    )
    assert run.returncode == 0, run.stderr
    assert chammi_build("--source", "cp", "--input", str(ours.parent), "--output", str(local)).returncode == 0
    got, want = read_manifest(out), read_manifest(local)
    assert len(got) == 4 and list(got["cell_id"]) == list(want["cell_id"])
    assert list(got["sha256"]) == list(want["sha256"]) and set(got["dataset"]) == {"LINCS"}
    meta = json.loads(got["meta"].iloc[0])
    assert meta["file"].startswith("s3://raw/cpg0004-lincs/broad/images/B1/images/P1__M1/Images/")
    assert meta["illum"] and meta["positions_file"].startswith("analysis/B1/P1/analysis/")


def test_wtc_and_hpa_over_http_with_faults_and_a_slow_server(raw_tree: Path, tmp_path: Path) -> None:
    """HTTP inputs: WTC-11's metadata.csv naming crop_raw relative to itself, HPA's tables and fields; 503s
    and connection resets are retried, a server adding 150 ms to every request is only slower: the release
    is the local build's."""
    with HTTPServer(raw_tree) as http, HTTPServer(raw_tree, delay_ms=150) as slow:
        http.fault(2, "503", path="wtc11/crop_raw/")
        http.fault(2, "reset", path="wtc11/crop_raw/")
        slow.fault(1, "500", path="hpa/train/")
        for source, server in (("wtc11", http), ("hpa", slow)):
            out, local = tmp_path / f"{source}-http", tmp_path / f"{source}-local"
            run = chammi_build("--source", source, "--input", f"{server.url}/{source}", "--output", str(out))
            assert run.returncode == 0, run.stderr
            assert (
                chammi_build(
                    "--source", source, "--input", str(raw_tree / source), "--output", str(local)
                ).returncode
                == 0
            )
            assert local_release(out) == local_release(local)
        assert http.requests() > 42  # the cells were read over HTTP, one object per cell and the retries


def test_a_server_killed_mid_build_stops_it_in_one_line_and_a_rerun_resumes(
    raw_tree: Path, tmp_path: Path
) -> None:
    http = HTTPServer(raw_tree, delay_ms=40)
    http.start()
    port = http.port
    out = tmp_path / "rel"
    args = ("--source", "wtc11", "--input", f"{http.url}/wtc11", "--output", str(out), "--quiet")
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "chammi_cli.build", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    units = out / ".work" / "wtc11" / "units"
    deadline = time.monotonic() + 120
    while len(list(units.glob("*.spill"))) < 8:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    http.kill()
    assert proc.wait(300) == 1
    err = proc.stderr.read().strip()
    assert (
        len(err.splitlines()) == 1 and "the build stopped:" in err and f"{http.url}/wtc11/crop_raw/" in err
    ), err
    assert "rerun the same command to resume" in err and not (out / "release.json").exists()
    done = len(list(units.glob("*.spill")))
    again = HTTPServer(raw_tree)
    again.port = port  # the same address again: the units' spills name it
    with again:
        rerun = chammi_build(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "build_report.json").read_text())["accounting"]["wtc11"]["units_reused"] >= done
    local = tmp_path / "local"
    assert (
        chammi_build(
            "--source", "wtc11", "--input", str(raw_tree / "wtc11"), "--output", str(local)
        ).returncode
        == 0
    )
    assert local_release(out) == local_release(local)


def test_each_source_from_its_own_locations(s3, raw_tree: Path, local_all: Path, tmp_path: Path) -> None:
    """--input SOURCE=LOCATION: WTC-11 from the bucket, HPA over HTTP, Cell Painting from two prefixes (its
    two datasets) built as one source; --anon applies to the bucket only. The cells are the local build's."""
    with HTTPServer(raw_tree) as http:
        out = tmp_path / "rel"
        run = chammi_build(
            "--source", "all", "--anon", "--output", str(out), "--quiet",
            "--input", "wtc11=s3://raw/tree/wtc11", "--input", f"hpa={http.url}/hpa",
            "--input", "cp=s3://raw/tree/cp/LINCS", "--input", "cp=s3://raw/tree/cp/CDRP",
            env=s3.env(),
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got, want = read_manifest(out), read_manifest(local_all)
    for col in ("cell_id", "sha256", "label", "train_test_split", "dataset"):
        assert list(got[col]) == list(want[col]), col
    report = json.loads((out / "build_report.json").read_text())
    assert report["inputs"]["cp"] == ["s3://raw/tree/cp/LINCS", "s3://raw/tree/cp/CDRP"]
    bad = chammi_build(
        "--source", "all", "--input", "wtc11=s3://raw/tree/wtc11", "--output", str(tmp_path / "x")
    )
    assert bad.returncode == 2 and "names no location for hpa, cp" in bad.stderr
