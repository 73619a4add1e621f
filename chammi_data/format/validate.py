"""``chammi validate``: check that release.json, the manifest, the tar shards and the zarr stores agree.

Every shard is re-hashed and fully parsed (see :mod:`chammi_data.format.shards`); every image is decoded from
the tar and read from zarr and its sha256 compared with the manifest. All problems are collected (one
line each, naming the file / key / row) instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import chammi_data.format.zarr_store as zarr_store
from chammi_data.format.codec import CODECS, DEFAULT_CODEC, CorruptSampleError, codec_matches, decode_image
from chammi_data.format.groups import frame_groups
from chammi_data.format.manifest import (
    MANIFEST_CSV,
    MANIFEST_PARQUET,
    RELEASE_JSON,
    read_manifest,
    read_release_json,
)
from chammi_data.format.release_format import (
    CHAMMI_SPLITS,
    IMAGE_DTYPES,
    SPLITS,
    parse_channels,
    record_mismatches,
    release_counts,
)
from chammi_data.format.schema import image_checksum
from chammi_data.format.shards import decode_member, iter_members
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, SOURCES, TASK_COLUMNS, VARIABLE_SOURCES
from chammi_data.format.zarr_store import open_zarr_group
from chammi_data.progress import progress as progress_bar
from chammi_data.store.storage import ReleaseStore, open_store

#: How many problems of one kind to list before summarising the rest (a wholly broken release would
#: otherwise print a line per cell).
MAX_PER_CHECK = 50


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_release`: ``problems`` (empty = valid) and what was checked."""

    root: Path | str
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"release {self.root}: " + ", ".join(f"{v} {k}" for k, v in self.checked.items())
        notes = "".join(f"\n  note: {n}" for n in self.notes)
        if self.ok:
            return head + " - OK" + notes
        return (
            head
            + f" - {len(self.problems)} problem(s):"
            + notes
            + "".join(f"\n  - {p}" for p in self.problems)
        )


def _rows_check(m: pd.DataFrame) -> Iterator[str]:
    """Schema checks on manifest rows that need no other file."""
    for i, r in enumerate(m.itertuples(index=False)):
        where = f"manifest row {i} ({r.cell_id})"
        if r.source in VARIABLE_SOURCES:
            yield from _variable_row_check(r, where)
            continue
        if r.source not in SOURCES:
            yield f"{where}: unknown source {r.source!r}"
            continue
        if r.train_test_split and r.train_test_split not in CHAMMI_SPLITS:
            yield f"{where}: train_test_split {r.train_test_split!r} not one of {CHAMMI_SPLITS}"
        try:
            names = parse_channels(r.channels)
        except (KeyError, ValueError) as exc:
            yield f"{where}: bad channels {r.channels!r}: {exc}"
            continue
        if set(names) != set(SOURCES[r.source].channels):
            yield f"{where}: channels {names} are not the channels of {r.source} {SOURCES[r.source].channels}"
        if r.dtype not in IMAGE_DTYPES:
            yield f"{where}: dtype {r.dtype!r} is not uint8/uint16"
        for t in TASK_COLUMNS:
            if getattr(r, t) and t not in SOURCES[r.source].tasks:
                yield f"{where}: {t} is true but {r.source} has no such task"
    dup = m["cell_id"][m["cell_id"].duplicated()]
    for cid in sorted(set(dup)):
        yield f"manifest: cell_id {cid} appears more than once"
    for src, part in m.groupby("source", sort=False):
        if part["zarr_row"].tolist() != list(range(len(part))):
            yield f"manifest: zarr rows of {src} are not 0..{len(part) - 1} in manifest order"
    runs = m["source"][m["source"] != m["source"].shift()].tolist()  # one entry per block of equal sources
    if runs != [s for s in RELEASE_SOURCE_KEYS if s in runs]:
        yield f"manifest: rows are not grouped by source in {RELEASE_SOURCE_KEYS} order"


def _variable_row_check(r: Any, where: str) -> Iterator[str]:
    """A row of a variable source: its split, channels from the source's list, dtype, no task."""
    info = VARIABLE_SOURCES[r.source]
    if r.train_test_split and r.train_test_split not in SPLITS:
        yield f"{where}: train_test_split {r.train_test_split!r} not one of {SPLITS}"
    try:
        odd = [c for c in parse_channels(r.channels) if c not in info.channels]
    except (KeyError, ValueError) as exc:
        yield f"{where}: bad channels {r.channels!r}: {exc}"
        return
    if odd:
        yield f"{where}: channels {odd} are not {info.name} channel types"
    if r.dtype not in IMAGE_DTYPES:
        yield f"{where}: dtype {r.dtype!r} is not uint8/uint16"
    if any(getattr(r, t) for t in TASK_COLUMNS):
        yield f"{where}: {r.source} has no tasks, but a task column is true"


