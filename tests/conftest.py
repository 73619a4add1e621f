"""Shared test fixtures: synthetic cells and a tiny three-source release. Keep these stable.

Fixtures (available to every test under ``tests/``):

``cell_factory`` -> :func:`make_cells`
    ``make_cells(source, n, seed, hw=None, dtype=np.uint8) -> list[Cell]``: ``n`` synthetic cells of
    ``source`` (wtc11 | hpa | cp), sorted by ``cell_id``, with the source's real channel names in tile
    order, tiles of ``hw`` (default :data:`TINY_HW`: wtc11 16x24, hpa 16x16, cp 16x16), smooth blob-like
    content and a little label signal (a bright blob in channel ``label_index % C`` and a per-label
    brightness of the last channel). Splits cycle over Train and every task of the source, so with
    n >= 2 * (1 + number of tasks) every task is non-empty; within a split, ``group = k % 2`` and
    ``label = (k // 2) % n_labels`` (k = index within the split), so the LOGO tasks (hpa Task_three by
    ``cell_type``, cp Task_four by ``Plate``) have >= 2 groups and each label in both groups once
    n is large enough (24 is). Same (source, n, seed, hw) -> identical cells (ids, pixels, metadata).

``tiny_release`` -> Path (session scope, READ ONLY)
    A release built with ``ReleaseWriter`` from ``make_cells(s, TINY_N, seed=TINY_SEED[s])`` for the three
    sources, :data:`TINY_CELLS_PER_SHARD` = 10 cells per shard (24 cells -> 3 tar/zarr shards per source,
    the last one partial). Never modify it: use ``tiny_release_copy`` to get a private copy.

``tiny_release_copy`` -> Path (function scope): a fresh copy of ``tiny_release`` you may corrupt.

``official_factory`` -> :func:`write_official`
    ``write_official(root, cells, tiff_sources=()) -> Path``: writes cells (any sources, any order) as an
    official CHAMMI download: ``root/<Allen|HPA|CP>/enriched_meta.csv`` + one 8-bit tape PNG per cell
    (TIFF for sources in ``tiff_sources``; files of ``wtc11`` are named ``.tiff``), rows in the given
    order, columns file_path, channel_width, Label, train_test_split, the source's boolean task columns,
    Structure | cell_type | Plate (+ CP ``source`` = dataset), ID, plus the cell's meta keys.

``official_download`` -> Path (session scope, READ ONLY): ``write_official`` of the tiny release's cells
    (same ``make_cells`` arguments), WTC tapes as TIFF.

``c75_raw`` / ``c75_release`` -> Path (session scope, READ ONLY): the embedded CHAMMI-75 sample in its
    published layout, and its release (2 images per shard, study idr0017 held out as Validation).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES

TINY_N = 24


@pytest.fixture(scope="session", autouse=True)
def _sample_cache_of_this_session(tmp_path_factory: pytest.TempPathFactory):
    """The generated sample raw data is cached in this session's temp folder, not in the user's home
    (``pipelines.sources.sample_cache``); commands the tests start inherit it. A cache the caller set is
    kept."""
    import os

    from pipelines.sources.sample_cache import CACHE_ENV

    if os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(tmp_path_factory.getbasetemp() / "sample-cache")
    try:
        yield
    finally:
        os.environ.pop(CACHE_ENV, None)


TINY_CELLS_PER_SHARD = 10
TINY_SEED = {"wtc11": 11, "hpa": 22, "cp": 33}
TINY_HW: dict[str, tuple[int, int]] = {"wtc11": (16, 24), "hpa": (16, 16), "cp": (16, 16)}

_TRAIN_LABELS = {
    "wtc11": ["M0", "M1M2", "M3", "M4M5", "M6M7_complete", "M6M7_single"],
    "hpa": ["Golgi apparatus", "Microtubules", "Mitochondria", "Nuclear speckles"],
    "cp": ["BRD-A29260609", "BRD-K04185004", "BRD-K21680192", "DMSO"],
}
# Labels of the tasks with novel classes; every other task uses the training labels.
_NOVEL_LABELS = {
    ("hpa", "Task_three"): ["Cytosol", "Endoplasmic reticulum", "Nucleoplasm"],
    ("cp", "Task_four"): ["novel-fluspirilene", "novel-fluticasone", "novel-gemfibrozil"],
}
# Two groups per split: (grouping column, values); the grouping column of the source is set on every cell.
_GROUPS = {
    "wtc11": {"Train": ["SON", "TOMM20"], "Task_one": ["TUBA1B", "ST6GAL1"], "Task_two": ["TJP1", "CETN2"]},
    "hpa": {
        "Train": ["A-431", "U-2 OS"],
        "Task_one": ["HeLa", "A549"],
        "Task_two": ["HEK 293", "HEK 293"],
        "Task_three": ["U-251 MG", "SiHa"],
    },
    "cp": {
        "Train": ["24277", "25639"],
        "Task_one": ["24278", "25640"],
        "Task_two": ["24300", "25700"],
        "Task_three": ["20585", "20586"],
        "Task_four": ["24279", "25641"],
    },
}
_CP_DATASET = {
    "24277": "LINCS",
    "24278": "LINCS",
    "24300": "LINCS",
    "24279": "LINCS",
    "25639": "CDRP",
    "25640": "CDRP",
    "25700": "CDRP",
    "25641": "CDRP",
    "20585": "BBBC022",
    "20586": "BBBC022",
}


def _smooth_image(
    rng: np.random.Generator, c: int, h: int, w: int, label_index: int, n_labels: int
) -> np.ndarray:
    """(C, H, W) float in [0, 1]: a few gaussian blobs per channel + the label's blob and brightness."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((c, h, w))
    for ch in range(c):
        for _ in range(3):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sigma = rng.uniform(0.12, 0.3) * min(h, w)
            img[ch] += rng.uniform(0.2, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    # Label signal: a central blob in one channel, and a label-dependent level in the last channel.
    sig = 0.2 * min(h, w)
    img[label_index % c] += 0.5 * np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * sig**2))
    img[-1] += 0.4 * (label_index + 1) / n_labels
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(img / 1.6, 0, 1)


