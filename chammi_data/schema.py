"""One schema for a cell, used by every writer, reader, pipeline and model.

A *cell* is one single-cell image with its identity and provenance. In memory it is a :class:`Cell`; on
its way through loaders and models it is a *sample dict* with the keys of :data:`SAMPLE_KEYS`; on disk it
is one row of the manifest (columns :data:`MANIFEST_COLUMNS`) plus one image in the tar shards and zarr.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.vocab import SOURCES, TASK_COLUMNS, to_names

SCHEMA_VERSION = 1

#: Keys of the sample dict that flows from loaders to models.
SAMPLE_KEYS = ("image", "channels", "source", "label", "cell_id", "meta")

#: Values of ``train_test_split``.
SPLITS = ("Train",) + TASK_COLUMNS

#: Manifest columns every release has, in order. Provenance stays in ``meta`` (a JSON object per row).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "cell_id",  # stable id: same input -> same id across rebuilds
    "source",  # wtc11 | hpa | cp
    "label",  # class string (official column `Label`)
    "train_test_split",  # Train | Task_one | ... (official column); "" when the cell is in no split
    *TASK_COLUMNS,  # booleans: test membership per task (the evaluator reads these)
    "Structure",  # WTC grouping column (structure_name); "" elsewhere
    "cell_type",  # HPA grouping column (cell line); "" elsewhere
    "Plate",  # CP grouping column (plate barcode); "" elsewhere
    "dataset",  # source dataset: CP LINCS | CDRP | BBBC022 (official CP column `source`); "" elsewhere
    "channels",  # comma-joined channel names in image order
    "height",
    "width",
    "dtype",  # uint8 | uint16
    "shard",  # tar shard path relative to the release root
    "key",  # WebDataset key of the sample in that shard (no dots)
    "offset",  # byte offset of the image member's data in the shard
    "nbytes",  # size in bytes of the image member's data (compressed .npy)
    "zarr_row",  # row of the cell in zarr/<source>.zarr images (N, C, H, W)
    "sha256",  # sha256 of the image bytes (C-order, native dtype) - see `image_checksum`
    "meta",  # JSON object: the source's own provenance columns
)


def make_cell_id(source: str, *parts: Any) -> str:
    """A stable id from a source key and the raw identifiers that name the cell in its source.

    The id depends only on its inputs (no counters, no time), so rebuilding the same input gives the same
    ids. It is a readable prefix plus a short hash, contains no dots (it doubles as a WebDataset key) and
    sorts deterministically.
    """
    if source not in SOURCES:
        raise KeyError(f"unknown source {source!r}; valid: {', '.join(SOURCES)}")
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(f"{source}\x1f{text}".encode()).hexdigest()[:16]
    return f"{source}-{digest}"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def image_checksum(image: np.ndarray) -> str:
    """sha256 hex digest of an image's bytes in C order, prefixed by dtype and shape so a reshape differs."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    t = type(value)  # exact built-in types first: ABC isinstance checks cost a third of writing a shard's records
    if t is str or t is int or t is bool or value is None:
        return value
    if t is dict:
        return {str(k): _jsonable(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same bytes."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass
class Cell:
    """One single-cell image with identity, label, split membership and provenance.

    ``image`` is (C, H, W), uint8 or uint16, channel k named ``channels[k]``. ``tasks`` holds the task
    columns this cell is a test query of; ``split`` is the official single-valued ``train_test_split``.
    ``meta`` holds the source's own provenance columns (JSON-serialisable scalars): structure, cell line,
    plate, well, site, compound, field id, centroid, original file, ...
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

    def __post_init__(self) -> None:
        self.channels = to_names(self.channels)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the cell and the problem when the cell breaks the schema."""
        where = f"cell {self.cell_id!r} ({self.source})"
        if self.source not in SOURCES:
            raise ValueError(f"{where}: unknown source; valid: {', '.join(SOURCES)}")
        if not isinstance(self.cell_id, str) or not self.cell_id or "." in self.cell_id or "/" in self.cell_id:
            raise ValueError(f"{where}: cell_id must be a non-empty string without '.' or '/'")
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3:
            raise ValueError(f"{where}: image must be a (C, H, W) array, got {getattr(img, 'shape', type(img))}")
        if img.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{where}: image dtype must be uint8 or uint16, got {img.dtype}")
        if img.shape[0] != len(self.channels):
            raise ValueError(f"{where}: image has {img.shape[0]} channels but {len(self.channels)} names {self.channels}")
        if self.split and self.split not in SPLITS:
            raise ValueError(f"{where}: split {self.split!r} not one of {SPLITS}")
        bad = set(self.tasks) - set(TASK_COLUMNS)
        if bad:
            raise ValueError(f"{where}: unknown task(s) {sorted(bad)}; valid: {TASK_COLUMNS}")

    @property
    def checksum(self) -> str:
        return image_checksum(self.image)

    def to_sample(self) -> dict[str, Any]:
        """The sample dict (keys :data:`SAMPLE_KEYS`); the image stays a numpy array."""
        return {
            "image": self.image,
            "channels": self.channels,
            "source": self.source,
            "label": self.label,
            "cell_id": self.cell_id,
            "meta": dict(self.meta),
        }

    def record(self, checksum: str | None = None) -> dict[str, Any]:
        """The JSON record stored beside the image in a shard: everything but the pixels.

        ``checksum``: :attr:`checksum` when the caller already computed it (a build computes it once, on the
        worker that made the cell)."""
        return {
            "cell_id": self.cell_id,
            "source": self.source,
            "label": self.label,
            "channels": list(self.channels),
            "shape": list(self.image.shape),
            "dtype": str(self.image.dtype),
            "train_test_split": self.split,
            "tasks": sorted(self.tasks),
            "groups": dict(sorted(self.groups.items())),
            "sha256": checksum or self.checksum,
            "meta": self.meta,
        }
