"""Where an IDR0017 plate's images and crop boxes are: ``<plate>.zip`` or ``<plate>/``, and the plate's one
safetensors file of boxes (beside the zip, in the folder, or inside the zip).

A box file maps keys (``idr0017-<plate>-converted/<file name>``) to int (N, 4) arrays ``y_min, y_max, x_min,
x_max``; it is read whole at discovery (a few bytes per cell) and checked: a file that does not parse, or an
entry that is not (N, 4) integers, makes the plate's images skips naming the file.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

#: at most this many boxes per image (a guard against a corrupt or hostile box file)
MAX_BOXES = 100_000


def plate_container(store: Any, plate: str) -> str:
    """``zip`` when ``<plate>.zip`` exists, ``folder`` when ``<plate>/`` holds files, else ""."""
    if store.exists(f"{plate}.zip"):
        return "zip"
    return "folder" if store.glob(f"{plate}/*") else ""


def _box_file(store: Any, plate: str, container: str) -> tuple[str, bytes | None, str]:
    """(where, bytes, problem) of the plate's box file."""
    beside = f"{plate}.safetensors"
    if store.exists(beside):
        return store.path(beside), store.read_bytes(beside), ""
    if container == "folder":
        found = [p for p in store.glob(f"{plate}/*.safetensors") or []]
        if len(found) > 1:
            return store.path(plate), None, f"plate {plate}: {len(found)} .safetensors files, expected one"
        if found:
            return store.path(found[0]), store.read_bytes(found[0]), ""
    if container == "zip":
        with store.open(f"{plate}.zip") as fh, zipfile.ZipFile(fh) as zf:
            found = [n for n in zf.namelist() if n.endswith(".safetensors")]
            if len(found) > 1:
                return (
                    store.path(f"{plate}.zip"),
                    None,
                    f"plate {plate}: {len(found)} .safetensors members, expected one",
                )
            if found:
                return f"{store.path(plate + '.zip')}:{found[0]}", zf.read(found[0]), ""
    return (
        store.path(plate),
        None,
        f"plate {plate}: no crop-box file ({beside}, or one .safetensors in the plate)",
    )


def plate_boxes(store: Any, plate: str, container: str) -> tuple[dict[str, np.ndarray], str]:
    """({key: (N, 4) int64 boxes}, problem) of a plate; a problem (a missing or unreadable file) is a text
    naming the file, and then no boxes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        where, data, problem = _box_file(store, plate, container)
    except (OSError, zipfile.BadZipFile) as exc:
        return {}, f"plate {plate}: unreadable ({type(exc).__name__}: {exc})"
    if data is None:
        return {}, problem
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        return {}, f"unreadable crop-box file {where} ({exc})"
    out = {}
    for key, value in tensors.items():
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype.kind not in "iu" or len(arr) > MAX_BOXES:
            return {}, f"crop-box file {where}: {key} is {arr.shape} {arr.dtype}, not (N, 4) integers"
        out[key] = arr.astype(np.int64)
    return out, ""