def _check_shard(shard: str, data: bytes, rows: pd.DataFrame, codec: str = DEFAULT_CODEC) -> Iterator[str]:
    """Parse one shard fully and compare every sample with its manifest rows; image members must be frames
    of the release's member ``codec``."""
    expected = rows.to_dict("records")
    got: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    by_key = {r["key"]: r for r in expected}
    try:
        with io.BytesIO(data) as fh:
            for member, blob in iter_members(fh, shard):
                assert blob is not None
                key = member.key
                if key not in by_key:
                    yield f"{shard}: key {key!r} ({member.name}) is not in the manifest for this shard"
                    continue
                row = by_key[key]
                if member.ext == "json":
                    try:
                        records[key] = json.loads(blob)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        yield f"{shard}: key {key!r}: corrupted json record ({exc})"
                    continue
                got.append(key)
                if (member.offset, member.size) != (row["offset"], row["nbytes"]):
                    yield (
                        f"{shard}: key {key!r}: image at offset {member.offset} size {member.size}, "
                        "manifest says "
                        f"{row['offset']} / {row['nbytes']}"
                    )
                if key not in records:
                    yield f"{shard}: key {key!r}: no valid json record before its image"
                else:
                    bad = record_mismatches(records[key], row)
                    if bad:
                        yield (
                            f"{shard}: key {key!r}: json record disagrees with the manifest on "
                            f"{', '.join(bad)}"
                        )
                if not codec_matches(blob, codec):
                    yield f"{shard}: key {key!r}: image member is not a {codec} member ({RELEASE_JSON} codec)"
                try:
                    if row["source"] in VARIABLE_SOURCES:  # the guidance after the pixels must parse too
                        img = decode_member(blob, where=f"{shard}: key {key!r}", expected=row)[0].copy()
                    else:
                        img = decode_image(blob, where=f"{shard}: key {key!r}")
                except CorruptSampleError as exc:
                    yield str(exc)
                    continue
                if image_checksum(img) != row["sha256"]:
                    yield (
                        f"{shard}: key {key!r}: image sha256 differs from the manifest "
                        f"(shape {img.shape}, {img.dtype})"
                    )
    except (CorruptSampleError, OSError) as exc:
        yield f"{exc} (shard unreadable from here on)"
    missing = [r["key"] for r in expected if r["key"] not in set(got)]
    for key in missing[:MAX_PER_CHECK]:
        yield f"{shard}: key {key!r} in the manifest has no image member in the shard"
    if [k for k in got if k in by_key] != [r["key"] for r in expected if r["key"] in set(got)]:
        yield f"{shard}: samples are not in manifest order"


def _check_zarr(store: ReleaseStore, src: str, part: pd.DataFrame) -> Iterator[str]:
    """A source's zarr store against its manifest rows: one image, or a variable source's group images."""
    try:
        group = open_zarr_group(store, src)
        attrs = dict(group.attrs)
        if src not in VARIABLE_SOURCES:
            arr = group[zarr_store.ARRAY_NAME]
    except Exception as exc:
        yield f"zarr/{src}.zarr: cannot open ({type(exc).__name__}: {exc})"
        return
    if src not in VARIABLE_SOURCES:
        yield from _check_images(arr, attrs, part, f"zarr/{src}.zarr", 0)
        return
    listed = attrs.get("groups") or []
    try:
        per = zarr_store.cells_per_shard(group[f"{listed[0]['path']}/{zarr_store.ARRAY_NAME}"])
        expected = [g.attrs() for g in frame_groups(part, per)]
    except Exception as exc:
        yield f"zarr/{src}.zarr: cannot read its image groups ({type(exc).__name__}: {exc})"
        return
    if listed != expected:
        yield f"zarr/{src}.zarr: {len(listed)} groups in its attributes, not the manifest's {len(expected)}"
        return
    for g in expected:
        where = f"zarr/{src}.zarr/{g['path']}"
        try:
            node = group[g["path"]]
            arr, node_attrs = node[zarr_store.ARRAY_NAME], dict(node.attrs)
        except Exception as exc:
            yield f"{where}: cannot open ({type(exc).__name__}: {exc})"
            continue
        rows = part.iloc[g["first_row"] : g["first_row"] + g["rows"]]
        yield from _check_images(arr, node_attrs, rows, where, g["first_shard"])


