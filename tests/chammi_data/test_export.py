"""chammi export --format chammi: official layout, and official -> release -> export -> official round trip."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chammi_data.cli import export as cli
from chammi_data.export import export_official, to_uint8
from chammi_data.manifest import read_manifest, source_rows
from chammi_data.official import iter_official_cells, read_official_metadata
from chammi_data.vocab import SOURCE_KEYS, SOURCES
from chammi_data.writer import ReleaseWriter


def test_export_layout_and_columns(tiny_release: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert cli.main(argparse.Namespace(release=str(tiny_release), outdir=str(out), format="chammi", sources=None,
                                       overwrite=False, quiet=True)) == 0
    assert "Allen: 24" in capsys.readouterr().out
    m = read_manifest(tiny_release)
    meta = read_official_metadata(out)
    for key in SOURCE_KEYS:
        info = SOURCES[key]
        df = pd.read_csv(out / info.folder / "enriched_meta.csv")
        assert list(df.columns[:4]) == ["file_path", "channel_width", "Label", "train_test_split"]
        for t in info.tasks:
            assert df[t].dtype == bool
        rows = source_rows(m, key)
        assert df["Label"].tolist() == rows["label"].tolist()  # manifest order
        assert (df["channel_width"] == rows["width"]).all()
        assert meta[key]["file_path"].str.startswith(info.folder + "/").all()
    cp = pd.read_csv(out / "CP" / "enriched_meta.csv", dtype=str)
    assert set(cp["source"]) == {"LINCS", "CDRP", "BBBC022"} and cp["Plate"].str.len().gt(0).all()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_official(tiny_release, out, progress=False)
    assert export_official(tiny_release, out, sources=["HPA"], overwrite=True, progress=False).counts == {"HPA": 24}


def test_round_trip_official_release_export(official_download: Path, tmp_path: Path):
    release, out = tmp_path / "release", tmp_path / "exported"
    meta = read_official_metadata(official_download)
    writer = ReleaseWriter(release, cells_per_shard=7)
    for key in SOURCE_KEYS:
        writer.add_source(key, iter_official_cells(official_download, key, metadata=meta[key]))
    writer.close()
    export_official(release, out, progress=False)
    back = read_official_metadata(out)
    for key in SOURCE_KEYS:
        a = list(iter_official_cells(official_download, key, metadata=meta[key]))
        b = list(iter_official_cells(out, key, metadata=back[key]))
        stem = [str(Path(c.meta["file_path"]).with_suffix("")) for c in a]
        assert stem == [str(Path(c.meta["file_path"]).with_suffix("")) for c in b]  # original paths, as .png
        if key != "wtc11":  # PNG sources keep file_path exactly, hence the cell ids (WTC: .tiff -> .png)
            assert [c.cell_id for c in a] == [c.cell_id for c in b]
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.image, y.image)
            assert (x.label, x.split, x.tasks, x.groups) == (y.label, y.split, y.tasks, y.groups)
        cols = [c for c in meta[key].columns if c != "file_path"]
        pd.testing.assert_frame_equal(back[key][cols], meta[key][cols])  # every original column survives


def test_uint16_is_scaled_with_a_note(tmp_path: Path, cell_factory):
    cells = cell_factory("cp", 3, seed=2, dtype=np.uint16)
    w = ReleaseWriter(tmp_path / "r", cells_per_shard=8)
    w.add_source("cp", cells)
    w.close()
    summary = export_official(tmp_path / "r", tmp_path / "o", progress=False)
    assert any("uint16" in n for n in summary.notes) and "note:" in str(summary)
    got = list(iter_official_cells(tmp_path / "o", "cp"))
    np.testing.assert_array_equal(got[0].image, to_uint8(cells[0].image))
    assert to_uint8(np.array([[[0, 257, 65535]]], dtype=np.uint16)).tolist() == [[[0, 1, 255]]]
