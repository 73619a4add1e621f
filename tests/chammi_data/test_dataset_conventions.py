"""torchvision/torchgeo conventions on ReleaseDataset: classes, class_to_idx, targets, plot(sample),
collate_fn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from chammi_data.loading.dataset import load


def test_classes_are_per_source_sorted_labels(tiny_release: Path):
    ds = load("train", root=tiny_release)
    assert list(ds.classes) == ["wtc11", "hpa", "cp"]
    assert ds.classes["hpa"] == ["Golgi apparatus", "Microtubules", "Mitochondria", "Nuclear speckles"]
    for src, labels in ds.classes.items():
        assert labels == sorted(set(ds.rows.loc[ds.rows["source"] == src, "label"]))
        assert ds.class_to_idx[src] == {label: k for k, label in enumerate(labels)}
    assert len(ds.targets) == len(ds)
    for i in (0, len(ds) // 2, len(ds) - 1):
        s = ds[i]
        assert ds.classes[s["source"]][ds.targets[i]] == s["label"]
    novel = load("hpa/Task_three", root=tiny_release)  # its own label space: the novel classes
    assert list(novel.classes) == ["hpa"] and novel.classes["hpa"] == sorted(set(novel.rows["label"]))
    assert set(novel.classes["hpa"]) <= {"Cytosol", "Endoplasmic reticulum", "Nucleoplasm"}
    assert all(ds.class_to_idx["hpa"].get(lab) is None for lab in novel.classes["hpa"])


def test_plot_takes_a_sample_or_an_index(tiny_release: Path):
    ds = load("all", root=tiny_release, sources="cp")
    by_index = ds.plot(0)
    assert [ax.get_title() for ax in by_index.axes] == list(ds.channels("cp"))
    sample = {**ds[0], "prediction": "DMSO"}
    fig = ds.plot(sample, suptitle=None)
    assert "prediction: DMSO" in fig._suptitle.get_text() and ds[0]["cell_id"] in fig._suptitle.get_text()
    normalised = {**ds[0], "image": (ds[0]["image"] - 0.5) * 4}  # outside [0, 1]: per-channel range
    assert len(ds.plot(normalised, show_titles=False).axes) == 5
    with pytest.raises(ValueError, match="channels"):
        ds.plot({**ds[0], "channels": ("nucleus",)})


def test_collate_fn_batches_mixed_sources_where_default_collate_fails(tiny_release: Path):
    ds = load("all", root=tiny_release)
    mixed = [ds[0], ds[len(ds) - 1]]  # a WTC cell (3 channels) and a CP cell (5 channels)
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        torch.utils.data.default_collate(mixed)
    batches = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=ds.collate_fn)))
    assert [b["source"] for b in batches] == ["wtc11", "hpa", "cp"]
    assert sum(len(b["cell_id"]) for b in batches) == len(ds)
