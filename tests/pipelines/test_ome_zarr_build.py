"""A pipeline-built release opens in the OME-Zarr ecosystem (ome-zarr-models, ome-zarr reader)."""

from __future__ import annotations

from pathlib import Path

from pipelines.engine.build import build
from tests.ome_zarr_helpers import check_release_ome_zarr


def test_built_release_stores_are_ome_zarr(wtc_raw: Path, tmp_path: Path) -> None:
    res = build(
        "wtc11",
        input_dir=wtc_raw,
        output=tmp_path / "rel",
        workers=1,
        config={"cells_per_shard": 8},
        progress=False,
        processes=False,
    )
    assert res.ok
    assert check_release_ome_zarr(tmp_path / "rel") == ["wtc11"]
