"""The release format's vocabulary: every fact about manifest rows, shard records and samples, in one place.

Readers, writers, the validator, the exporter, the pipelines and the trainer ask here instead of spelling
the format out themselves:

- the manifest columns and their types, the group columns, the split values and the cell-id character set;
- parsing and formatting of the text forms: channel lists (comma-joined names), booleans, ``meta`` (JSON);
- the split/task predicates and the one row selection used by loading, streaming, training and evaluation;
- the shard's JSON record of a cell, the manifest row made from it, and the release counts;
- the one sample dict builder and the one integer-to-float conversion.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from chammi_data.format.vocab import (
    RELEASE_SOURCE_KEYS,
    SOURCES,
    TASK_COLUMNS,
    release_source,
    source_info,
    to_names,
)

if TYPE_CHECKING:
    import torch

#: Keys of the sample dict that flows from loaders to models.
SAMPLE_KEYS = ("image", "channels", "source", "label", "cell_id", "meta")

#: ``train_test_split`` value of training rows (the 1-NN reference and the training set).
TRAIN = "Train"
#: ``train_test_split`` value of rows held out to validate pretraining (CHAMMI-75's held-out studies);
#: CHAMMI's own sources never use it.
VALIDATION = "Validation"
#: Values of ``train_test_split`` in CHAMMI (the official column); ``""`` means the cell is in no split.
CHAMMI_SPLITS = (TRAIN,) + TASK_COLUMNS
#: Values of ``train_test_split`` in a release (CHAMMI's and ``Validation``).
SPLITS = CHAMMI_SPLITS + (VALIDATION,)

#: Grouping columns every manifest row carries ("" where a source has no such group). CHAMMI-75 rows use
#: ``dataset`` = study, ``Plate`` = plate and ``cell_type`` = cell line.
GROUP_COLUMNS: tuple[str, ...] = ("Structure", "cell_type", "Plate", "dataset")

#: Manifest columns every release has, in order. Provenance stays in ``meta`` (a JSON object per row).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "cell_id",  # stable id: same input -> same id across rebuilds (see CELL_ID_PATTERN)
    "source",  # wtc11 | hpa | cp
    "label",  # class string (official column `Label`)
    "train_test_split",  # Train | Task_one | ... (official column); "" when the cell is in no split
    *TASK_COLUMNS,  # booleans: test membership per task (the evaluator reads these)
    *GROUP_COLUMNS,  # Structure (WTC), cell_type (HPA), Plate (CP), dataset (CP LINCS | CDRP | BBBC022)
    "channels",  # comma-joined channel names in image order
    "height",
    "width",
    "dtype",  # uint8 | uint16
    "shard",  # tar shard path relative to the release root
    "key",  # WebDataset key of the sample in that shard (= cell_id)
    "offset",  # byte offset of the image member's data in the shard
    "nbytes",  # size in bytes of the image member's data (compressed .npy)
    "zarr_row",  # row of the cell in zarr/<source>.zarr images (N, C, H, W)
    "sha256",  # sha256 of the image bytes (C-order, native dtype): schema.image_checksum
    "crc32c",  # crc32c of the pixel bytes (C order, little-endian; -1: not recorded): zarr reads check it
    "meta",  # JSON object: the source's own provenance columns
)
INT_COLUMNS: tuple[str, ...] = ("height", "width", "offset", "nbytes", "zarr_row", "crc32c")
#: Columns a manifest written before they existed may lack, and the value they then read as.
OPTIONAL_COLUMNS: dict[str, Any] = {"crc32c": -1}
BOOL_COLUMNS: tuple[str, ...] = TASK_COLUMNS
IMAGE_DTYPES: tuple[str, ...] = ("uint8", "uint16")

#: A cell id (and WebDataset key): letters, digits, ``_`` and ``-``, starting with a letter or digit. No dots
#: (a key ends at the first dot), no path separators (ids become file names on export).
CELL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


class CellIdError(ValueError):
    """A cell id outside :data:`CELL_ID_PATTERN`; the message names where it was found."""


def check_cell_id(value: Any, where: str = "cell") -> str:
    """``value`` when it is a valid cell id, else :class:`CellIdError` naming ``where`` and the value."""
    if not isinstance(value, str) or CELL_ID_PATTERN.fullmatch(value) is None:
        raise CellIdError(
            f"{where}: invalid cell_id {value!r}: cell ids are 1-128 letters, digits, '_' or '-' (no dots, "
            "no slashes)"
        )
    return value


# ------------------------------------------------------------------------------------------ text forms
def to_jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, numpy scalars as Python scalars and non-finite floats as None."""
    t = type(value)  # exact built-in types first: the ABC checks below are slow on a shard's records
    if t is str or t is int or t is bool or value is None:
        return value
    if t is dict:
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same object always gives the same bytes."""
    return json.dumps(
        to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_channels(channels: Iterable[str]) -> str:
    """The manifest spelling of a channel list: names joined by commas, in image order."""
    return ",".join(channels)


@functools.lru_cache(maxsize=256)
def parse_channels(text: str) -> tuple[str, ...]:
    """A manifest ``channels`` value -> tuple of vocabulary names (checked; ``KeyError``/``ValueError``
    else)."""
    return to_names(str(text).split(","))


_BOOL_TEXT = {
    "true": True,
    "t": True,
    "yes": True,
    "1": True,
    "1.0": True,
    "false": False,
    "f": False,
    "no": False,
    "0": False,
    "0.0": False,
}


def parse_bool(value: Any, where: str = "value", empty: bool | None = None) -> bool:
    """A boolean from a bool, a number 0/1 or a text (true/false, t/f, yes/no, 1/0, 1.0/0.0; any case).

    ``empty``: the value of an empty cell ("" or NaN); None (default) makes an empty cell an error.
    Raises ``ValueError`` naming ``where`` for anything else.
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        text = ""
    else:
        text = str(value).strip().lower()
    if text == "" and empty is not None:
        return empty
    out = _BOOL_TEXT.get(text)
    if out is None:
        raise ValueError(f"{where}: {value!r} is not a boolean")
    return out


