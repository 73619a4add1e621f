"""``chammi_data.load``: a map-style torch Dataset over a release, items are sample dicts.

>>> ds = load("train")                       # default release: $CHAMMI_RELEASE or ~/.cache/chammi/release
>>> ds = load("hpa/Task_three", root="out/release")
>>> sample = ds[0]   # {"image": float (C,H,W) in [0,1], "channels", "source", "label", "cell_id", "meta"}

Splits (``release_format.select_rows``): ``train``, ``test`` (rows of any task), ``all``, a task in every
source that has it (``Task_two``), or one source's task (``hpa/Task_three``; folder names work too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from chammi_data.format.manifest import read_manifest, sources_in
from chammi_data.format.release_format import parse_channels, sample_from_row, select_rows, to_float_tensor
from chammi_data.format.shards import ShardReader, add_guidance
from chammi_data.format.vocab import is_variable, source_info
from chammi_data.format.zarr_rows import ZarrRows
from chammi_data.loading.columns import RowColumns
from chammi_data.store.storage import OnRelease, ReleaseStore, open_store, require_store

BACKENDS = ("shards", "zarr")


class ReleaseDataset(OnRelease, Dataset):
    """Map-style dataset over selected manifest rows of a release (see module docstring).

    ``image`` is a float32 tensor (C, H, W) scaled to [0, 1] (uint8 / 255, uint16 / 65535); ``meta`` is the
    source's provenance plus ``train_test_split``, ``tasks`` and ``row`` (the row within its source's
    manifest = feature row), without overwriting the source's own keys. A CHAMMI-75 image is whole, with its
    cells in ``meta["centroids"]`` ((N, 2) int32, x and y; ``cell_sizes`` when known). ``backend`` picks the
    tar shards
    (one read per cell at its manifest offset: a ``pread`` locally, a ranged request remotely) or the zarr
    stores (each row read checked against the manifest's pixel crc32c: :mod:`chammi_data.format.zarr_rows`).
    ``store`` is the release's :class:`~chammi_data.store.storage.ReleaseStore` (``load`` opens it).
    ``verify``: None checks every read (frame checksums, sha256 where a frame has none), True always checks
    the pixels' sha256 against the manifest.
    """

    def __init__(
        self,
        store: ReleaseStore,
        rows: pd.DataFrame,
        transform: Callable[[dict], dict] | None = None,
        backend: str = "shards",
        verify: bool | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.store = require_store(store, "ReleaseDataset")
        self.rows = rows.reset_index(drop=True)
        self.transform = transform
        self.backend = backend
        self.verify = verify
        # the rows column by column, a row's dict made when it is read: 2.8 M dicts (or 2.8 M strings per
        # column) up front would take tens of seconds and gigabytes (chammi_data.loading.columns)
        self._columns = RowColumns(self.rows)
        self._reader = ShardReader(self.store)
        self._zarr: dict[str, ZarrRows] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _record(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict (manifest column -> value)."""
        return self._columns.row(int(i))

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
        row = self._record(i)
        if self.backend == "shards":
            return self._reader.read(row, verify=self.verify)
        src = row["source"]
        if src not in self._zarr:
            self._zarr[src] = ZarrRows(self.store, src)
        return self._zarr[src].read(row, verify=self.verify)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} cells")
        i = i % len(self)
        row = self._record(i)
        if self.backend == "shards" and is_variable(row["source"]):  # its cells come with the pixels
            image, guidance = self._reader.read_member(row, verify=self.verify)
            sample = sample_from_row(row, to_float_tensor(image))
            add_guidance(sample["meta"], guidance)
        else:
            sample = sample_from_row(row, to_float_tensor(self.read_array(i)))
        return self.transform(sample) if self.transform is not None else sample

    def plot(self, sample: int | Mapping[str, Any], suptitle: str | None = None, show_titles: bool = True):
        """A matplotlib Figure with one grayscale panel per channel, titled by channel name.

        ``sample``: a sample dict (as torchgeo's ``plot``: ``image`` (C, H, W), ``channels``, and ``source``,
        ``cell_id``, ``label`` for the title; an optional ``prediction`` is shown beside the label) or an
        item index (its raw pixels are drawn). Integer images use their dtype's range, float images [0, 1]
        when they lie in it, else each channel's own min..max (e.g. after normalisation).
        """
        from matplotlib.figure import Figure

        if isinstance(sample, Mapping):
            arr = _as_numpy(sample["image"])
            names = tuple(sample["channels"])
            info: Mapping[str, Any] = sample
        else:
            arr = self.read_array(sample)
            info = self._record(sample)
            names = parse_channels(info["channels"])
        if arr.ndim != 3 or arr.shape[0] != len(names):
            raise ValueError(
                f"cannot plot an image of shape {arr.shape} with channels {names}: expected (C, H, W)"
            )
        fig = Figure(figsize=(2.2 * len(names), 2.6))
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, chan, name in zip(axes, arr, names, strict=True):
            ax.imshow(chan, cmap="gray", **_display_range(arr, chan))
            if show_titles:
                ax.set_title(name)
            ax.axis("off")
        if show_titles or suptitle:
            title = f"{info.get('source', '')} {info.get('cell_id', '')}  label: {info.get('label', '')}"
            if "prediction" in info:
                title += f"  prediction: {info['prediction']}"
            fig.suptitle(suptitle or title)
        return fig

    # --- torchvision / torchgeo conventions ---------------------------------------------------------------
    # Labels are strings, and each source has its own label space (cell-cycle stages, localisations,
    # compounds), scored separately by the protocol. So class indices are PER SOURCE: ``classes[source]`` is
    # the sorted list of that source's labels among THIS dataset's rows, and ``targets[i]`` indexes item i's
    # label within its own source. A test selection with novel classes (hpa/Task_three) therefore has its own
    # indices; map it into a training set's with ``train_ds.class_to_idx[source].get(label)``.

    @cached_property
    def classes(self) -> dict[str, list[str]]:
        """``{source: sorted labels of that source in this dataset}``, sources in canonical order."""
        return {
            src: sorted(set(self.rows.loc[self.rows["source"] == src, "label"].astype(str)))
            for src in self.sources
        }

    @cached_property
    def class_to_idx(self) -> dict[str, dict[str, int]]:
        """``{source: {label: index into classes[source]}}``."""
        return {src: {label: k for k, label in enumerate(labels)} for src, labels in self.classes.items()}

    @cached_property
    def targets(self) -> list[int]:
        """Class index of every item within its source (``class_to_idx[source][label]``), in item order."""
        index = self.class_to_idx
        sources, labels = self.rows["source"].tolist(), self.rows["label"].tolist()
        return [index[s][str(lab)] for s, lab in zip(sources, labels, strict=True)]

    @staticmethod
    def collate_fn(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Collate for ``DataLoader(ds, collate_fn=ds.collate_fn)``:
        :func:`chammi_data.loading.collate.group_by_channels`.

        A batch mixing sources has images with different channel counts (WTC 3, HPA 4, CP 5), which no single
        tensor holds: torch's default collate then fails inside ``torch.stack`` ("stack expects each tensor to
        be equal size"). This returns a list of batches, one per (source, channel set); for one batch per
        source use ``load(..., sources="hpa")`` or :class:`chammi_data.loading.collate.HomogeneousBatcher`.
        Images must also share H x W (a crop/resize transform, e.g. ``train_transform``).
        """
        from chammi_data.loading.collate import group_by_channels

        return group_by_channels(samples)

    def __repr__(self) -> str:
        counts = self.rows["source"].value_counts().to_dict()
        return (
            f"ReleaseDataset(root={str(self.root)!r}, n={len(self)}, sources={counts}, "
            f"backend={self.backend!r})"
        )


def load(
    split: str = "train",
    root: Any = None,
    sources: Sequence[str] | str | None = None,
    transform: Callable[[dict], dict] | None = None,
    backend: str = "shards",
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    verify: bool | None = None,
) -> ReleaseDataset:
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


def _as_numpy(image: Any) -> np.ndarray:
    """A numpy view of a sample's image (tensor on any device, any float dtype, or array)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        return (image.float() if image.is_floating_point() else image).numpy()
    return np.asarray(image)


def _display_range(image: np.ndarray, channel: np.ndarray) -> dict[str, float]:
    """vmin/vmax for one channel panel of ``image`` (see :meth:`ReleaseDataset.plot`)."""
    if image.dtype.kind in "ui":
        return {"vmin": 0, "vmax": float(np.iinfo(image.dtype).max)}
    if image.size and image.min() >= 0 and image.max() <= 1:
        return {"vmin": 0.0, "vmax": 1.0}
    lo, hi = float(channel.min()), float(channel.max())
    return {"vmin": lo, "vmax": hi if hi > lo else lo + 1}
