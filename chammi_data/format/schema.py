"""One schema for a cell, used by every writer, reader, pipeline and model.

A *cell* is one single-cell image with its identity and provenance. In memory it is a :class:`Cell`; on
its way through loaders and models it is a *sample dict*; on disk it is one row of the manifest plus one
image in the tar shards and zarr. How those look (columns, records, samples) is
:mod:`chammi_data.format.release_format`; this module holds the cell itself, its id and its checksums.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chammi_data.format.codec import MAX_GUIDANCE_CELLS, Guidance
from chammi_data.format.release_format import SPLITS, cell_record, check_cell_id, make_sample
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, TASK_COLUMNS, VARIABLE_SOURCES, to_names

SCHEMA_VERSION = 1


def make_cell_id(source: str, *parts: Any) -> str:
    """A stable id from a source key and the raw identifiers that name the cell in its source.

    The id depends only on its inputs (no counters, no time), so rebuilding the same input gives the same
    ids. It is a readable prefix plus a short hash, contains no dots (it doubles as a WebDataset key) and
    sorts deterministically.
    """
    if source not in RELEASE_SOURCE_KEYS:
        raise KeyError(f"unknown source {source!r}; valid: {', '.join(RELEASE_SOURCE_KEYS)}")
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(f"{source}\x1f{text}".encode()).hexdigest()[:16]
    return f"{source}-{digest}"


def image_checksum(image: np.ndarray) -> str:
    """sha256 hex digest of an image's bytes in C order, prefixed by dtype and shape so a reshape differs."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


@dataclass
class Cell:
    """One single-cell image with identity, label, split membership and provenance.

    ``image`` is (C, H, W), uint8 or uint16, channel k named ``channels[k]``. ``tasks`` holds the task
    columns this cell is a test query of; ``split`` is the official single-valued ``train_test_split``.
    ``meta`` holds the source's own provenance columns (JSON-serialisable scalars): structure, cell line,
    plate, well, site, compound, field id, centroid, original file, ...

    ``guidance``: the cells of a whole image of a variable source (CHAMMI-75): their centroids (and areas),
    stored after the pixels in the image's tar member (``codec``), never in ``meta`` (so never in the
    manifest). Its channels may be any of the source's channel names, its size any size.
    """

    image: np.ndarray
    channels: tuple[str, ...]
    source: str
    label: str
    cell_id: str
    meta: dict[str, Any] = field(default_factory=dict)
    split: str = ""
    tasks: frozenset[str] = frozenset()
    groups: dict[str, str] = field(default_factory=dict)  # Structure / cell_type / Plate / dataset
    guidance: Guidance | None = None

    def __post_init__(self) -> None:
        self.channels = to_names(self.channels)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the cell and the problem when the cell breaks the schema."""
        where = f"cell {self.cell_id!r} ({self.source})"
        if self.source not in RELEASE_SOURCE_KEYS:
            raise ValueError(f"{where}: unknown source; valid: {', '.join(RELEASE_SOURCE_KEYS)}")
        check_cell_id(self.cell_id, where)
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3:
            raise ValueError(
                f"{where}: image must be a (C, H, W) array, got {getattr(img, 'shape', type(img))}"
            )
        if img.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{where}: image dtype must be uint8 or uint16, got {img.dtype}")
        if img.shape[0] != len(self.channels):
            raise ValueError(
                f"{where}: image has {img.shape[0]} channels but {len(self.channels)} names {self.channels}"
            )
        self._check_variable(where)
        if self.split and self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} not one of {SPLITS}")
        bad = set(self.tasks) - set(TASK_COLUMNS)
        if bad:
            raise ValueError(f"{where}: unknown task(s) {sorted(bad)}; valid: {TASK_COLUMNS}")

    def _check_variable(self, where: str) -> None:
        """Channels of a variable source come from its list; guidance only there, with centroids inside."""
        info = VARIABLE_SOURCES.get(self.source)
        if info is None:
            if self.guidance is not None:
                raise ValueError(f"{where}: only images of {', '.join(VARIABLE_SOURCES)} carry guidance")
            return
        odd = [c for c in self.channels if c not in info.channels]
        if odd:
            raise ValueError(f"{where}: channels {odd} are not {info.name} channel types")
        if self.guidance is None:
            return
        c = np.asarray(self.guidance.centroids)
        h, w = self.image.shape[1:]
        if c.ndim != 2 or c.shape[1] != 2 or len(c) > MAX_GUIDANCE_CELLS:
            raise ValueError(
                f"{where}: centroids must be (N, 2) with N <= {MAX_GUIDANCE_CELLS}, got {c.shape}"
            )
        if len(c) and not ((c >= 0).all() and (c[:, 0] < w).all() and (c[:, 1] < h).all()):
            raise ValueError(f"{where}: centroids (x, y) outside the {w} x {h} image")

    @property
    def checksum(self) -> str:
        return image_checksum(self.image)

    def to_sample(self) -> dict[str, Any]:
        """The sample dict (keys ``release_format.SAMPLE_KEYS``); the image stays a numpy array and ``meta``
        holds the provenance plus ``train_test_split`` and ``tasks`` (as a reader's sample does)."""
        meta = dict(self.meta)
        meta.setdefault("train_test_split", self.split)
        meta.setdefault("tasks", [t for t in TASK_COLUMNS if t in self.tasks])
        return make_sample(
            self.image,
            channels=self.channels,
            source=self.source,
            label=self.label,
            cell_id=self.cell_id,
            meta=meta,
        )

    def record(self, checksum: str | None = None) -> dict[str, Any]:
        """The JSON record stored beside the image in a shard (``release_format.cell_record``).

        ``checksum``: :attr:`checksum` when the caller already computed it (a build computes it once, on the
        worker that made the cell)."""
        return cell_record(
            cell_id=self.cell_id,
            source=self.source,
            label=self.label,
            channels=self.channels,
            shape=self.image.shape,
            dtype=str(self.image.dtype),
            split=self.split,
            tasks=self.tasks,
            groups=self.groups,
            sha256=checksum or self.checksum,
            meta=self.meta,
        )
