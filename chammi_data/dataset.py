"""``chammi_data.load``: a map-style torch Dataset over a release, items are sample dicts.

>>> ds = load("train")                       # default release: $CHAMMI_RELEASE or ~/.cache/chammi/release
>>> ds = load("hpa/Task_three", root="out/release")
>>> sample = ds[0]   # {"image": float (C,H,W) in [0,1], "channels", "source", "label", "cell_id", "meta"}

Splits (``release_format.select_rows``): ``train``, ``test`` (rows of any task), ``all``, a task in every
source that has it (``Task_two``), or one source's task (``hpa/Task_three``; folder names work too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from chammi_data.manifest import read_manifest, sources_in
from chammi_data.release_format import parse_channels, sample_from_row, select_rows, to_float_tensor
from chammi_data.shards import ShardReader
from chammi_data.storage import open_store, open_zarr_images
from chammi_data.vocab import source_info

BACKENDS = ("shards", "zarr")


class ReleaseDataset(Dataset):
    """Map-style dataset over selected manifest rows of a release (see module docstring).

    ``image`` is a float32 tensor (C, H, W) scaled to [0, 1] (uint8 / 255, uint16 / 65535); ``meta`` is the
    source's provenance plus ``train_test_split``, ``tasks`` and ``row`` (the row within its source's
    manifest = feature row), without overwriting the source's own keys. ``backend`` picks the tar shards
    (one read per cell at its manifest offset: a ``pread`` locally, a ranged request remotely) or the zarr
    stores. ``root`` is any release location (folder, URL, :class:`~chammi_data.storage.ReleaseStore`).
    ``verify``: None checks every read (frame checksums, sha256 where a frame has none), True always checks
    the pixels' sha256 against the manifest.
    """

    def __init__(self, root: Any, rows: pd.DataFrame, transform: Callable[[dict], dict] | None = None,
                 backend: str = "shards", verify: bool | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.store = open_store(root)
        self.rows = rows.reset_index(drop=True)
        self.transform = transform
        self.backend = backend
        self.verify = verify
        self._records = self.rows.to_dict("records")
        self._reader = ShardReader(self.store)
        self._zarr: dict[str, Any] = {}

    @property
    def root(self) -> Any:
        """The release location: a Path for a local release, else its URL."""
        return self.store.root if self.store.is_local else self.store.url

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
        return parse_channels(part.iloc[0]["channels"])

    def read_array(self, i: int) -> np.ndarray:
        """Raw (C, H, W) uint8/uint16 image of item ``i``."""
        row = self._records[i]
        if self.backend == "shards":
            return self._reader.read(row, verify=self.verify)
        src = row["source"]
        if src not in self._zarr:
            self._zarr[src] = open_zarr_images(self.store, src)
        return np.asarray(self._zarr[src][int(row["zarr_row"])])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} cells")
        i = i % len(self)
        sample = sample_from_row(self._records[i], to_float_tensor(self.read_array(i)))
        return self.transform(sample) if self.transform is not None else sample

    def plot(self, i: int, suptitle: str | None = None):
        """A matplotlib Figure with one grayscale panel per channel, titled by channel name."""
        from matplotlib.figure import Figure

        row = self._records[i]
        arr = self.read_array(i)
        names = parse_channels(row["channels"])
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


def load(split: str = "train", root: Any = None, sources: Sequence[str] | str | None = None,
         transform: Callable[[dict], dict] | None = None, backend: str = "shards",
         storage_options: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None,
         verify: bool | None = None) -> ReleaseDataset:
    """A :class:`ReleaseDataset` of ``split`` from the release at ``root``.

    ``root``: a folder, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` or any fsspec URL, or an fsspec
    mapper; None = ``$CHAMMI_RELEASE`` or ``~/.cache/chammi/release``. ``storage_options`` go to fsspec
    (credentials otherwise come from the standard environment and config files); ``cache_dir`` caches whole
    remote shards locally, checked against ``release.json``. ``sources`` restricts to some sources (keys or
    folder names). An empty selection is an error that says which sources and tasks the release has.
    """
    store = open_store(root, storage_options, cache_dir)
    rows = select_rows(read_manifest(store), split, sources, where=f"release {store}")
    return ReleaseDataset(store, rows, transform=transform, backend=backend, verify=verify)
