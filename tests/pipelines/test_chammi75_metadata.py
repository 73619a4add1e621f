"""The CHAMMI-75 metadata reader and build planner: columns by name, strings, images, skips, units."""

from __future__ import annotations

from pathlib import Path

import pytest

from chammi_data.store.storage import open_store
from pipelines.sources.chammi75.layout import guidance_path, parse_unit_images
from pipelines.sources.chammi75.metadata import discover_table, plan, read_table

#: extra columns, shuffled order, 1-based channels listed out of order, "unknown"/"no" values, string ids
#: with leading zeros, keys with + [ ]
HEADER = (
    "storage.zip,imaging.channel,experiment.well,imaging.multi_channel_id,qc.extra,experiment.study,"
    "imaging.channel_type,geometry.channels,storage.path,microscopy.fov,experiment.control,experiment.plate"
)
ROWS = [
    # a: two channels, listed channel 2 first
    "s1.zip,2,A01,s1:a,x,s1,er,2,CHAMMI-75_train/s1/a+[1]-ch1.png,007,no,0012",
    "s1.zip,1,A01,s1:a,x,s1,nucleus,2,CHAMMI-75_train/s1/a+[1]-ch0.png,007,no,0012",
    # b: geometry.channels says 3 but it has 2 rows
    "s1.zip,1,B02,s1:b,x,s1,nucleus,3,CHAMMI-75_train/s1/b-ch0.png,001,no,0012",
    "s1.zip,2,B02,s1:b,x,s1,er,3,CHAMMI-75_train/s1/b-ch1.png,001,no,0012",
    # a row without an image id (and one that says unknown)
    "s1.zip,1,C03,,x,s1,nucleus,1,CHAMMI-75_train/s1/c-ch0.png,001,no,0012",
    "s1.zip,1,C04,unknown,x,s1,nucleus,1,CHAMMI-75_train/s1/d-ch0.png,001,no,0012",
    # e: channel numbers 1 and 3 of 2
    "s2.zip,1,unknown,s2:e,x,s2,bright-field,2,CHAMMI-75_train/s2/e-ch0.png,1,yes,unknown",
    "s2.zip,3,unknown,s2:e,x,s2,nucleus,2,CHAMMI-75_train/s2/e-ch2.png,1,yes,unknown",
    # f: a channel type that is not one of the 25
    "s2.zip,1,D01,s2:f,x,s2,dapi,1,CHAMMI-75_train/s2/f-ch0.png,1,no,unknown",
    # g: a path outside CHAMMI-75_train
    "s2.zip,1,D02,s2:g,x,s2,nucleus,1,elsewhere/g-ch0.png,1,no,unknown",
    # h, i, j: good one-channel images of s2
    "s2.zip,1,D03,s2:h,x,s2,differential interference contrast (DIC),1,CHAMMI-75_train/s2/h-ch0.png,1,no,P1",
    "s2.zip,1,D04,s2:i,x,s2,bright-field,1,CHAMMI-75_train/s2/i-ch0.png,1,no,P1",
    "s2.zip,1,D05,s2:j,x,s2,bright-field,1,CHAMMI-75_train/s2/j-ch0.png,1,no,P1",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "CHAMMI-75_train_metadata.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    (tmp_path / "CHAMMI-75_small_metadata.csv").write_text("\n".join([HEADER, *ROWS[:2]]) + "\n")
    return tmp_path


def test_columns_are_read_by_name_as_strings(root: Path):
    table, meta = read_table(open_store(root), "CHAMMI-75_train_metadata.csv")
    assert "qc.extra" not in table.column_names and "storage.zip" not in table.column_names
    assert meta == ["imaging.multi_channel_id", "experiment.study", "experiment.plate", "experiment.well",
                    "experiment.control", "microscopy.fov"]  # fmt: skip
    assert table["microscopy.fov"][1].as_py() == "007" and table["experiment.plate"][0].as_py() == "0012"


def test_images_skips_units_and_accounting(root: Path):
    disc = discover_table(str(root), {"metadata": "full", "images_per_unit": 2})
    assert disc.found == {"rows": 13, "images": 8} and disc.used == {"rows": 11}
    reasons = {(s.kind, s.row): s.reason for s in disc.skipped}
    assert set(reasons) == {
        ("rows", 4),
        ("rows", 5),
        ("images", 2),
        ("images", 6),
        ("images", 8),
        ("images", 9),
    }
    assert "channel count 2 disagrees with geometry.channels ['3'] (image s1:b)" in reasons["images", 2]
    assert "channel numbers ['1', '3'] are not 1..2" in reasons["images", 6]
    assert "unknown channel type(s) ['dapi']" in reasons["images", 8]
    assert "'elsewhere/g-ch0.png' is not CHAMMI-75_train/<study>/<file>.png" in reasons["images", 9]
    assert {s.file for s in disc.skipped if s.kind == "rows"} == {
        f"{root}/CHAMMI-75_train/s1/c-ch0.png",
        f"{root}/CHAMMI-75_train/s1/d-ch0.png",
    }
    assert [(u.unit_id, u.items) for u in disc.units] == [
        ("s1-000000", 1),
        ("s2-000000", 2),
        ("s2-000001", 1),
    ]
    first = parse_unit_images(disc.units[0].payload["images"], disc.units[0].payload["columns"])[0]
    assert first.files == ("CHAMMI-75_train/s1/a+[1]-ch0.png", "CHAMMI-75_train/s1/a+[1]-ch1.png")
    assert first.types == ("nucleus", "er") and first.meta["microscopy.fov"] == "007"
    s2 = [e for u in disc.units[1:] for e in parse_unit_images(u.payload["images"], u.payload["columns"])]
    assert [e.mcid for e in s2] == ["s2:h", "s2:i", "s2:j"]  # by multi_channel_id
    assert s2[0].types == ("differential interference contrast (DIC)",)
    # accounting: images in 8 = written (at most 4) + 4 skipped here (+ process skips later)
    assert sum(u.items for u in disc.units) + sum(s.count for s in disc.skipped if s.kind == "images") == 8


def test_study_filter_cap_and_table_choice(root: Path):
    disc = discover_table(str(root), {"metadata": "full", "studies": ["s2"], "cap_per_study": 2})
    assert disc.found == {"rows": 7, "images": 6}
    capped = [s for s in disc.skipped if "cap_per_study" in s.reason]
    assert [(s.count, s.kind) for s in capped] == [(1, "images")] and "study s2" in capped[0].reason
    assert [u.items for u in disc.units] == [2]
    small = discover_table(str(root), {"metadata": "small"})
    assert small.found == {"rows": 2, "images": 1}
    path = discover_table(str(root), {"metadata": str(root / "CHAMMI-75_small_metadata.csv")})
    assert path.found == small.found
    with pytest.raises(ValueError, match=r"studies \['s9'\] are not in"):
        discover_table(str(root), {"metadata": "full", "studies": ["s9"]})
    with pytest.raises(FileNotFoundError, match="CHAMMI-75_train_metadata.csv not found"):
        discover_table(str(root / "nowhere"), {"metadata": "full"})


def test_missing_columns_are_named(root: Path):
    (root / "bad.csv").write_text("experiment.study,storage.path\ns1,CHAMMI-75_train/s1/a-ch0.png\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['imaging.multi_channel_id'"):
        plan(*read_table(open_store(root), "bad.csv"), {}, str(root), "bad.csv")


def test_guidance_path():
    assert guidance_path("CHAMMI-75_train/s1/a+[1]-ch0.png") == "CHAMMI-75_guidance/s1/a+[1]-ch0.safetensors"
    with pytest.raises(ValueError):
        guidance_path("other/a.png")
