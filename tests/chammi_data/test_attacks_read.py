"""Attacks on the read side: flipped bytes, edited manifests, decompression bombs, oversized members.

Each test tries to make a reader return wrong pixels or spend unbounded memory; every one must end in an
error that names the release, shard and key (or the manifest), never in a sample.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard

import chammi_data
from chammi_data.format.codec import CorruptSampleError
from chammi_data.format.manifest import ManifestDigestError, read_manifest, write_manifest
from chammi_data.format.shards import MAX_RECORD_BYTES, ShardFormatError, iter_samples


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.1, 0.5])
@pytest.mark.parametrize("reader", ["load", "stream-exact", "stream-shards"])
def test_flipped_byte_in_an_image_member_is_an_error_naming_shard_and_key(tiny_release_copy, where, reader):
    m = read_manifest(tiny_release_copy)
    row = m[m["source"] == "hpa"].iloc[3]
    _flip(tiny_release_copy / row["shard"], int(row["offset"] + where * row["nbytes"]))
    pattern = rf"{tiny_release_copy}/{row['shard']}: key '{row['key']}'"
    with pytest.raises(CorruptSampleError, match=pattern):
        if reader == "load":
            for s in chammi_data.load("all", root=tiny_release_copy):
                assert s is not None
        else:
            list(chammi_data.stream(tiny_release_copy, split="all", order=reader.split("-")[1]))


def test_legacy_members_without_frame_checksums_are_checked_by_pixel_sha256(tiny_release_copy):
    """Shards written before frame checksums: the reader falls back to the manifest's pixel sha256."""
    m = read_manifest(tiny_release_copy)
    row = m[m["source"] == "cp"].iloc[0]
    shard = tiny_release_copy / row["shard"]
    data = bytearray(shard.read_bytes())
    member = bytes(data[row["offset"] : row["offset"] + row["nbytes"]])
    raw = zstandard.ZstdDecompressor().decompress(member)
    legacy = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(raw)
    assert len(legacy) == len(member) - 4  # the same frame without its 4-byte checksum
    data[row["offset"] : row["offset"] + row["nbytes"]] = legacy + b"\0" * 4
    # one flipped pixel byte in the uncompressed-literal part would pass zstd; the sha256 catches any change
    bad = bytearray(raw)
    bad[-1] ^= 1
    legacy_bad = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(bad))
    data[row["offset"] : row["offset"] + len(legacy_bad)] = legacy_bad
    shard.write_bytes(bytes(data))
    m.loc[m["cell_id"] == row["cell_id"], "nbytes"] = len(legacy_bad)
    _rewrite_manifest(tiny_release_copy, m)
    ds = chammi_data.load("all", root=tiny_release_copy)
    i = int(np.flatnonzero(ds.rows["cell_id"] == row["cell_id"])[0])
    with pytest.raises(CorruptSampleError, match="checksum mismatch"):
        ds[i]


def _rewrite_manifest(root: Path, m) -> None:
    """Write a manifest and make release.json agree with it (as a careful attacker would)."""
    import hashlib

    parquet, csv = write_manifest(root, m)
    rel = json.loads((root / "release.json").read_text())
    rel["manifest_sha256"] = hashlib.sha256(parquet.read_bytes()).hexdigest()
    rel["manifest_csv_sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    (root / "release.json").write_text(json.dumps(rel))


@pytest.mark.parametrize("edit", ["offset", "label", "split"])
def test_edited_manifest_rows_are_refused_at_open(tiny_release_copy, edit):
    m = read_manifest(tiny_release_copy)
    if edit == "offset":  # point a row at its neighbour's pixels
        m.loc[1, ["offset", "nbytes"]] = m.loc[2, ["offset", "nbytes"]].to_numpy()
    elif edit == "label":
        m.loc[1, "label"] = "Mitochondria" if m.loc[1, "label"] != "Mitochondria" else "Golgi apparatus"
    else:  # a test cell moved to Train
        i = int(np.flatnonzero(m["train_test_split"] != "Train")[0])
        m.loc[i, "train_test_split"] = "Train"
        m.loc[i, ["Task_one", "Task_two", "Task_three", "Task_four"]] = False
    write_manifest(tiny_release_copy, m)
    for open_it in (
        lambda: chammi_data.load("all", root=tiny_release_copy),
        lambda: chammi_data.stream(tiny_release_copy, split="all"),
        lambda: chammi_data.evaluate({"cp": np.ones((24, 2))}, tiny_release_copy, progress=False),
    ):
        with pytest.raises(ManifestDigestError, match="manifest was edited or corrupted"):
            open_it()


def test_offset_edit_with_a_forged_release_json_is_caught_by_the_full_check(tiny_release_copy):
    """Manifest and release.json rewritten together (a deliberate forgery): the frame is intact, so only the
    opt-in pixel sha256 check (verify=True) sees that the row now points at another cell's pixels."""
    m = read_manifest(tiny_release_copy)
    src = m[m["source"] == "wtc11"]
    a, b = src.index[1], src.index[2]
    m.loc[a, ["offset", "nbytes"]] = m.loc[b, ["offset", "nbytes"]].to_numpy()
    _rewrite_manifest(tiny_release_copy, m)
    with pytest.raises(CorruptSampleError, match="checksum mismatch"):
        chammi_data.load("all", root=tiny_release_copy, verify=True)[int(a)]


def _bomb(path: Path, shape: tuple[int, int, int], declare_size: bool) -> int:
    """A zstd .npy member of zeros of ``shape`` uint8 written in chunks (never held in memory); its size."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    total = len(header.getvalue()) + int(np.prod(shape))
    with open(path, "wb") as fh:
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=declare_size, write_checksum=True)
        with cctx.stream_writer(fh, size=total if declare_size else -1, closefd=False) as w:
            w.write(header.getvalue())
            chunk = bytes(1 << 24)
            left = int(np.prod(shape))
            while left:
                w.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path.stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("declare_size", [True, False])
def test_decompression_bombs_are_refused_before_allocating(tmp_path, declare_size):
    size = _bomb(tmp_path / "bomb.bin", (1, 20000, 20000), declare_size)
    assert size < 200_000  # 400 MB of pixels in a small member
    row = {
        "shard": "bomb.bin",
        "key": "cp-bomb",
        "offset": 0,
        "nbytes": size,
        "channels": "nucleus,er,rna,golgi,mito",
        "height": 160,
        "width": 160,
        "dtype": "uint8",
        "sha256": "",
    }
    script = f"""
import resource, json
from chammi_data.format.shards import ShardReader
from chammi_data.format.codec import CorruptSampleError
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    from chammi_data.store.storage import open_store
    ShardReader(open_store({str(tmp_path)!r})).read(json.loads({json.dumps(json.dumps(row))}))
    print("returned")
except CorruptSampleError as exc:
    print("refused:", exc)
print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120).stdout
    assert "refused:" in out and "cp-bomb" in out, out
    grew_kb = int(out.rsplit("grew_kb", 1)[1])
    assert grew_kb < 50_000, out  # not the 400 MB the frame decodes to