def make_cells(
    source: str, n: int, seed: int = 0, hw: tuple[int, int] | None = None, dtype: type | np.dtype = np.uint8
) -> list[Cell]:
    """``n`` deterministic synthetic cells of ``source``, sorted by cell_id (see the module docstring)."""
    info = SOURCES[source]
    h, w = hw or TINY_HW[source]
    splits = ["Train", "Train", *info.tasks]
    rng = np.random.default_rng(seed)
    top = np.iinfo(np.dtype(dtype)).max
    counters = dict.fromkeys(splits, 0)
    cells = []
    for i in range(n):
        split = splits[i % len(splits)]
        k = counters[split]
        counters[split] += 1
        labels = _NOVEL_LABELS.get((source, split), _TRAIN_LABELS[source])
        label_index = (k // 2) % len(labels)
        group = _GROUPS[source][split][k % 2]
        groups = {info.group_column: group}
        meta: dict = {"synthetic": True, "seed": seed, "index": i}
        if source == "cp":
            groups["dataset"] = _CP_DATASET[group]
            meta.update(
                {
                    "Well": f"{'ABCDEFGH'[i % 8]}{1 + i % 12:02d}",
                    "Site": 1 + i % 9,
                    "compound": labels[label_index],
                }
            )
        elif source == "hpa":
            meta.update(
                {
                    "ID": f"synthetic_{seed}_{i // 3}",
                    "cell_line": group,
                    "centroid": [float(h / 2), float(w / 2)],
                }
            )
        else:
            meta.update({"FOVId": 1000 + i // 4, "structure_name": group})
        image = _smooth_image(rng, info.num_channels, h, w, label_index, len(labels))
        cells.append(
            Cell(
                image=np.round(image * top).astype(dtype),
                channels=info.channels,
                source=source,
                label=labels[label_index],
                cell_id=make_cell_id(source, "synthetic", seed, i),
                meta=meta,
                split=split,
                tasks=frozenset() if split == "Train" else frozenset({split}),
                groups=groups,
            )
        )
    return sorted(cells, key=lambda c: c.cell_id)


def write_official(root: Path, cells: list[Cell], tiff_sources: tuple[str, ...] = ()) -> Path:
    """Write ``cells`` as an official CHAMMI download under ``root`` (see the module docstring)."""
    import pandas as pd
    import tifffile
    from PIL import Image

    from chammi_data.interop.official_layout import chw_to_tape

    root = Path(root)
    rows: dict[str, list[dict]] = {}
    for cell in cells:
        info = SOURCES[cell.source]
        ext = ".tiff" if cell.source == "wtc11" else ".png"
        rel = f"{info.folder}/{cell.split or 'none'}/{cell.cell_id}{ext}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tape = chw_to_tape(cell.image)
        if cell.source in tiff_sources:
            tifffile.imwrite(path, tape)
        else:
            Image.fromarray(tape).save(path, format="PNG")
        row = {
            "file_path": rel,
            "channel_width": cell.image.shape[2],
            "Label": cell.label,
            "train_test_split": cell.split,
            **{t: t in cell.tasks for t in info.tasks},
            info.group_column: cell.groups.get(info.group_column, ""),
            "ID": cell.cell_id,
        }
        if cell.source == "cp":
            row["source"] = cell.groups.get("dataset", "")
        row.update({k: v for k, v in cell.meta.items() if k not in row})
        rows.setdefault(cell.source, []).append(row)
    for source, recs in rows.items():
        pd.DataFrame(recs).to_csv(root / SOURCES[source].folder / "enriched_meta.csv", index=False)
    return root


@pytest.fixture(scope="session")
def official_factory():
    """The :func:`write_official` function."""
    return write_official


@pytest.fixture(scope="session")
def official_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny official-layout download of the tiny release's cells (READ ONLY)."""
    root = tmp_path_factory.mktemp("official") / "chammi"
    cells = [c for s in SOURCES for c in make_cells(s, TINY_N, seed=TINY_SEED[s])]
    return write_official(root, cells, tiff_sources=("wtc11",))


@pytest.fixture(scope="session")
def cell_factory():
    """The :func:`make_cells` function."""
    return make_cells


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny three-source release (READ ONLY; see the module docstring)."""
    from chammi_data.format.writer import ReleaseWriter

    root = tmp_path_factory.mktemp("tiny_release") / "release"
    writer = ReleaseWriter(
        root,
        cells_per_shard=TINY_CELLS_PER_SHARD,
        config={"fixture": "tiny_release", "n": TINY_N},
        progress=False,
    )
    for source in SOURCES:
        writer.add_source(source, make_cells(source, TINY_N, seed=TINY_SEED[source]))
    writer.close()
    return root


@pytest.fixture
def tiny_release_copy(tiny_release: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``tiny_release``."""
    dst = tmp_path / "release"
    shutil.copytree(tiny_release, dst)
    return dst


@pytest.fixture(scope="session")
def c75_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded CHAMMI-75 sample in its published layout (READ ONLY): 5 studies, 18 images."""
    from pipelines.sources.chammi75.synth import write_sample

    return write_sample(tmp_path_factory.mktemp("c75_raw") / "CHAMMI-75", seed=0)


@pytest.fixture(scope="session")
def c75_release(c75_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of the CHAMMI-75 sample (READ ONLY): whole images with their cells, 2 images per shard,
    idr0017 held out as Validation (3 images), 15 Train images."""
    from pipelines.engine.build import build

    out = tmp_path_factory.mktemp("c75_release") / "release"
    config = {"cells_per_shard": 2, "chammi75": {"images_per_unit": 4, "holdout_studies": ["idr0017"]}}
    result = build("chammi75", c75_raw, out, workers=1, config=config, progress=False, processes=False)
    assert result.ok, result.failed
    return out