def parse_bool_column(values: pd.Series, where: str, empty: bool | None = None) -> np.ndarray:
    """:func:`parse_bool` over a column -> (N,) bool array; the error names the first bad row."""
    if values.dtype == bool:
        return values.to_numpy()
    out = np.empty(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        out[i] = parse_bool(v, f"{where} row {i}", empty)
    return out


def format_meta(meta: Mapping[str, Any]) -> str:
    """The manifest spelling of a cell's provenance: canonical JSON of the object."""
    return canonical_json(dict(meta))


def parse_meta(value: Any) -> dict[str, Any]:
    """The ``meta`` column (a JSON object string) as a dict; '' -> {}."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    out = json.loads(value)
    if not isinstance(out, dict):
        raise ValueError(f"manifest meta is not a JSON object: {str(value)[:80]!r}")
    return out


# ---------------------------------------------------------------------------------- splits and selection
def train_mask(split: pd.Series | Sequence[str]) -> np.ndarray:
    """(N,) bool: which ``train_test_split`` values mark training rows."""
    values = split if isinstance(split, pd.Series) else pd.Series(list(split), dtype=object)
    return (values.fillna("").astype(str).str.strip() == TRAIN).to_numpy()


def task_list(row: Mapping[str, Any]) -> list[str]:
    """The task columns that are true in a manifest row, in ``TASK_COLUMNS`` order."""
    return [t for t in TASK_COLUMNS if bool(row[t])]


def valid_splits() -> list[str]:
    """Every split name :func:`select_rows` accepts."""
    out = ["train", "validation", "test", "all", *TASK_COLUMNS]
    out += [f"{k}/{t}" for k, info in SOURCES.items() for t in info.tasks]
    return out


def source_keys(sources: Sequence[str] | str | None) -> list[str] | None:
    """Source keys from keys or release folder names (``Allen``), checked; None stays None."""
    if sources is None:
        return None
    return [release_source(s) for s in ([sources] if isinstance(sources, str) else sources)]


def select_rows(
    manifest: pd.DataFrame,
    split: str = "train",
    sources: Sequence[str] | str | None = None,
    where: str = "the release",
) -> pd.DataFrame:
    """Rows of ``manifest`` in ``split``, restricted to ``sources``, in manifest order (index kept).

    Splits: ``train`` (``train_test_split == "Train"``), ``validation`` (``"Validation"``: held-out CHAMMI-75
    studies), ``test`` (rows of any task), ``all``, a task in every
    source that has it (``Task_two``), or one source's task (``hpa/Task_three``; folder names work too).
    Task membership comes from the boolean task columns, as in the official evaluator. An unknown split or
    an empty selection is a ``ValueError`` that lists the valid splits or what ``where`` holds.
    """
    keys = source_keys(sources)
    if keys is not None:
        manifest = manifest[manifest["source"].isin(keys)]
    rows = _select_split(manifest, split)
    if rows.empty:
        have = {
            s: [t for t in TASK_COLUMNS if manifest.loc[manifest["source"] == s, t].any()]
            for s in RELEASE_SOURCE_KEYS
            if (manifest["source"] == s).any()
        }
        raise ValueError(f"split {split!r} selects no cells in {where} (sources and their tasks: {have})")
    return rows


def _select_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    name = split.strip()
    low = name.lower()
    if low == "all":
        return manifest
    if low == "train":
        return manifest[train_mask(manifest["train_test_split"])]
    if low == "validation":
        return manifest[manifest["train_test_split"].astype(str).str.strip() == VALIDATION]
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
        raise ValueError(
            f"unknown source in split {split!r}; valid splits: {', '.join(valid_splits())}"
        ) from None
    if task_col not in info.tasks:
        raise ValueError(f"source {info.key} has no {task_col}; its tasks: {', '.join(info.tasks)}")
    return manifest[(manifest["source"] == info.key) & manifest[task_col]]


# ------------------------------------------------------------------------------ records and manifest rows
def cell_record(
    *,
    cell_id: str,
    source: str,
    label: str,
    channels: Sequence[str],
    shape: Sequence[int],
    dtype: str,
    split: str,
    tasks: Iterable[str],
    groups: Mapping[str, Any],
    sha256: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON record stored beside a cell's image in a tar shard (``<key>.json``): everything but the
    pixels."""
    return {
        "cell_id": cell_id,
        "source": source,
        "label": label,
        "channels": list(channels),
        "shape": [int(x) for x in shape],
        "dtype": str(dtype),
        "train_test_split": split,
        "tasks": sorted(tasks),
        "groups": dict(sorted(groups.items())),
        "sha256": sha256,
        "meta": meta,
    }


def manifest_row(
    record: Mapping[str, Any], shard: str, offset: int, nbytes: int, zarr_row: int
) -> dict[str, Any]:
    """The manifest row (keys = :data:`MANIFEST_COLUMNS`) of a cell written with ``record``
    (:func:`cell_record`)."""
    _c, h, w = record["shape"]
    tasks, groups = set(record["tasks"]), record["groups"]
    row: dict[str, Any] = {
        "cell_id": record["cell_id"],
        "source": record["source"],
        "label": record["label"],
        "train_test_split": record["train_test_split"],
    }
    row.update({t: t in tasks for t in TASK_COLUMNS})
    row.update({g: str(groups.get(g, "")) for g in GROUP_COLUMNS})
    row.update(
        {
            "channels": format_channels(record["channels"]),
            "height": int(h),
            "width": int(w),
            "dtype": str(record["dtype"]),
            "shard": shard,
            "key": record["cell_id"],
            "offset": int(offset),
            "nbytes": int(nbytes),
            "zarr_row": int(zarr_row),
            "sha256": record["sha256"],
            # the zarr writer computes it from the stored chunk; finalize_release fills it in
            "crc32c": int(record.get("crc32c", -1)),
            "meta": format_meta(record["meta"]),
        }
    )
    return row


def record_mismatches(record: Mapping[str, Any], row: Mapping[str, Any]) -> list[str]:
    """Fields of a shard's JSON record that disagree with its manifest row (empty: they agree)."""
    expect = {
        "cell_id": row["cell_id"],
        "source": row["source"],
        "label": row["label"],
        "train_test_split": row["train_test_split"],
        "channels": list(parse_channels(row["channels"])),
        "dtype": row["dtype"],
        "sha256": row["sha256"],
        "tasks": sorted(task_list(row)),
    }
    bad = [k for k, v in expect.items() if record.get(k) != v]
    groups = record.get("groups") or {}
    bad += [g for g in GROUP_COLUMNS if str(groups.get(g, "")) != row[g]]
    try:
        if parse_meta(row["meta"]) != record.get("meta"):
            bad.append("meta")
    except json.JSONDecodeError:
        bad.append("meta (manifest JSON unreadable)")
    return bad


def expected_shape(row: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of a manifest row's image (from ``channels``, ``height``, ``width``) or of a record
    (``shape``)."""
    if "shape" in row:
        c, h, w = (int(x) for x in row["shape"])
        return c, h, w
    chans = row["channels"]
    n = len(parse_channels(chans)) if isinstance(chans, str) else len(chans)
    return n, int(row["height"]), int(row["width"])


def release_counts(df: pd.DataFrame) -> dict[str, Any]:
    """Cells per source, per split and per task (as stored in ``release.json["counts"]``)."""
    out: dict[str, Any] = {"total": int(len(df)), "sources": {}, "splits": {}, "tasks": {}}
    for src in RELEASE_SOURCE_KEYS:
        part = df[df["source"] == src]
        if part.empty:
            continue
        out["sources"][src] = int(len(part))
        out["splits"][src] = {
            str(k): int(v) for k, v in sorted(part["train_test_split"].value_counts().items())
        }
        out["tasks"][src] = {t: int(part[t].sum()) for t in TASK_COLUMNS if int(part[t].sum()) > 0}
    return out


# --------------------------------------------------------------------------------------------- samples
def make_sample(
    image: Any, *, channels: Sequence[str], source: str, label: str, cell_id: str, meta: dict[str, Any]
) -> dict[str, Any]:
    """The sample dict (keys :data:`SAMPLE_KEYS`) that flows from readers through transforms to models."""
    return {
        "image": image,
        "channels": tuple(channels),
        "source": source,
        "label": label,
        "cell_id": cell_id,
        "meta": meta,
    }


def row_meta(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sample's ``meta`` for a manifest row: the source's provenance plus ``train_test_split``, ``tasks``
    and ``row`` (the row within its source = feature row = zarr row), never overwriting the source's keys."""
    meta = parse_meta(row["meta"])
    meta.setdefault("train_test_split", row["train_test_split"])
    meta.setdefault("tasks", task_list(row))
    meta.setdefault("row", int(row["zarr_row"]))
    return meta


def sample_from_row(row: Mapping[str, Any], image: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sample of one manifest row with ``image``; ``meta`` defaults to :func:`row_meta`."""
    return make_sample(
        image,
        channels=parse_channels(row["channels"]),
        source=row["source"],
        label=row["label"],
        cell_id=row["cell_id"],
        meta=row_meta(row) if meta is None else meta,
    )


def to_float_tensor(image: Any) -> torch.Tensor:
    """(..., C, H, W) uint8 / uint16 -> float32 tensor in [0, 1] (``x / 255`` or ``x / 65535``, correctly
    rounded).

    The one conversion every reader and the training device use, so a cell is the same tensor whichever way
    it is read. Takes a numpy array or a tensor on any device (IEEE division gives the same bits on CPU and
    GPU); a float input is returned as float32 unchanged.
    """
    import torch

    if isinstance(image, np.ndarray):
        if image.dtype.kind == "f":
            return torch.from_numpy(image.astype(np.float32, copy=False))
        scale = np.float32(255.0 if image.dtype == np.uint8 else 65535.0)
        return torch.from_numpy(np.divide(image, scale, dtype=np.float32))
    if image.is_floating_point():
        return image.float()
    scale = 255.0 if image.dtype == torch.uint8 else 65535.0
    return image.to(torch.float32).div_(scale)
