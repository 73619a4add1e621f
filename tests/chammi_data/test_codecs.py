"""The image member codecs (zstd, lz4, none): every reader reads all three, every read stays verified.

A release of each codec is written from the same cells; each must give the same pixels through ``load``,
``stream`` (both orders), ``shards.iter_samples``, ``validate_release``, ``export_official`` and the
webdataset decoder, and a flipped byte in a member of any codec must be an error naming the shard and key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import chammi_data
from chammi_data.format.codec import (
    CODECS,
    CorruptSampleError,
    codec_matches,
    decode_image,
    encode_image,
    frame_info,
    member_codec,
)
from chammi_data.format.manifest import read_manifest
from chammi_data.format.shards import decode_image_fast, iter_samples
from chammi_data.format.validate import validate_release
from chammi_data.format.writer import ReleaseWriter
from chammi_data.interop.official_export import export_official
from chammi_data.interop.webdataset import wds_decoder
from tests.conftest import TINY_SEED, make_cells


def _write(root: Path, codec: str | None) -> Path:
    kwargs = {} if codec is None else {"codec": codec}
    writer = ReleaseWriter(root, cells_per_shard=5, config={"fixture": "codecs"}, progress=False, **kwargs)
    for source in ("wtc11", "cp"):
        writer.add_source(source, make_cells(source, 8, seed=TINY_SEED[source]))
    writer.close()
    return root


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("codecs")
    return {codec: _write(base / codec, codec) for codec in CODECS}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("codec", CODECS)
def test_encode_decode_round_trip_with_declared_size_and_checksum(codec: str):
    rng = np.random.default_rng(1)
    for image in (
        rng.integers(0, 255, (3, 40, 50)).astype(np.uint8),  # incompressible
        np.zeros((5, 16, 16), np.uint8),
        (rng.integers(0, 60000, (2, 300, 300))).astype(np.uint16),  # several zstd blocks when stored raw
    ):
        member = encode_image(image, codec=codec)
        frame = frame_info(member)
        assert frame.content_size > image.nbytes and frame.has_checksum
        assert codec_matches(member, codec)
        np.testing.assert_array_equal(decode_image(member), image)
        np.testing.assert_array_equal(decode_image_fast(member), image)
        assert encode_image(image, codec=codec) == member  # deterministic
    if codec == "none":
        assert member_codec(member) == "none" and len(member) < image.nbytes + 1024


def test_the_default_codec_writes_the_same_bytes_as_before(tmp_path: Path, releases: dict[str, Path]):
    """No codec given and codec='zstd' give byte-identical releases; release.json records no codec then."""
    default = _write(tmp_path / "default", None)
    assert _files(default) == _files(releases["zstd"])
    assert "codec" not in json.loads((default / "release.json").read_text())
    for codec in ("lz4", "none"):
        assert json.loads((releases[codec] / "release.json").read_text())["codec"] == codec


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_every_reader_reads_every_codec(releases: dict[str, Path], codec: str):
    ref = releases["zstd"]
    root = releases[codec]
    ref_ds = chammi_data.load("all", root=ref)
    want = {ref_ds.rows["cell_id"][i]: ref_ds.read_array(i) for i in range(len(ref_ds))}
    assert len(want) == 16
    assert read_manifest(root)["sha256"].tolist() == read_manifest(ref)["sha256"].tolist()
    for ds in (chammi_data.load("all", root=root), chammi_data.load("all", root=root, backend="zarr")):
        for i in range(len(ds)):
            assert np.array_equal(ds.read_array(i), want[ds.rows["cell_id"][i]])
    for order in ("exact", "shards"):
        got = list(chammi_data.stream(root, split="all", order=order, output="uint8"))
        assert len(got) == 16
        for s in got:
            assert np.array_equal(s["image"], want[s["cell_id"]])
    suffix = ".npy.lz4" if codec == "lz4" else ".npy.zst"
    for shard in sorted((root / "shards").rglob("*.tar")):
        for s in iter_samples(shard, verify=True):
            assert np.array_equal(s["image"], want[s["cell_id"]])
        import tarfile

        with tarfile.open(shard) as tar:
            names = tar.getnames()
        assert all(n.endswith((".json", suffix)) for n in names)
        for name in names:
            if name.endswith(suffix):
                with tarfile.open(shard) as tar:
                    data = tar.extractfile(name).read()  # type: ignore[union-attr]
                arr = wds_decoder(name, data)
                assert arr is not None and np.array_equal(arr, want[name.split(".")[0]])
    report = validate_release(root, progress=False)
    assert report.ok, report.summary()


@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_export_reads_every_codec(releases: dict[str, Path], codec: str, tmp_path: Path):
    export_official(releases["zstd"], tmp_path / "a", sources=["cp"])
    export_official(releases[codec], tmp_path / "b", sources=["cp"])
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert a and a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("reader", ["load", "stream-shards"])
def test_a_flipped_byte_in_a_member_of_any_codec_is_an_error(
    releases: dict[str, Path], codec: str, reader: str, tmp_path: Path
):
    import shutil

    root = tmp_path / "rel"
    shutil.copytree(releases[codec], root)
    m = read_manifest(root)
    row = m[m["source"] == "cp"].iloc[2]
    path = root / row["shard"]
    data = bytearray(path.read_bytes())
    data[int(row["offset"] + row["nbytes"] // 2)] ^= 0x21
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSampleError, match=rf"{row['shard']}: key '{row['key']}'"):
        if reader == "load":
            list(chammi_data.load("all", root=root))
        else:
            list(chammi_data.stream(root, split="all", order="shards"))


def test_validate_names_members_of_another_codec(releases: dict[str, Path], tmp_path: Path):
    import shutil

    root = tmp_path / "rel"
    shutil.copytree(releases["zstd"], root)
    rel = json.loads((root / "release.json").read_text())
    rel["codec"] = "lz4"
    (root / "release.json").write_text(json.dumps(rel))
    problems = validate_release(root, progress=False).problems
    assert len(problems) == 16 and all("image member is not a lz4 member" in p for p in problems)


def test_unknown_codec_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown member codec 'brotli'; valid: zstd, lz4, none"):
        ReleaseWriter(tmp_path, codec="brotli")
    with pytest.raises(ValueError, match="unknown member codec"):
        encode_image(np.zeros((1, 2, 2), np.uint8), codec="gzip")
