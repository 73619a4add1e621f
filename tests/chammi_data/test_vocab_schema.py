"""The channel vocabulary, source facts, cell schema and codec."""

from __future__ import annotations

import io

import numpy as np
import pytest

from chammi_data.format.codec import CorruptSampleError, decode_image, encode_image
from chammi_data.format.release_format import canonical_json
from chammi_data.format.schema import Cell, image_checksum, make_cell_id
from chammi_data.format.vocab import (
    CHANNEL_COLORS,
    CHANNELS,
    CPS_WEIGHTS,
    SOURCES,
    VOCAB,
    normalisation_stats,
    source_info,
    to_indices,
    to_names,
)


def test_vocab_and_sources():
    assert VOCAB == tuple(sorted(VOCAB)) and len(VOCAB) == 8
    assert set(CHANNEL_COLORS) == set(CHANNELS) and CHANNELS[:8] == VOCAB
    assert [SOURCES[k].tile_hw for k in ("wtc11", "hpa", "cp")] == [(238, 374), (512, 512), (160, 160)]
    for info in SOURCES.values():
        assert set(info.channels) <= set(VOCAB)
        assert len(info.mean) == len(info.std) == info.num_channels
    assert source_info("Allen").key == "wtc11" and source_info("cp").folder == "CP"
    assert abs(sum(CPS_WEIGHTS.values()) - 1) < 1e-12


def test_channel_lookup_errors():
    assert to_names([5, "er"]) == ("nucleus", "er") and to_indices(["rna"]) == (7,)
    with pytest.raises(KeyError, match="vocabulary"):
        to_names(["dapi"])
    with pytest.raises(ValueError, match="twice"):
        to_names(["er", 0])
    with pytest.raises(KeyError, match="unknown source"):
        source_info("jump")
    mean, std = normalisation_stats("hpa", ["nucleus"])
    assert mean == [0.0640] and std == [0.0886]


def test_cell_id_is_stable_and_dotless():
    a = make_cell_id("hpa", "img.png", 3)
    assert a == make_cell_id("hpa", "img.png", 3) != make_cell_id("hpa", "img.png", 4)
    assert "." not in a and a.startswith("hpa-")


def test_cell_validation(cell_factory):
    cell = cell_factory("cp", 1, seed=0)[0]
    with pytest.raises(ValueError, match="channels"):
        Cell(cell.image[:3], cell.channels, "cp", "DMSO", "cp-x")
    with pytest.raises(ValueError, match="dtype"):
        Cell(cell.image.astype(np.float32), cell.channels, "cp", "DMSO", "cp-x")
    with pytest.raises(ValueError, match="cell_id"):
        Cell(cell.image, cell.channels, "cp", "DMSO", "cp.x")
    with pytest.raises(ValueError, match="task"):
        Cell(cell.image, cell.channels, "cp", "DMSO", "cp-x", tasks=frozenset({"Task_nine"}))
    rec = cell.record()
    assert rec["sha256"] == image_checksum(cell.image) and rec["shape"] == list(cell.image.shape)


def test_canonical_json_is_stable():
    assert canonical_json({"b": 1, "a": np.int64(2), "c": float("nan")}) == '{"a":2,"b":1,"c":null}'


def test_codec_round_trip_and_refusals():
    img = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    data = encode_image(img)
    assert data == encode_image(img.copy())
    np.testing.assert_array_equal(decode_image(data), img)
    with pytest.raises(CorruptSampleError, match="shardX"):
        decode_image(data[:-5], where="shardX")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zstandard

    with pytest.raises(CorruptSampleError):
        decode_image(zstandard.ZstdCompressor().compress(buf.getvalue()))
    with pytest.raises(ValueError):
        encode_image(img[0])
