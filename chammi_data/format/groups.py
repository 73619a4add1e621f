"""How a release stores a source whose images vary in channels and size (CHAMMI-75): image groups.

A CHAMMI source has one channel set and one tile size, so its tar shards and its zarr array are uniform. A
variable source (``vocab.VARIABLE_SOURCES``) is stored as **groups**: a group is a run of consecutive rows of
the source (in release order) that share ``(dataset, channels, height, width, dtype)`` - for CHAMMI-75 the
study and the image shape. A build orders such a source by group key, then cell id, so each key is one group.

- **tar**: a shard never crosses a group. Each group's rows are cut into shards of ``cells_per_shard``
  (its last shard may be shorter); shard indices continue across groups, so every tar shard is uniform in
  shape and channels, as a CHAMMI shard is.
- **zarr**: ``zarr/<source>.zarr`` is a ``bioformats2raw.layout`` collection (OME-Zarr 0.5): group ``g`` is
  the OME-Zarr image ``zarr/<source>.zarr/<g>`` with its own ``images`` array (N_g, C_g, H_g, W_g), one
  image per chunk, zarr shard ``j`` of group ``g`` = tar shard ``first_shard_g + j``. The collection's
  attributes list the groups (:meth:`GroupPlan.attrs`: a few per study and shape, never one entry per image).
- **manifest**: ``zarr_row`` stays the row within the source (0..N-1, feature order); the image is row
  ``zarr_row - first_row_g`` of its group. No per-image list is kept in any zarr attribute: the manifest is
  the index of every store.

A CHAMMI source is the special case of a single group whose shards are the source's shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from chammi_data.format.release_format import parse_channels
from chammi_data.format.vocab import is_variable

GroupKey = tuple[str, tuple[str, ...], int, int, str]


def group_key(rec: Mapping[str, Any]) -> GroupKey:
    """(dataset, channels, height, width, dtype) of a shard record / spill record (``shape``, ``channels``
    list, ``groups``) or a manifest row (``channels`` text, ``height``, ``width``, ``dataset``)."""
    if "shape" in rec:
        _c, h, w = (int(x) for x in rec["shape"])
        dataset = str((rec.get("groups") or {}).get("dataset", ""))
        channels = tuple(rec["channels"])
    else:
        h, w, dataset = int(rec["height"]), int(rec["width"]), str(rec.get("dataset", ""))
        channels = tuple(str(rec["channels"]).split(","))
    return dataset, channels, h, w, str(rec["dtype"])


@dataclass(frozen=True)
class GroupPlan:
    """One group of a source: its rows ``[first_row, first_row + rows)``, its first tar shard and its key."""

    index: int
    first_row: int
    rows: int
    first_shard: int
    key: GroupKey

    def shards(self, per: int) -> list[tuple[int, int, int, int]]:
        """``(shard_index, first_row, end_row, shard_in_group)`` of each of the group's shards."""
        end = self.first_row + self.rows
        return [
            (self.first_shard + j, start, min(start + per, end), j)
            for j, start in enumerate(range(self.first_row, end, per))
        ]

    @property
    def path(self) -> str:
        """The group's image inside ``zarr/<source>.zarr`` (bioformats2raw series name)."""
        return str(self.index)

    def attrs(self) -> dict[str, Any]:
        """The group's entry in the zarr collection's attributes."""
        dataset, channels, h, w, dtype = self.key
        return {
            "path": self.path,
            "first_row": self.first_row,
            "rows": self.rows,
            "first_shard": self.first_shard,
            "dataset": dataset,
            "channels": list(channels),
            "height": h,
            "width": w,
            "dtype": dtype,
        }


def plan_groups(keys: Sequence[GroupKey], per: int, variable: bool = True) -> list[GroupPlan]:
    """The groups of a source's rows with these keys, in row order; a fixed source (``variable=False``) is
    one group whatever its keys."""
    if per < 1:
        raise ValueError(f"cells_per_shard must be >= 1, got {per}")
    if not keys:
        return []
    if not variable:
        return [GroupPlan(0, 0, len(keys), 0, keys[0])]
    out: list[GroupPlan] = []
    start, shard = 0, 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            out.append(GroupPlan(len(out), start, i - start, shard, keys[start]))
            shard += -(-(i - start) // per)
            start = i
    return out


def source_groups(source: str, rows: Sequence[Mapping[str, Any]], per: int) -> list[GroupPlan]:
    """:func:`plan_groups` for ``rows`` (records or manifest rows of ``source``, in release order); the key
    of a CHAMMI source's single group is None (its shape comes from ``vocab.SOURCES``)."""
    variable = is_variable(source)
    keys = [group_key(r) for r in rows] if variable else [None] * len(rows)
    return plan_groups(keys, per, variable)  # type: ignore[arg-type]


#: The manifest columns that make a row's group key.
KEY_COLUMNS = ("dataset", "channels", "height", "width", "dtype")


def frame_groups(part: pd.DataFrame, per: int) -> list[GroupPlan]:
    """The groups of one variable source's manifest rows (in zarr-row order), computed column-wise (a
    2.8 M-row source in a second)."""
    if part.empty:
        return []
    keys = part[list(KEY_COLUMNS)]
    change = (keys != keys.shift()).any(axis=1).to_numpy().copy()
    change[0] = True
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], len(part)]
    out, shard = [], 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        out.append(GroupPlan(len(out), start, end - start, shard, group_key(part.iloc[start])))
        shard += -(-(end - start) // per)
    return out


def group_of_row(groups: Sequence[Mapping[str, Any]], row: int) -> tuple[int, int]:
    """(group position, row within the group) of source row ``row``, from the collection's ``groups``
    attributes."""
    lo, hi = 0, len(groups) - 1
    while lo < hi:  # the last group whose first_row <= row
        mid = (lo + hi + 1) // 2
        if int(groups[mid]["first_row"]) <= row:
            lo = mid
        else:
            hi = mid - 1
    g = groups[lo] if groups else None
    if g is None or not 0 <= row - int(g["first_row"]) < int(g["rows"]):
        raise IndexError(f"row {row} is in no image group")
    return lo, row - int(g["first_row"])


def variable_source_info(
    part: pd.DataFrame, groups: Sequence[GroupPlan], n_shards: int, per: int
) -> dict[str, Any]:
    """A variable source's entry in ``release.json["sources"]``: its channel names, groups, dtypes, shards."""
    return {
        "variable": True,
        "channels": sorted({c for text in part["channels"].unique() for c in parse_channels(text)}),
        "groups": len(groups),
        "dtype": sorted(part["dtype"].unique().tolist()),
        "n_shards": n_shards,
        "cells_per_shard": per,
    }
