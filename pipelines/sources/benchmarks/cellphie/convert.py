"""CellPHIE's published pickle -> our own format, once, behind an explicit opt-in.

CellPHIE's single cells are published as one Python pickle (14-channel 64 x 64 crops with ``image,
soma_mask, train, UMI, Gene, Time, Media, Sample``). **Loading a pickle can run any code its author put in
it**, so no build reads it: ``chammi-build cellphie-convert --input PICKLE --output DIR --trust-pickle``
converts it once, with a loud warning, and the ``cellphie`` build source reads only the result. Without
``trust=True`` (``--trust-pickle``) :func:`convert_pickle` refuses before reading a byte of it.

Defence in depth, not a sandbox: the pickle is loaded by :class:`RestrictedUnpickler`, which resolves only
the exact names a pickled pandas DataFrame / list of dicts / dict of numpy arrays needs
(:data:`ALLOWED_GLOBALS`); any other name the pickle references is refused with its name, before it is
called. Trust the file's origin anyway.

The converted form (:data:`FORMAT`), read by byte ranges (never unpickled, ``allow_pickle=False``)::

    DIR/cellphie.json      format, cell count, channels, height, width, dtype, scale, the pickle's sha256
    DIR/images.npy         (N, C, H, W) uint8 | uint16 (float images in [0, 1] become uint16: x * 65535)
    DIR/soma_masks.npy     (N, H, W) uint8, 1 inside the soma
    DIR/cells.csv          one row per cell: train, umi, gene, time, media, sample
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = "chammi-cellphie/1"
INFO, IMAGES, MASKS, CELLS = "cellphie.json", "images.npy", "soma_masks.npy", "cells.csv"
#: pickle column -> our column (matched case-insensitively)
COLUMNS = {"image": "image", "soma_mask": "soma_mask", "train": "train", "umi": "umi", "gene": "gene",
           "time": "time", "media": "media", "sample": "sample"}  # fmt: skip
WARNING = (
    "WARNING: unpickling {path}. A pickle can run any code its author put in it when it is loaded; "
    "convert only a file whose origin you trust (CellPHIE's published release). The converted form is "
    "plain arrays and a CSV, and no build ever reads the pickle."
)

#: (module, name) pairs the restricted unpickler resolves: what pickled numpy arrays, pandas DataFrames
#: (numpy, Arrow-backed and Python string columns) and plain containers reference. Nothing else.
_BUILTIN_TYPES = ("slice", "bytearray", "set", "frozenset", "complex", "list", "dict", "tuple", "range")
_NUMPY_DTYPES = ("Bool", "UInt8", "UInt16", "Int64", "Float32", "Float64", "Object", "Str", "Bytes")
_PANDAS = ("DataFrame", "Series", "Index", "RangeIndex", "StringDtype", "CategoricalDtype", "Categorical")
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(m, n) for m in ("builtins", "__builtin__") for n in (*_BUILTIN_TYPES, "object")]
    + [("_codecs", "encode"), ("copyreg", "_reconstructor"), ("collections", "OrderedDict")]
    + [(f"numpy.{c}core.multiarray", n) for c in ("", "_") for n in ("_reconstruct", "scalar")]
    + [(f"numpy.{c}core.numeric", "_frombuffer") for c in ("", "_")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("numpy.dtypes", f"{n}DType") for n in _NUMPY_DTYPES]
    + [("pandas", n) for n in (*_PANDAS, "CategoricalIndex")]
    + [
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas.arrays", "ArrowStringArray"),
        ("pandas.arrays", "StringArray"),
        ("pandas.core.arrays.string_", "StringArray"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
    ]
    + [("pyarrow.lib", n) for n in ("_restore_array", "py_buffer", "type_for_alias")]
)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`ALLOWED_GLOBALS`; any other global is an ``UnpicklingError`` naming it."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"the pickle references {module}.{name}, which the CellPHIE converter does not load (it "
                "resolves only what pickled numpy arrays and pandas tables need)"
            )
        return super().find_class(module, name)


def _table(obj: Any, where: str) -> pd.DataFrame:
    """The pickle's content as a DataFrame with our column names (a DataFrame, a list of dicts or a dict of
    columns)."""
    if isinstance(obj, pd.DataFrame):
        frame = obj
    elif isinstance(obj, list | tuple) and obj and all(isinstance(r, dict) for r in obj):
        frame = pd.DataFrame(list(obj))
    elif isinstance(obj, dict):
        frame = pd.DataFrame({k: list(v) for k, v in obj.items()})
    else:
        raise ValueError(
            f"{where}: expected a DataFrame, a list of dicts or a dict of columns, got {type(obj).__name__}"
        )
    lower = {str(c).lower(): c for c in frame.columns}
    missing = [c for c in COLUMNS if c not in lower]
    if missing:
        raise ValueError(
            f"{where}: no column(s) {', '.join(missing)}; has {', '.join(map(str, frame.columns))}"
        )
    return pd.DataFrame({ours: frame[lower[theirs]].to_list() for theirs, ours in COLUMNS.items()})


def _image(value: Any, channels: int | None, where: str) -> np.ndarray:
    """One cell's image as (C, H, W); (H, W, C) is transposed when its last axis is the channel count."""
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise ValueError(f"{where}: image is {arr.shape}, not (C, H, W)")
    if channels is not None and arr.shape[0] != channels and arr.shape[2] == channels:
        arr = arr.transpose(2, 0, 1)
    return arr