def _rss_growth_kb(script: str) -> tuple[str, int]:
    """Run ``script`` in a fresh interpreter after noting its peak RSS; (stdout, growth of the peak in KB)."""
    head = "import resource\nbase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    tail = '\nprint("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n'
    out = subprocess.run(
        [sys.executable, "-c", head + script + tail], capture_output=True, text=True, timeout=120
    ).stdout
    return out, int(out.rsplit("grew_kb", 1)[1])


@pytest.mark.parametrize("declare_size", [True, False])
def test_a_record_declaring_a_huge_shape_is_refused_before_allocating(tmp_path, declare_size):
    """A 39 KB member whose JSON record declares 3 x 20000 x 20000 pixels (and whose frame, when it declares
    a size, agrees): iter_samples used to allocate 1.2 GB (declared) or 2.4 GB (undeclared)."""
    shape = (3, 20000, 20000)
    bomb = tmp_path / "bomb.bin"
    size = _bomb(bomb, shape, declare_size)
    assert size < 60_000
    record = {
        "cell_id": "wtc11-bomb",
        "source": "wtc11",
        "label": "M0",
        "channels": ["nucleus", "membrane", "protein"],
        "shape": list(shape),
        "dtype": "uint8",
        "sha256": "",
        "meta": {},
    }
    shard = tmp_path / "bomb.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("wtc11-bomb.json", json.dumps(record).encode()), ("wtc11-bomb.npy.zst", None)):
            info = tarfile.TarInfo(name)
            info.size = len(data) if data is not None else size
            tar.addfile(info, io.BytesIO(data) if data is not None else open(bomb, "rb"))
    out, grew_kb = _rss_growth_kb(
        f"""
from chammi_data.format.codec import CorruptSampleError
from chammi_data.format.shards import iter_samples
try:
    list(iter_samples({str(shard)!r}))
    print("returned")
except CorruptSampleError as exc:
    print("refused:", exc)
"""
    )
    assert "refused:" in out and "wtc11-bomb" in out, out
    assert grew_kb < 50_000, out


def test_oversized_json_member_is_refused_from_its_header(tmp_path):
    shard = tmp_path / "big.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("cp-x.json")
        info.size = MAX_RECORD_BYTES + 1
        tar.addfile(info, io.BytesIO(b"{" + b" " * (MAX_RECORD_BYTES - 1) + b"}"))
    with pytest.raises(
        ShardFormatError, match=r"cp-x.json.*declares \d+ bytes, more than the 1048576-byte limit"
    ):
        list(iter_samples(shard))


def test_keys_that_are_not_cell_ids_are_refused(tmp_path):
    shard = tmp_path / "odd.tar"
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("cp x;rm.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ShardFormatError, match="is not a valid cell id"):
        list(iter_samples(shard))


def test_flipped_byte_in_a_zarr_chunk_is_an_error(tiny_release_copy):
    """10 cells per zarr shard: shard file c/1/0/0/0 starts with the chunk of hpa row 10."""
    _flip(tiny_release_copy / "zarr" / "hpa.zarr" / "images" / "c" / "1" / "0" / "0" / "0", 100)
    ds = chammi_data.load("all", root=tiny_release_copy, sources="hpa", backend="zarr")
    with pytest.raises(CorruptSampleError, match=r"hpa.zarr: row 10 .*unreadable chunk"):
        ds.read_array(10)
    np.testing.assert_array_equal(
        ds.read_array(9), chammi_data.load("all", root=tiny_release_copy, sources="hpa").read_array(9)
    )
