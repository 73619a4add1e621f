"""Safe shard reading: hostile members, truncation and corruption give errors naming shard and key."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from chammi_data.format.codec import CorruptSampleError, encode_image
from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import canonical_json
from chammi_data.format.shards import ShardFormatError, ShardReader, index_shard, iter_samples, read_sample
from chammi_data.store.storage import open_store


def _member(name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = len(data), type_, linkname, 0
    return info, data


def _sample(cell, key: str | None = None) -> list[tuple]:
    key = key or cell.cell_id
    return [
        _member(f"{key}.json", canonical_json(cell.record()).encode()),
        _member(f"{key}.npy.zst", encode_image(cell.image)),
    ]


def _tar(path: Path, members: list[tuple], fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_reads_a_clean_shard(tiny_release: Path):
    shard = sorted((tiny_release / "shards" / "hpa").glob("*.tar"))[0]
    samples = list(iter_samples(shard, verify=True))
    assert len(samples) == 10 and len(index_shard(shard)) == 20
    m = read_manifest(tiny_release).set_index("cell_id")
    first = samples[0]
    assert set(first) == {"image", "channels", "source", "label", "cell_id", "meta"}
    assert first["image"].shape == (4, 16, 16) and first["image"].dtype == np.uint8
    row = m.loc[first["cell_id"]]
    assert (first["source"], first["label"], ",".join(first["channels"])) == (
        "hpa",
        row["label"],
        row["channels"],
    )
    assert (
        first["meta"]["shard"] == str(shard) and first["meta"]["train_test_split"] == row["train_test_split"]
    )


@pytest.mark.parametrize(
    "name,type_,match",
    [
        ("/etc/evil.json", tarfile.REGTYPE, "absolute path"),
        ("../evil.json", tarfile.REGTYPE, r"'\.\.'"),
        ("sub/evil.json", tarfile.REGTYPE, "folder"),
        ("evil.json", tarfile.SYMTYPE, "symbolic link"),
        ("evil.json", tarfile.LNKTYPE, "hard link"),
        ("evil.json", tarfile.CHRTYPE, "character device"),
        ("evil.json", tarfile.BLKTYPE, "block device"),
        ("evil.json", tarfile.FIFOTYPE, "fifo"),
        ("evil", tarfile.DIRTYPE, "directory"),
        ("ev.il.json", tarfile.REGTYPE, "no dots"),
        ("evil.pickle", tarfile.REGTYPE, "unexpected extension"),
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, cell_factory, name, type_, match):
    cell = cell_factory("cp", 1, seed=0)[0]
    link = "/etc/passwd" if type_ in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    shard = _tar(
        tmp_path / "bad.tar",
        _sample(cell) + [_member(name, b"{}" if type_ == tarfile.REGTYPE else b"", type_, link)],
    )
    with pytest.raises(ShardFormatError, match=match) as err:
        list(iter_samples(shard))
    assert "bad.tar" in str(err.value)
    assert list(tmp_path.iterdir()) == [shard]  # nothing extracted


def test_pax_headers_are_refused(tmp_path: Path, cell_factory):
    cell = cell_factory("cp", 1, seed=0)[0]
    info, data = _member(f"{cell.cell_id}.json", b"{}")
    info.pax_headers = {"comment": "x"}
    shard = _tar(tmp_path / "pax.tar", [(info, data)], fmt=tarfile.PAX_FORMAT)
    with pytest.raises(ShardFormatError, match="pax"):
        list(iter_samples(shard))


def test_missing_member_and_duplicate_key(tmp_path: Path, cell_factory):
    a, b = cell_factory("cp", 2, seed=0)
    shard = _tar(tmp_path / "m.tar", _sample(a)[:1] + _sample(b))
    with pytest.raises(ShardFormatError, match=f"{a.cell_id}.*no npy.zst"):
        list(iter_samples(shard))
    shard = _tar(tmp_path / "d.tar", _sample(a) + _sample(b) + _sample(a))
    with pytest.raises(ShardFormatError, match="appears twice"):
        list(iter_samples(shard))
    shard = _tar(tmp_path / "o.tar", _sample(a)[::-1])
    with pytest.raises(ShardFormatError, match="before"):
        list(iter_samples(shard))


def test_record_shape_mismatch(tmp_path: Path, cell_factory):
    a, b = cell_factory("cp", 2, seed=0)
    other = cell_factory("hpa", 1, seed=0)[0]
    members = [_sample(a)[0], _member(f"{a.cell_id}.npy.zst", encode_image(other.image))]
    # the record's shape bounds the decode: the bigger HPA image is refused before it is allocated
    with pytest.raises(CorruptSampleError, match=r"expected 1280 bytes of pixels for \(5, 16, 16\) uint8"):
        list(iter_samples(_tar(tmp_path / "s.tar", members)))


def test_truncation_and_flipped_bytes(tiny_release_copy: Path):
    row = read_manifest(tiny_release_copy).query("source == 'cp'").iloc[1]
    shard = tiny_release_copy / row["shard"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardFormatError, match="truncated") as err:
        list(iter_samples(shard))
    assert shard.name in str(err.value)
    with pytest.raises(ShardFormatError, match="truncated"):
        index_shard(shard)
    corrupted = bytearray(data)
    corrupted[row["offset"] - 512 + 100] ^= 0xFF  # mode field of the 2nd sample's image header
    shard.write_bytes(bytes(corrupted))
    with pytest.raises(ShardFormatError, match="checksum") as err:
        list(iter_samples(shard))
    assert row["key"] in str(err.value)


def test_pread_by_offset_and_pixel_checksum(tiny_release_copy: Path):
    m = read_manifest(tiny_release_copy)
    row = m.iloc[5].to_dict()
    img = read_sample(tiny_release_copy, row, verify=True)
    assert img.shape == (3, 16, 24) and img.dtype == np.uint8
    bad = dict(row, sha256="0" * 64)
    with pytest.raises(ShardFormatError, match=row["key"]):
        read_sample(tiny_release_copy, bad, verify=True)
    path = tiny_release_copy / row["shard"]
    blob = bytearray(path.read_bytes())
    blob[row["offset"] + 20] ^= 0xFF  # inside the zstd frame
    path.write_bytes(bytes(blob))
    with pytest.raises(Exception, match=row["key"]):
        ShardReader(open_store(tiny_release_copy)).read(row, verify=True)


def test_fast_decode_matches_codec():
    import zstandard

    from chammi_data.format.codec import CorruptSampleError, decode_image
    from chammi_data.format.shards import decode_image_fast

    for dtype in (np.uint8, np.uint16):
        img = (np.arange(3 * 5 * 7) * 37 % 251).astype(dtype).reshape(3, 5, 7)
        data = encode_image(img)
        fast = decode_image_fast(data, where="s:k")
        assert fast.dtype == decode_image(data).dtype and fast.flags.writeable
        np.testing.assert_array_equal(fast, img)
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(img))  # another header: general path, same result
    np.testing.assert_array_equal(decode_image_fast(zstandard.ZstdCompressor().compress(buf.getvalue())), img)
    raw = zstandard.ZstdDecompressor().decompress(encode_image(img))
    with pytest.raises(CorruptSampleError, match="s:k"):
        decode_image_fast(zstandard.ZstdCompressor().compress(raw[:-3]), where="s:k")
    with pytest.raises(CorruptSampleError, match="s:k"):
        decode_image_fast(b"not zstd", where="s:k")
    data = encode_image(img)
    with pytest.raises(CorruptSampleError, match="s:k"):  # frame cut short: fewer bytes than it declares
        decode_image_fast(data[: len(data) // 2], where="s:k")
    # a frame header that declares 2**40 bytes is refused before anything is allocated
    # (magic, descriptor 0xE0 = single segment + 8-byte content size, the size, then a 3-byte block header)
    fake = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 40).to_bytes(8, "little") + b"\x01\x00\x00"
    with pytest.raises(CorruptSampleError, match="declares"):
        decode_image_fast(fake, where="s:k")