def _pixels(images: np.ndarray, where: str) -> tuple[np.ndarray, float]:
    """(uint8 | uint16 images, scale applied): float images in [0, 1] become uint16 (x * 65535)."""
    if images.dtype in (np.uint8, np.uint16):
        return images, 1.0
    if images.dtype == bool:
        return images.astype(np.uint8), 1.0
    if images.dtype.kind in "iu" and images.min() >= 0 and images.max() <= 65535:
        return images.astype(np.uint16), 1.0
    if images.dtype.kind == "f" and np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1:
        return np.rint(images * 65535.0).astype(np.uint16), 65535.0
    raise ValueError(
        f"{where}: images are {images.dtype} in [{images.min()}, {images.max()}]: expected 8/16-bit "
        "integers or floats in [0, 1]"
    )


def convert_pickle(location: str | Path, out_dir: str | Path, trust: bool = False) -> dict[str, Any]:
    """Convert CellPHIE's pickle at ``location`` (a path or URL) into ``out_dir``; returns ``cellphie.json``'s
    content. Refuses (``ValueError``) unless ``trust``; the caller shows :data:`WARNING` first."""
    if not trust:
        raise ValueError(
            f"refusing to unpickle {location}: a pickle can run code when it is loaded. If you trust its "
            "origin, convert it once with --trust-pickle (chammi-build cellphie-convert --input PICKLE "
            "--output DIR --trust-pickle); builds read only the converted form"
        )
    from chammi_data.store.storage import open_store

    text = str(location)
    parent, _, name = text.rstrip("/").rpartition("/")
    data = open_store(parent or ".").read_bytes(name)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot convert {location}: {exc}") from None
    table = _table(obj, text)
    first = _image(table["image"].iloc[0], None, f"{text} row 0")
    channels = first.shape[0]
    images = np.stack([_image(v, channels, f"{text} row {i}") for i, v in enumerate(table["image"])])
    images, scale = _pixels(images, text)
    masks = np.stack([np.asarray(m) for m in table["soma_mask"]]).astype(bool)
    if masks.shape != (len(images), *images.shape[2:]):
        raise ValueError(
            f"{text}: soma masks are {masks.shape}, images {images.shape}: expected one (H, W) mask per cell"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / IMAGES, np.ascontiguousarray(images), allow_pickle=False)
    np.save(out / MASKS, masks.astype(np.uint8), allow_pickle=False)
    cells = table.drop(columns=["image", "soma_mask"])
    cells.to_csv(out / CELLS, index=False)
    info = {
        "format": FORMAT,
        "cells": len(images),
        "channels": int(channels),
        "height": int(images.shape[2]),
        "width": int(images.shape[3]),
        "dtype": str(images.dtype),
        "scale": scale,
        "source_pickle": name,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
