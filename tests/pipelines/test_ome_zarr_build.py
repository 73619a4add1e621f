"""A pipeline-built release opens in the OME-Zarr ecosystem (ome-zarr-models, ome-zarr reader)."""

from __future__ import annotations

from pathlib import Path

from tests.ome_zarr_helpers import check_release_ome_zarr
from tests.pipelines.helpers import quiet_build


def test_built_release_stores_are_ome_zarr(wtc_raw: Path, tmp_path: Path) -> None:
    res = quiet_build("wtc11", wtc_raw, tmp_path / "rel", per=8)
    assert res.ok
    assert check_release_ome_zarr(tmp_path / "rel") == ["wtc11"]
