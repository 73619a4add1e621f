"""chammi validate: a clean release passes; every kind of damage is found and named."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

import chammi_data.format.zarr_store as zarr_store
from chammi_cli import main as chammi
from chammi_data.format.manifest import read_manifest, write_manifest
from chammi_data.format.validate import validate_release


def _problems(root: Path) -> list[str]:
    rep = validate_release(root, progress=False)
    assert rep.ok == (not rep.problems)
    return rep.problems


def _row(root: Path, source: str = "hpa", i: int = 3):
    return read_manifest(root).query(f"source == '{source}'").iloc[i]


def test_clean_release_passes(tiny_release: Path, capsys):
    assert _problems(tiny_release) == []
    assert chammi(["validate", str(tiny_release), "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out


def test_flipped_byte_in_image(tiny_release_copy: Path, capsys):
    row = _row(tiny_release_copy)
    path = tiny_release_copy / row["shard"]
    blob = bytearray(path.read_bytes())
    blob[row["offset"] + row["nbytes"] // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    problems = _problems(tiny_release_copy)
    assert any(row["shard"] in p and "sha256 differs" in p for p in problems)
    assert any(row["key"] in p for p in problems)
    assert chammi(["validate", str(tiny_release_copy), "--quiet"]) == 1
    assert row["key"] in capsys.readouterr().out


def test_truncated_shard(tiny_release_copy: Path):
    row = _row(tiny_release_copy, "cp", 0)
    path = tiny_release_copy / row["shard"]
    path.write_bytes(path.read_bytes()[: row["offset"] + 10])
    problems = _problems(tiny_release_copy)
    assert any("truncated" in p and row["shard"] in p for p in problems)
    assert any("no image member" in p for p in problems)


def test_missing_member(tiny_release_copy: Path):
    row = _row(tiny_release_copy, "wtc11", 1)
    path = tiny_release_copy / row["shard"]
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m, data in members:
            if m.name != f"{row['key']}.json":
                dst.addfile(m, io.BytesIO(data))
    problems = _problems(tiny_release_copy)
    assert any(row["key"] in p and "no valid json record" in p for p in problems)


def test_zarr_row_changed(tiny_release_copy: Path):
    row = _row(tiny_release_copy, "hpa", 7)
    arr = zarr_store.open_images(tiny_release_copy, "hpa", mode="r+")
    img = np.asarray(arr[7])
    img[0, 0, 0] ^= 0xFF
    arr[7] = img  # note: rewrites the whole zarr shard, only row 7 differs
    problems = _problems(tiny_release_copy)
    assert problems == [
        f"zarr/hpa.zarr: row 7 ({row['cell_id']}): image sha256 and crc32c differ from the manifest"
    ]


def test_manifest_edited_and_extra_shard(tiny_release_copy: Path):
    m = read_manifest(tiny_release_copy)
    m.loc[2, "label"] = "M9"
    write_manifest(tiny_release_copy, m)
    extra = tiny_release_copy / "shards" / "cp" / "cp-000099.tar"
    extra.write_bytes(b"\0" * 1024)
    problems = _problems(tiny_release_copy)
    assert any(p.startswith("manifest.parquet: sha256 differs") for p in problems)
    assert any(m.loc[2, "key"] in p and "label" in p for p in problems)
    assert any("cp-000099.tar" in p and "not listed" in p for p in problems)


def test_missing_release(tmp_path: Path):
    problems = _problems(tmp_path)
    assert len(problems) == 1 and "chammi-build" in problems[0]
