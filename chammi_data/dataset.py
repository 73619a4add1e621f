"""``chammi_data.load``: a map-style torch Dataset over a release, items are sample dicts.

>>> ds = load("train")                       # default release: $CHAMMI_RELEASE or ~/.cache/chammi/release
>>> ds = load("hpa/Task_three", root="out/release")
>>> sample = ds[0]   # {"image": float (C,H,W) in [0,1], "channels", "source", "label", "cell_id", "meta"}

Splits: ``train`` (``train_test_split == "Train"``), ``test`` (rows of any task), ``all``, a task in every
source that has it (``Task_two``), or one source's task (``hpa/Task_three``; folder names work too).
Task membership comes from the boolean task columns, as in the official evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from chammi_data import zarr_store
from chammi_data.manifest import parse_meta, read_manifest, sources_in
from chammi_data.paths import default_release_dir
from chammi_data.shards import ShardReader
from chammi_data.vocab import SOURCES, TASK_COLUMNS, source_info

BACKENDS = ("shards", "zarr")


def valid_splits() -> list[str]:
    """Every split name :func:`load` accepts."""
    out = ["train", "test", "all", *TASK_COLUMNS]
    out += [f"{k}/{t}" for k, info in SOURCES.items() for t in info.tasks]
    return out


def select_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``manifest`` in ``split`` (manifest order kept); ``ValueError`` listing valid splits."""
    name = split.strip()
    low = name.lower()
    if low == "all":
        return manifest
    if low == "train":
        return manifest[manifest["train_test_split"] == "Train"]
    if low == "test":
        return manifest[manifest[list(TASK_COLUMNS)].any(axis=1)]
    src, _, task = name.rpartition("/")
    task_col = next((t for t in TASK_COLUMNS if t.lower() == task.lower()), None)
    if task_col is None:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(valid_splits())}")
    if not src:
        return manifest[manifest[task_col]]
    try:
        info = source_info(src)
    except KeyError:
        raise ValueError(f"unknown source in split {split!r}; valid splits: {', '.join(valid_splits())}") from None
    if task_col not in info.tasks:
        raise ValueError(f"source {info.key} has no {task_col}; its tasks: {', '.join(info.tasks)}")
    return manifest[(manifest["source"] == info.key) & manifest[task_col]]


def to_float_tensor(arr: np.ndarray) -> torch.Tensor:
    """(C, H, W) uint8 / uint16 -> float32 tensor in [0, 1] (``x / 255`` or ``x / 65535``, correctly rounded).

    The one conversion every reader uses (``load``, ``stream``), so a cell is the same tensor whichever way it
    is read. numpy's divide is as fast here as a multiply by the reciprocal, which would differ in the last bit.
    """
    scale = np.float32(255.0 if arr.dtype == np.uint8 else 65535.0)
    return torch.from_numpy(np.divide(arr, scale, dtype=np.float32))


class ReleaseDataset(Dataset):
    """Map-style dataset over selected manifest rows of a release (see module docstring).

    ``image`` is a float32 tensor (C, H, W) scaled to [0, 1] (uint8 / 255, uint16 / 65535); ``meta`` is the
    source's provenance plus ``train_test_split``, ``tasks`` and ``row`` (the row within its source's
    manifest = feature row), without overwriting the source's own keys. ``backend`` picks the tar shards
    (pread by offset) or the zarr stores.
    """

    def __init__(self, root: str | Path, rows: pd.DataFrame, transform: Callable[[dict], dict] | None = None,
                 backend: str = "shards", verify: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.root = Path(root)
        self.rows = rows.reset_index(drop=True)
        self.transform = transform
        self.backend = backend
        self.verify = verify
        self._records = self.rows.to_dict("records")
        self._reader = ShardReader(self.root)
        self._zarr: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._records)

    @property
    def sources(self) -> list[str]:
        """Source keys present, in canonical order."""
        return sources_in(self.rows)

    def channels(self, source: str) -> tuple[str, ...]:
        """Channel names of a source's images in this release (image order)."""
        part = self.rows[self.rows["source"] == source_info(source).key]
        if part.empty:
            raise KeyError(f"no rows of source {source!r} in this dataset; present: {self.sources}")
        return tuple(str(part.iloc[0]["channels"]).split(","))

    def read_array(self, i: int) -> np.ndarray:
        """Raw (C, H, W) uint8/uint16 image of item ``i``."""
        row = self._records[i]
        if self.backend == "shards":
            return self._reader.read(row, verify=self.verify)
        src = row["source"]
        if src not in self._zarr:
            self._zarr[src] = zarr_store.open_images(self.root, src)
        return np.asarray(self._zarr[src][int(row["zarr_row"])])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} cells")
        i = i % len(self)
        row = self._records[i]
        arr = self.read_array(i)
        meta = parse_meta(row["meta"])
        meta.setdefault("train_test_split", row["train_test_split"])
        meta.setdefault("tasks", [t for t in TASK_COLUMNS if row[t]])
        meta.setdefault("row", int(row["zarr_row"]))
        sample = {
            "image": to_float_tensor(arr),
            "channels": tuple(str(row["channels"]).split(",")),
            "source": row["source"],
            "label": row["label"],
            "cell_id": row["cell_id"],
            "meta": meta,
        }
        return self.transform(sample) if self.transform is not None else sample

    def plot(self, i: int, suptitle: str | None = None):
        """A matplotlib Figure with one grayscale panel per channel, titled by channel name."""
        from matplotlib.figure import Figure

        row = self._records[i]
        arr = self.read_array(i)
        names = str(row["channels"]).split(",")
        top = np.iinfo(arr.dtype).max
        fig = Figure(figsize=(2.2 * len(names), 2.6))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, chan, name in zip(axes, arr, names, strict=True):
            ax.imshow(chan, cmap="gray", vmin=0, vmax=top)
            ax.set_title(name)
            ax.axis("off")
        fig.suptitle(suptitle or f"{row['source']} {row['cell_id']}  label: {row['label']}")
        return fig

    def __repr__(self) -> str:
        counts = self.rows["source"].value_counts().to_dict()
        return f"ReleaseDataset(root={str(self.root)!r}, n={len(self)}, sources={counts}, backend={self.backend!r})"


def load(split: str = "train", root: str | Path | None = None, sources: Sequence[str] | str | None = None,
         transform: Callable[[dict], dict] | None = None, backend: str = "shards") -> ReleaseDataset:
    """A :class:`ReleaseDataset` of ``split`` from the release at ``root`` (default location when None).

    ``sources`` restricts to some sources (keys or folder names). An empty selection is an error that says
    which sources and tasks the release has.
    """
    root = Path(root) if root is not None else default_release_dir()
    manifest = read_manifest(root)
    if sources is not None:
        keys = [source_info(s).key for s in ([sources] if isinstance(sources, str) else sources)]
        manifest = manifest[manifest["source"].isin(keys)]
    rows = select_rows(manifest, split)
    if rows.empty:
        have = {s: [t for t in TASK_COLUMNS if manifest.loc[manifest["source"] == s, t].any()] for s in sources_in(manifest)}
        raise ValueError(f"split {split!r} selects no cells in release {root} (sources/tasks present: {have})")
    return ReleaseDataset(root, rows, transform=transform, backend=backend)
