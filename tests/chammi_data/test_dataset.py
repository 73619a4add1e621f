"""chammi_data.load: splits, sources, sample dicts, backends, plot, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import chammi_data
from chammi_data.format.manifest import read_manifest
from chammi_data.format.release_format import SAMPLE_KEYS, select_rows, valid_splits
from chammi_data.loading.dataset import load


def test_sample_dict(tiny_release: Path, cell_factory):
    from tests.conftest import TINY_N, TINY_SEED

    ds = chammi_data.load("all", root=tiny_release)
    assert len(ds) == 3 * TINY_N
    s = ds[0]
    assert set(s) == set(SAMPLE_KEYS)
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 16, 24)
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    first = cell_factory("wtc11", TINY_N, seed=TINY_SEED["wtc11"])[0]
    np.testing.assert_allclose(s["image"].numpy(), first.image / 255.0, rtol=0, atol=1e-7)
    assert s["channels"] == ("nucleus", "membrane", "protein") and s["cell_id"] == first.cell_id
    assert s["label"] == first.label and s["meta"]["index"] == first.meta["index"]
    assert s["meta"]["train_test_split"] == first.split and s["meta"]["row"] == 0
    assert ds[-1]["source"] == "cp" and ds.channels("cp") == ("nucleus", "er", "rna", "golgi", "mito")


@pytest.mark.parametrize(
    "split,expected",
    [
        ("train", lambda m: m["train_test_split"] == "Train"),
        ("test", lambda m: m[["Task_one", "Task_two", "Task_three", "Task_four"]].any(axis=1)),
        ("Task_two", lambda m: m["Task_two"]),
        ("hpa/Task_three", lambda m: (m["source"] == "hpa") & m["Task_three"]),
        ("CP/task_four", lambda m: (m["source"] == "cp") & m["Task_four"]),
    ],
)
def test_splits(tiny_release: Path, split, expected):
    m = read_manifest(tiny_release)
    ds = load(split, root=tiny_release)
    assert [ds[i]["cell_id"] for i in range(len(ds))] == m.loc[expected(m), "cell_id"].tolist()


def test_task_two_spans_sources(tiny_release: Path):
    assert load("Task_two", root=tiny_release).sources == ["wtc11", "hpa", "cp"]
    assert load("Task_four", root=tiny_release).sources == ["cp"]


def test_sources_and_transform(tiny_release: Path):
    ds = load(
        "train", root=tiny_release, sources=["HPA"], transform=lambda s: {**s, "label": s["label"].upper()}
    )
    assert ds.sources == ["hpa"] and all(ds[i]["label"].isupper() for i in range(len(ds)))


def test_zarr_backend_matches_shards(tiny_release: Path):
    a, b = load("test", root=tiny_release), load("test", root=tiny_release, backend="zarr")
    for i in (0, len(a) // 2, len(a) - 1):
        assert torch.equal(a[i]["image"], b[i]["image"])


def test_dataloader_workers(tiny_release: Path):
    ds = load("all", root=tiny_release, sources="cp")
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=list)
    ids = [s["cell_id"] for batch in dl for s in batch]
    assert ids == [ds[i]["cell_id"] for i in range(len(ds))]


def test_errors(tiny_release: Path, tmp_path: Path, monkeypatch):
    with pytest.raises(ValueError, match="hpa/Task_three"):
        load("holdout", root=tiny_release)
    with pytest.raises(ValueError, match="'validation' selects no cells"):  # a split CHAMMI rows never use
        load("validation", root=tiny_release)
    with pytest.raises(ValueError, match="no Task_four"):
        load("hpa/Task_four", root=tiny_release)
    with pytest.raises(ValueError, match="selects no cells"):
        load("Task_four", root=tiny_release, sources="wtc11")
    monkeypatch.setenv("CHAMMI_RELEASE", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="chammi-build"):
        load()
    with pytest.raises(IndexError):
        load("train", root=tiny_release)[10_000]
    assert "cp/Task_four" in valid_splits()
    with pytest.raises(ValueError):
        select_rows(read_manifest(tiny_release), "Task_five")


def test_plot(tiny_release: Path):
    fig = load("all", root=tiny_release, sources="hpa").plot(0)
    assert [ax.get_title() for ax in fig.axes] == ["microtubules", "protein", "nucleus", "er"]
