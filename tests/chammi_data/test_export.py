"""chammi export --format chammi: official layout, and official -> release -> export -> official round
trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from chammi_cli import main as chammi
from chammi_data.format.manifest import read_manifest, source_rows
from chammi_data.format.vocab import SOURCE_KEYS, SOURCES, TASK_COLUMNS
from chammi_data.format.writer import ReleaseWriter
from chammi_data.interop.cam_training_csv import CAM_COLUMNS, CAM_CSV, cam_classes
from chammi_data.interop.official_export import export_official, export_source, to_uint8
from chammi_data.interop.official_layout import iter_official_cells, read_official_metadata
from chammi_data.loading.dataset import load
from chammi_data.store.paths import UnsafePathError, safe_join
from chammi_data.store.storage import open_store


def test_export_layout_and_columns(tiny_release: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert chammi(["export", "--format", "chammi", str(tiny_release), str(out), "--quiet"]) == 0
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
    assert export_official(tiny_release, out, sources=["HPA"], overwrite=True, progress=False).counts == {
        "HPA": 24
    }


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


# CAM's class maps (chaudatascience/channel_adaptive_models, datasets/morphem70k.py), transcribed as data:
# the contract our morphem70k_v2.csv must satisfy for CAM's training loop to look up every training label.
CAM_TRAIN_CLASSES = {
    "Allen": ["M0", "M1M2", "M3", "M4M5", "M6M7_complete", "M6M7_single"],
    "HPA": ["golgi apparatus", "microtubules", "mitochondria", "nuclear speckles"],
    "CP": ["BRD-A29260609", "BRD-K04185004", "BRD-K21680192", "DMSO"],
}
CAM_ALL_CLASSES = [
    "BRD-A29260609",
    "BRD-K04185004",
    "BRD-K21680192",
    "DMSO",
    "M0",
    "M1M2",
    "M3",
    "M4M5",
    "M6M7_complete",
    "M6M7_single",
    "golgi apparatus",
    "microtubules",
    "mitochondria",
    "nuclear speckles",
]


def test_cam_csv_follows_cams_contract(tiny_release: Path, tmp_path: Path):
    out = tmp_path / "out"
    summary = export_official(tiny_release, out, progress=False)
    assert summary.cam_csv == out / CAM_CSV and "CAM" in str(summary)
    cam = pd.read_csv(out / CAM_CSV)  # as CAM reads it: plain read_csv, then filter by chunk
    assert list(cam.columns[: len(CAM_COLUMNS)]) == list(CAM_COLUMNS)
    assert cam["chunk"].unique().tolist() == ["Allen", "HPA", "CP"] and len(cam) == 3 * 24
    for key in SOURCE_KEYS:
        folder = SOURCES[key].folder
        part = cam[cam["chunk"] == folder].reset_index(drop=True)
        official = pd.read_csv(out / folder / "enriched_meta.csv")
        # CAM's feature order = evaluator's
        assert part["file_path"].tolist() == official["file_path"].tolist()
        expected = official["Label"].str.lower() if key == "hpa" else official["Label"]
        assert (
            part["label"].tolist() == expected.tolist()
            and part["Label"].tolist() == official["Label"].tolist()
        )
        train = part[part["train_test_split"] == "Train"]
        assert len(train) > 0
        for label in train["label"]:  # CAM: self.train_classes_dict[label] for every training row
            assert label in CAM_TRAIN_CLASSES[folder] and label in CAM_ALL_CLASSES
        for t in TASK_COLUMNS:
            assert part[t].dtype == bool
            assert part[t].tolist() == (official[t].tolist() if t in official else [False] * len(part))
    classes = cam_classes(pd.read_csv(out / CAM_CSV))
    assert {k: list(v) for k, v in classes.items()} == {**CAM_TRAIN_CLASSES, "morphem70k": CAM_ALL_CLASSES}
    # CAM folds the tape with a column-major reshape (H, W*C) -> (H, W, C): the pixels of our cells come back.
    ds = load("all", root=tiny_release)
    for i in (0, 30, 71):
        row = cam.iloc[i]
        tape = np.asarray(Image.open(out / row["file_path"]))
        folded = np.reshape(tape, (tape.shape[0], int(row["channel_width"]), -1), order="F")
        np.testing.assert_array_equal(folded.transpose(2, 0, 1), ds.read_array(i))


def test_cam_csv_can_be_skipped_and_follows_the_folders(tiny_release: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert export_official(tiny_release, out, sources=["hpa"], progress=False, cam_csv=False).cam_csv is None
    assert not (out / CAM_CSV).exists()
    export_official(tiny_release, out, sources=["cp"], progress=False)  # HPA from before + CP now
    assert pd.read_csv(out / CAM_CSV)["chunk"].unique().tolist() == ["HPA", "CP"]


def test_export_refuses_existing_output_before_writing(tiny_release: Path, tmp_path: Path):
    out = tmp_path / "out"
    (out / "CP").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="CP"):
        export_official(tiny_release, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["CP"]  # nothing else written


def test_hostile_file_path_in_meta_stays_inside_outdir(tmp_path: Path, cell_factory):
    cells = cell_factory("hpa", 4, seed=5)
    hostile = ["../../evil.png", "/tmp/evil_abs.png", "HPA/../../evil2.png", "HPA/ok/../../../evil3.png"]
    for cell, path in zip(cells, hostile, strict=True):
        cell.meta["file_path"] = path
    w = ReleaseWriter(tmp_path / "r", cells_per_shard=8)
    w.add_source("hpa", cells)
    w.close()
    out = tmp_path / "deep" / "er" / "out"
    summary = export_official(tmp_path / "r", out, progress=False)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert written == {f"deep/er/out/HPA/images/{c.cell_id}.png" for c in cells}
    assert any("4 original file_path" in n for n in summary.notes)


def test_cell_id_that_bypassed_the_manifest_reader_is_refused(tiny_release: Path, tmp_path: Path):
    from chammi_data.format.release_format import CellIdError
    from chammi_data.format.shards import ShardReader

    rows = source_rows(read_manifest(tiny_release), "hpa").head(2).copy()
    rows["cell_id"] = ["../../x", "ok_id"]
    rows["meta"] = "{}"
    out = tmp_path / "a" / "b" / "out"
    reader = ShardReader(open_store(tiny_release))
    try:
        with pytest.raises(CellIdError, match=r"\.\./\.\./x"):
            export_source(tiny_release, out, "hpa", rows, reader, progress=False)
    finally:
        reader.close()
    assert not list(tmp_path.rglob("*.png"))


def test_safe_join_refuses_paths_leaving_the_root(tmp_path: Path):
    assert safe_join(tmp_path, "HPA/images/a.png") == tmp_path / "HPA" / "images" / "a.png"
    for bad in ("../x", "a/../../x", "/etc/passwd", "C:\\x", "\\\\server\\share\\x", "", "a\\..\\..\\x"):
        with pytest.raises(UnsafePathError):
            safe_join(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePathError, match="outside"):
        safe_join(tmp_path, "link/x.png")
