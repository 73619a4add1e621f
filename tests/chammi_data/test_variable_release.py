"""A variable source in a release: the guidance tail of a member, image groups in tar and zarr, attacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zstandard

from chammi_data import load
from chammi_data.format.codec import MAX_TAIL_BYTES, CorruptSampleError, Guidance, decode_image, encode_image
from chammi_data.format.members import decode_image_fast, decode_member
from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.shards import decode_row
from chammi_data.format.validate import validate_release
from chammi_data.format.writer import ReleaseWriter
from chammi_data.format.zarr_store import open_zarr_images, zarr_path
from chammi_data.store.storage import open_store

IMG = np.arange(2 * 9 * 12, dtype=np.uint8).reshape(2, 9, 12)
CELLS = Guidance(np.array([[1, 2], [11, 8]], np.int32), np.array([30.5, 12.0], np.float32))


def test_the_cells_ride_after_the_pixels_and_plain_readers_ignore_them():
    data = encode_image(IMG, guidance=CELLS)
    image, guidance = decode_member(data, "m", {"shape": IMG.shape, "dtype": "uint8"})
    np.testing.assert_array_equal(image, IMG)
    np.testing.assert_array_equal(guidance.centroids, CELLS.centroids)
    np.testing.assert_array_equal(guidance.sizes, CELLS.sizes)
    np.testing.assert_array_equal(decode_image(data, "m"), IMG)  # np.load reads the image, ignores the rest
    empty = decode_member(encode_image(IMG, guidance=Guidance(np.zeros((0, 2)))))[1]
    assert empty is not None and empty.centroids.shape == (0, 2)  # an image without cells
    assert decode_member(encode_image(IMG))[1] is None
    with pytest.raises(CorruptSampleError, match="bytes for shape"):  # a CHAMMI member may carry nothing more
        decode_image_fast(data, "m")
    with pytest.raises(CorruptSampleError, match="bytes for shape"):
        decode_row(data, "cp shard: key 'x'", {"source": "cp", "shape": IMG.shape, "dtype": "uint8"})
    image, guidance = decode_row(data, "w", {"source": "chammi75", "shape": IMG.shape, "dtype": "uint8"})
    assert guidance is not None and len(guidance.centroids) == 2


@pytest.mark.parametrize(
    "tail,match",
    [
        (lambda t: t[:-3], "truncated"),
        (lambda t: t + b"garbage!", "malformed .* 8 bytes left"),
        (lambda t: t.replace(b"<i4", b"<f8", 1), "not a centroid/size .npy"),
    ],
)
def test_a_damaged_tail_is_an_error(tail, match):
    import io

    buf = io.BytesIO()
    np.save(buf, IMG)
    body = encode_image(IMG, guidance=CELLS)
    raw = zstandard.ZstdDecompressor().decompress(body)
    bad = buf.getvalue() + tail(raw[len(buf.getvalue()) :])
    data = zstandard.ZstdCompressor(write_content_size=True, write_checksum=True).compress(bad)
    with pytest.raises(CorruptSampleError, match=match):
        decode_member(data, "m", {"shape": IMG.shape, "dtype": "uint8"})


def test_a_tail_cannot_inflate_past_its_bound():
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(
        bytes(IMG.nbytes + MAX_TAIL_BYTES + 5000)
    )
    with pytest.raises(CorruptSampleError, match="declares"):
        decode_member(bomb, "m", {"shape": IMG.shape, "dtype": "uint8"})


def _cell(k: int, study: str, channels: tuple[str, ...], hw: tuple[int, int]) -> Cell:
    rng = np.random.default_rng(k)
    image = rng.integers(0, 255, (len(channels), *hw), dtype=np.uint8)
    cells = Guidance(np.array([[hw[1] // 2, hw[0] // 2]], np.int32))
    meta = {"imaging.multi_channel_id": f"{study}/{k}", "experiment.study": study}
    cid = make_cell_id("chammi75", study, k)
    return Cell(
        image, channels, "chammi75", "", cid, meta, "Train", groups={"dataset": study}, guidance=cells
    )


def test_cells_and_guidance_are_checked_when_made():
    with pytest.raises(ValueError, match="are not CHAMMI-75 channel types"):
        _cell(0, "s", ("mito",), (8, 8))
    with pytest.raises(ValueError, match="only images of chammi75(, [a-z_0-9]+)* carry guidance"):
        Cell(IMG, ("nucleus", "er"), "cp", "DMSO", "cp-x", guidance=CELLS)
    with pytest.raises(ValueError, match="outside the 12 x 9 image"):
        Cell(IMG, ("nucleus", "er"), "chammi75", "", "c-x", guidance=Guidance(np.array([[12, 0]], np.int32)))


@pytest.fixture
def grouped(tmp_path: Path) -> Path:
    """Groups a, b, then a again (a new group: groups are runs), 3 cells per shard."""
    cells = (
        [_cell(k, "a", ("nucleus", "er"), (10, 14)) for k in range(4)]
        + [_cell(10 + k, "b", ("bright-field",), (7, 9)) for k in range(2)]
        + [_cell(20 + k, "a", ("nucleus", "er"), (10, 14)) for k in range(2)]
    )
    writer = ReleaseWriter(tmp_path / "r", cells_per_shard=3, progress=False)
    writer.add_source("chammi75", cells)
    writer.close()
    return tmp_path / "r"


def test_groups_never_share_a_shard_and_zarr_reads_each_row(grouped: Path):
    attrs = json.loads((zarr_path(grouped, "chammi75") / "zarr.json").read_text())["attributes"]
    assert [(g["first_row"], g["rows"], g["first_shard"]) for g in attrs["groups"]] == [
        (0, 4, 0),
        (4, 2, 2),
        (6, 2, 3),
    ]
    ds, z = load("all", root=grouped), open_zarr_images(open_store(grouped), "chammi75")
    assert list(ds.rows["shard"].str[-10:-4]) == ["000000"] * 3 + [
        "000001",
        "000002",
        "000002",
        "000003",
        "000003",
    ]
    for i in range(len(ds)):
        np.testing.assert_array_equal(np.asarray(z[int(ds.rows["zarr_row"].iloc[i])]), ds.read_array(i))
    assert validate_release(grouped, progress=False).ok


def test_validate_finds_forged_groups(grouped: Path):
    path = zarr_path(grouped, "chammi75") / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["groups"][1]["rows"] = 1
    path.write_text(json.dumps(meta))
    report = validate_release(grouped, progress=False)
    assert any("groups in its attributes" in p for p in report.problems), report.problems
