"""Pre-encoded zarr shards (what a build writes) must be the very bytes zarr-python writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chammi_data.format.zarr_store as zarr_store
from chammi_data.format.vocab import SOURCES
from tests.ome_zarr_helpers import check_ome_zarr_store, check_release_ome_zarr


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "zarr").rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("source,dtype", [("cp", "uint8"), ("wtc11", "uint16")])
def test_encoded_shards_equal_zarr_python(tmp_path: Path, source: str, dtype: str):
    info = SOURCES[source]
    n, per = 10, 4  # shards of 4, 4 and a partial 2
    rng = np.random.default_rng(3)
    images = rng.integers(0, 250, (n, info.num_channels, *info.tile_hw)).astype(dtype)
    images[5] = 0  # a cell equal to the fill value: zarr stores no chunk for it
    ref, ours = tmp_path / "ref", tmp_path / "ours"
    for root in (ref, ours):
        zarr_store.create_images(root, source, n, info.channels, info.tile_hw, dtype, per)
    for k in range(0, n, per):
        zarr_store.write_rows(ref, source, k, images[k : k + per])
        zarr_store.write_encoded_shard(
            ours, source, k // per, [zarr_store.encode_chunk(x) for x in images[k : k + per]]
        )
    assert _files(ours) == _files(ref)
    assert np.array_equal(np.asarray(zarr_store.open_images(ours, source)[:]), images)


def test_all_empty_shard_writes_no_file(tmp_path: Path):
    info = SOURCES["cp"]
    zarr_store.create_images(tmp_path, "cp", 2, info.channels, info.tile_hw, "uint8", 2)
    zarr_store.write_encoded_shard(tmp_path, "cp", 0, [b"", b""])
    assert not any(p.is_file() for p in (tmp_path / "zarr" / "cp.zarr" / "images").rglob("c/*"))
    assert not np.asarray(zarr_store.open_images(tmp_path, "cp")[:]).any()


def test_encoded_shard_refuses_other_layouts_and_overflow(tmp_path: Path):
    import zarr

    info = SOURCES["cp"]
    zarr_store.create_images(tmp_path, "cp", 3, info.channels, info.tile_hw, "uint8", 2)
    chunk = zarr_store.encode_chunk(np.ones((info.num_channels, *info.tile_hw), np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        zarr_store.write_encoded_shard(tmp_path, "cp", 1, [chunk, chunk])  # rows 2..3 of a 3-row array
    group = zarr.open_group(str(zarr_store.zarr_path(tmp_path, "cp")), mode="w", zarr_format=3)
    group.create_array(
        zarr_store.ARRAY_NAME,
        shape=(2, 5, 160, 160),
        chunks=(1, 5, 160, 160),
        shards=(2, 5, 160, 160),
        dtype="uint8",
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    with pytest.raises(ValueError, match="layout"):
        zarr_store.write_encoded_shard(tmp_path, "cp", 0, [chunk, chunk])


def test_every_store_is_an_ome_zarr_image(tiny_release: Path):
    """ome-zarr-models validates each store as an OME-Zarr 0.5 Image; the ome-zarr reader finds the
    channels."""
    assert check_release_ome_zarr(tiny_release) == ["wtc11", "hpa", "cp"]


def test_ome_check_fails_without_ome_metadata(tiny_release_copy: Path):
    import zarr

    group = zarr.open_group(str(zarr_store.zarr_path(tiny_release_copy, "hpa")), mode="r+")
    attrs = dict(group.attrs)
    attrs["omero"] = attrs.pop("ome")["omero"]  # the layout of stores written before OME-Zarr metadata
    group.attrs.clear()
    group.attrs.update(attrs)
    with pytest.raises(Exception, match="ome"):
        check_ome_zarr_store(zarr_store.zarr_path(tiny_release_copy, "hpa"), SOURCES["hpa"].channels, 24)
    assert zarr_store.read_attrs(tiny_release_copy, "hpa")["omero"] == attrs["omero"]  # old stores still read


def test_read_attrs_keeps_our_keys_and_omero(tiny_release: Path):
    attrs = zarr_store.read_attrs(tiny_release, "cp")
    assert (
        attrs["source"] == "cp"
        and attrs["channels"] == list(SOURCES["cp"].channels)
        and "cell_ids" not in attrs  # no per-cell list in the attributes: the manifest indexes the rows
    )
    assert attrs["omero"] == attrs["ome"]["omero"]
    assert [c["label"] for c in attrs["omero"]["channels"]] == list(SOURCES["cp"].channels)
    assert attrs["ome"]["version"] == zarr_store.NGFF_VERSION