def _check_images(
    arr: Any, attrs: dict[str, Any], part: pd.DataFrame, where: str, first_shard: int
) -> Iterator[str]:
    """One ``images`` array against its manifest rows: shape, dtype, channels, shard alignment, pixels."""
    first = part.iloc[0]
    channels = list(parse_channels(first["channels"]))
    shape = (len(part), len(channels), int(first["height"]), int(first["width"]))
    if tuple(arr.shape) != shape or str(arr.dtype) != first["dtype"]:
        yield f"{where}: images {tuple(arr.shape)} {arr.dtype}, manifest implies {shape} {first['dtype']}"
        return
    if attrs.get("channels") != channels:
        yield f"{where}: attribute channels {attrs.get('channels')} != manifest {first['channels']}"
    per = zarr_store.cells_per_shard(arr)
    # Tar shard first_shard + k must hold exactly the cells of zarr shard k (rows [k * per, (k + 1) * per)).
    tar_index = part["shard"].str.extract(r"-(\d+)\.tar$")[0].astype(float).to_numpy()
    local = np.arange(len(part))
    off = np.flatnonzero(tar_index != first_shard + local // per)
    if len(off):
        r = part.iloc[int(off[0])]
        yield (
            f"{where}: {len(off)} cell(s) are not in the zarr shard matching their tar shard "
            f"(first: {r['cell_id']} in {r['shard']} at zarr row {r['zarr_row']}, {per} cells per zarr shard)"
        )
    sums = part["sha256"].tolist()
    crcs = part["crc32c"].tolist()
    ids = part["cell_id"].tolist()
    rows = part["zarr_row"].tolist()
    if arr.metadata.fill_value != 0:
        yield f"{where}: fill_value {arr.metadata.fill_value} is not 0 (zarr.json edited)"
    bad = 0
    for start in range(0, len(part), per):
        try:
            block = np.asarray(arr[start : start + per])
        except Exception as exc:
            yield f"{where}: rows {start}..{start + per - 1} unreadable ({type(exc).__name__}: {exc})"
            continue
        for j, img in enumerate(block):
            what = []
            if image_checksum(img) != sums[start + j]:
                what.append("sha256")
            if crcs[start + j] >= 0 and zarr_store.pixel_crc32c(img) != crcs[start + j]:
                what.append("crc32c")
            if what:
                bad += 1
                if bad <= MAX_PER_CHECK:
                    yield (
                        f"{where}: row {rows[start + j]} ({ids[start + j]}): "
                        f"image {' and '.join(what)} {'differs' if len(what) == 1 else 'differ'} from the "
                        "manifest"
                    )


def validate_release(
    root: Any, progress: bool = True, storage_options: Mapping[str, Any] | None = None
) -> ValidationReport:
    """Check a release end to end (at any location); never raises for a bad release, returns every problem
    found."""
    store = open_store(root, storage_options)
    rep = ValidationReport(store.location)
    try:
        rel = read_release_json(store)
        m = read_manifest(store, verify=False)  # its digest is one of the checks below
    except (FileNotFoundError, ValueError) as exc:
        rep.problems.append(str(exc))
        return rep
    rep.checked["cells"] = len(m)
    rep.problems += list(_rows_check(m))[: MAX_PER_CHECK * 4]
    for name, field_ in ((MANIFEST_PARQUET, "manifest_sha256"), (MANIFEST_CSV, "manifest_csv_sha256")):
        if not store.exists(name):
            rep.problems.append(f"{name}: missing (release.json records {field_})")
        elif field_ in rel and hashlib.sha256(store.read_bytes(name)).hexdigest() != rel[field_]:
            rep.problems.append(f"{name}: sha256 differs from {RELEASE_JSON} ({field_})")
    if release_counts(m) != rel.get("counts"):
        rep.problems.append(f"{RELEASE_JSON}: counts do not match the manifest")
    listed: dict[str, str] = rel.get("shards", {})
    stored = store.glob("shards/*/*.tar")
    used = set(m["shard"])
    rep.problems += [
        f"{s}: shard referenced by the manifest is not listed in {RELEASE_JSON}"
        for s in sorted(used - set(listed))
    ]
    if stored is None:
        rep.notes.append(
            f"{store.protocol}:// cannot list files: shard files not named in {RELEASE_JSON} were not "
            "looked for"
        )
    else:
        rep.problems += [
            f"{s}: shard file in the release is not listed in {RELEASE_JSON}"
            for s in sorted(set(stored) - set(listed))
        ]
    rep.problems += [
        f"{s}: listed in {RELEASE_JSON} but no cell of the manifest is in it"
        for s in sorted(set(listed) - used)
    ]
    codec = str(rel.get("codec", DEFAULT_CODEC))
    if codec not in CODECS:
        rep.problems.append(f"{RELEASE_JSON}: unknown member codec {codec!r}; valid: {', '.join(CODECS)}")
    shards = sorted(set(listed) | used)
    rep.checked["shards"] = len(shards)
    for shard in progress_bar(shards, desc="validate shards", disable=not progress, unit="shard"):
        try:
            data = store.read_shard(shard)
        except FileNotFoundError:
            rep.problems.append(f"{shard}: shard file missing")
            continue
        except OSError as exc:
            rep.problems.append(f"{shard}: unreadable ({exc})")
            continue
        if shard in listed and hashlib.sha256(data).hexdigest() != listed[shard]:
            rep.problems.append(f"{shard}: sha256 differs from {RELEASE_JSON} (file changed or corrupted)")
        rep.problems += list(_check_shard(shard, data, m[m["shard"] == shard], codec))
    for src, part in progress_bar(
        list(m.groupby("source", sort=False)), desc="validate zarr", disable=not progress, unit="source"
    ):
        rep.problems += list(_check_zarr(store, str(src), part.reset_index(drop=True)))
    rep.checked["zarr stores"] = m["source"].nunique()
    return rep
