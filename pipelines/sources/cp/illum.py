"""Cell Painting illumination correction: a plate's illumination functions, read once per worker, divided
out of each site's planes."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from pipelines.sources.base import UnitSkip
from pipelines.sources.cp.layout import RAW_CHANNELS
from pipelines.steps.rawinput import RawInput


@lru_cache(maxsize=5)
def _illum_function(raw: RawInput, path: str, stamp: str) -> np.ndarray:
    """A plate's illumination function as read-only float64, cached per worker for the plate's 5 channels.

    Every site of a plate divides by the same 5 functions (a real one is 2160 x 2160 float: 37 MB); units are
    sorted by plate, so consecutive sites on a worker hit the cache. ``stamp`` (a local file's mtime and size)
    in the key: a changed file is read again.
    """
    source = raw.open(path)
    fn = np.squeeze(np.load(source, allow_pickle=False)).astype(np.float64)
    fn.setflags(write=False)
    return fn


def _stamp(raw: RawInput, path: str) -> str:
    store, rel = raw.locate(path)
    if not store.is_local:
        return ""
    st = os.stat(store.path(rel))
    return f"{st.st_mtime_ns}-{st.st_size}"


def illuminate(field: list[np.ndarray], illum: dict[str, str], root: RawInput) -> list[np.ndarray]:
    """Divide each channel of a site's planes (RAW_CHANNELS order) by its illumination function ``illum[ch]``
    (a path in the input ``root``; CellProfiler convention), in float64; ``UnitSkip`` naming the file for an
    unreadable, misshapen, non-finite or non-positive function.

        An integer plane is rounded back to integers after the division (to the nearest count, the precision
        the camera gave; values stay non-negative), so that the percentile clip keeps its exact histogram path
        instead of sorting a float copy (much slower): the 8-bit result moves by at most one grey level on
        rare pixels. Float planes stay float.
    """
    if not illum:
        return field
    out = list(field)
    for k, ch in enumerate(RAW_CHANNELS):
        path = illum.get(ch)
        if path is None:
            continue
        rel = root.display(path)
        try:
            fn = _illum_function(root, path, _stamp(root, path))
        except Exception as exc:
            raise UnitSkip(
                f"unreadable illumination function {ch} ({type(exc).__name__}: {exc})", rel
            ) from None
        if fn.shape != field[k].shape:
            raise UnitSkip(f"illumination function {ch} has shape {fn.shape}, field is {field[k].shape}", rel)
        if not np.all(np.isfinite(fn)):
            raise UnitSkip(f"illumination function {ch} holds NaN/inf", rel)
        if np.any(fn <= 0):
            raise UnitSkip(f"illumination function {ch} has values <= 0 (cannot divide)", rel)
        corrected = field[k].astype(np.float64) / fn
        if np.issubdtype(field[k].dtype, np.integer) and corrected.min() >= 0 and corrected.max() < 2**31:
            corrected = np.rint(corrected).astype(np.int32)
        out[k] = corrected
    return out
