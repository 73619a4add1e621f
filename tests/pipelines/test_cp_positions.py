"""Cell Painting nucleus positions: per-site CSV, per-plate CSV (+ Image.csv), SQLite backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import pipelines.sources.cp.positions as pos
from pipelines.sources.cp.layout import LayoutError


def test_sqlite_positions_filter_by_site(tmp_path):
    pdir = tmp_path / "P"
    pdir.mkdir()
    images = pd.DataFrame(
        {
            "TableNumber": [1, 1, 2],
            "ImageNumber": [1, 2, 1],
            "Image_Metadata_Plate": "P",
            "Image_Metadata_Well": ["A01", "A02", "A01"],
            "Image_Metadata_Site": [1, 1, 2],
        }
    )
    nuclei = pd.DataFrame(
        {
            "TableNumber": [1, 1, 2, 2],
            "ImageNumber": [1, 2, 1, 1],
            "ObjectNumber": [1, 1, 1, 2],
            "Nuclei_Location_Center_X": [10.0, 20.0, 30.0, 40.0],
            "Nuclei_Location_Center_Y": [11.0, 21.0, 31.0, 41.0],
        }
    )
    pos.write_cellprofiler_sqlite(pdir / "P.sqlite", images, nuclei)
    spec = pos.positions_source(pdir, "P", "A01", 2)
    assert spec["kind"] == "sqlite"
    assert pos.read_positions(spec, "P", "A01", 2) == ([(1, 30.0, 31.0), (2, 40.0, 41.0)], [])
    assert pos.read_positions(spec, "P", "A02", 1) == ([(1, 20.0, 21.0)], [])


def test_plate_csv_with_image_table(tmp_path):
    pd.DataFrame(
        {
            "ImageNumber": [1, 2, 2],
            "ObjectNumber": [1, 1, 2],
            "Nuclei_Location_Center_X": [1.0, 2.0, 3.0],
            "Nuclei_Location_Center_Y": [4.0, 5.0, 6.0],
        }
    ).to_csv(tmp_path / "Nuclei.csv", index=False)
    pd.DataFrame(
        {
            "ImageNumber": [1, 2],
            "Metadata_Plate": "P",
            "Metadata_Well": ["A01", "B03"],
            "Metadata_Site": [1, 1],
        }
    ).to_csv(tmp_path / "Image.csv", index=False)
    spec = pos.positions_source(tmp_path, "P", "B03", 1)
    assert spec["kind"] == "plate_csv"
    assert pos.read_positions(spec, "P", "B03", 1) == ([(1, 2.0, 5.0), (2, 3.0, 6.0)], [])
    (tmp_path / "Image.csv").unlink()
    with pytest.raises(LayoutError, match="ImageNumber \\+ Image.csv"):
        pos.read_positions(spec, "P", "B03", 1)


@pytest.mark.parametrize(
    "text",
    [
        "ObjectNumber,Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,10.5,20\n2,,3\n\n3,7e1,NaN\n4,5,6\n",
        '\ufeffNuclei_Location_Center_Y,Other,Nuclei_Location_Center_X\n1.5,a,2\n3,"b,c",4\nnan,x,1\n5,y\n',
        "Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n",
    ],
)
def test_site_csv_reader_matches_pandas(tmp_path: Path, text: str) -> None:
    path = tmp_path / "Nuclei.csv"
    path.write_text(text, encoding="utf-8")
    assert pos._site_csv_objects(path, "w") == pos._objects(pd.read_csv(path), "w")


def test_rows_without_coordinates_are_returned_not_dropped(tmp_path: Path) -> None:
    """A nucleus row with an empty or NaN coordinate comes back as (where, reason), from every position
    source."""
    path = tmp_path / "Nuclei.csv"
    path.write_text(
        "ObjectNumber,Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,10.5,20\n2,,3\n3,7e1,NaN\n",
        encoding="utf-8",
    )
    found, dropped = pos.read_positions({"kind": "site_csv", "path": str(path)}, "P", "A01", 1)
    assert found == [(1, 10.5, 20.0)]
    assert [w for w, _ in dropped] == ["ObjectNumber 2", "ObjectNumber 3"]
    assert all("without coordinates" in reason for _, reason in dropped)
    images = pd.DataFrame(
        {
            "TableNumber": [1],
            "ImageNumber": [1],
            "Image_Metadata_Plate": "P",
            "Image_Metadata_Well": ["A01"],
            "Image_Metadata_Site": [1],
        }
    )
    nuclei = pd.DataFrame(
        {
            "TableNumber": 1,
            "ImageNumber": [1, 1],
            "ObjectNumber": [1, 2],
            "Nuclei_Location_Center_X": [5.0, None],
            "Nuclei_Location_Center_Y": [6.0, 7.0],
        }
    )
    pos.write_cellprofiler_sqlite(tmp_path / "P.sqlite", images, nuclei)
    found, dropped = pos.read_positions({"kind": "sqlite", "path": str(tmp_path / "P.sqlite")}, "P", "A01", 1)
    assert found == [(1, 5.0, 6.0)] and [w for w, _ in dropped] == ["ObjectNumber 2"]


def test_site_csv_reader_errors(tmp_path: Path) -> None:
    path = tmp_path / "Nuclei.csv"
    path.write_text("Nuclei_Location_Center_X,Other\n1,2\n", encoding="utf-8")
    with pytest.raises(LayoutError, match="missing column 'Nuclei_Location_Center_Y'"):
        pos._site_csv_objects(path, "w")
    path.write_text("Nuclei_Location_Center_X,Nuclei_Location_Center_Y\n1,2,3\n", encoding="utf-8")
    with pytest.raises(LayoutError, match="row 1 has 3 fields"):
        pos._site_csv_objects(path, "w")
