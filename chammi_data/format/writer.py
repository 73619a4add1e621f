"""Write a release: WebDataset tar shards + Zarr v3 images + manifest + ``release.json``.

There is one write path, used by ``chammi-build`` (spread over dask workers) and by :class:`ReleaseWriter`
(serial, for scripts and tests):

1. :func:`encode_cell` once per cell, on the process that made it: the shard record, the compressed tar
   member, the pixel sha256 and the zarr chunk (:class:`EncodedCell`), so writing is only concatenation;
2. :func:`create_zarr_array` once per source (the final cell count, or grown shard by shard);
3. per shard k of :func:`shard_plan`, in any process: :func:`write_tar_shard` (tar shard k) and
   :func:`write_zarr_shard` (exactly zarr shard k: rows ``[k * cells_per_shard, ...)``), one writer per file;
4. :func:`finalize_release` once, with every shard record: manifest.parquet/.csv and release.json.

A variable source (CHAMMI-75) is written group by group (:mod:`chammi_data.format.groups`): a zarr collection
(:func:`create_collection`), one array per group, shards that never cross a group (``group=(g, j)``).

Identical cells give byte-identical tar shards, manifests and release.json (no timestamps, fixed tar
headers, deterministic parquet).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import uuid
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import chammi_data.format.zarr_store as zarr_store
from chammi_data.format.codec import CODECS, DEFAULT_CODEC, JSON_SUFFIX, encode_image, member_suffix
from chammi_data.format.groups import group_key, variable_source_info
from chammi_data.format.manifest import write_manifest
from chammi_data.format.release_format import canonical_json, manifest_row, parse_channels, release_counts
from chammi_data.format.schema import SCHEMA_VERSION, Cell
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, is_variable
from chammi_data.progress import progress as progress_bar
from chammi_data.store.paths import file_sha256

#: Default number of cells per tar shard (= per zarr shard). 64 HPA cells are ~64 MiB in memory per writer.
CELLS_PER_SHARD = 64
_TAR_BLOCK = 512


@dataclass
class ShardRecord:
    """What one :func:`write_tar_shard` call produced: the tar path (relative to the root), its sha256 and
    the manifest rows (dicts keyed by ``release_format.MANIFEST_COLUMNS``) of its cells, in shard order."""

    path: str
    sha256: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    shard_index: int = 0
    nbytes: int = 0


@dataclass
class ZarrShardRecord:
    """What one :func:`write_zarr_shard` call produced: the zarr shard (by source and index), its first row
    and the :func:`zarr_store.pixel_crc32c` of each of its rows, which :func:`finalize_release` puts into the
    manifest's ``crc32c`` column (the binding that zarr reads check)."""

    source: str
    shard_index: int
    zarr_start: int
    crc32c: list[int] = field(default_factory=list)

    @property
    def path(self) -> str:
        """A name that sorts beside the tar shards' (not a file path)."""
        return f"zarr/{self.source}.zarr#{self.shard_index:06d}"


def shard_relpath(source: str, shard_index: int) -> str:
    """``shards/<source>/<source>-%06d.tar`` (posix, relative to the release root)."""
    return f"shards/{source}/{source}-{shard_index:06d}.tar"


def shard_plan(n_cells: int, cells_per_shard: int) -> list[tuple[int, int, int]]:
    """``(shard_index, first_row, end_row)`` of each shard of a source with ``n_cells`` cells in release
    order."""
    if cells_per_shard < 1:
        raise ValueError(f"cells_per_shard must be >= 1, got {cells_per_shard}")
    return [
        (k // cells_per_shard, k, min(k + cells_per_shard, n_cells))
        for k in range(0, n_cells, cells_per_shard)
    ]


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed header fields: the only things that vary between samples are the name and the size.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


#: Once per source: create ``zarr/<source>.zarr`` (N, C, H, W) (``root, source, n_cells, channels, hw, dtype,
#: cells_per_shard``). The zarr module owns the layout.
create_zarr_array = zarr_store.create_images
#: Once per variable source, before its groups' arrays: the collection ``zarr/<source>.zarr``.
create_collection = zarr_store.create_collection


@dataclass(frozen=True)
class EncodedCell:
    """A cell ready to be written: its shard record (``Cell.record()``: ids, label, split, tasks, groups,
    shape, dtype, pixel sha256, meta), its compressed tar image member and its zarr chunk
    (``zarr_store.encode_chunk``). Shard writers only concatenate these bytes."""

    record: dict[str, Any]
    member: bytes
    chunk: bytes

    @property
    def cell_id(self) -> str:
        return self.record["cell_id"]


def encode_cell(cell: Cell, codec: str = DEFAULT_CODEC) -> EncodedCell:
    """Hash one cell and compress it for both formats (``codec.encode_image`` with the member ``codec``:
    zstd, lz4 or none, and a CHAMMI-75 image's guidance after its pixels; ``zarr_store.encode_chunk``)."""
    member = encode_image(cell.image, codec=codec, guidance=cell.guidance)
    return EncodedCell(cell.record(), member, zarr_store.encode_chunk(cell.image))


def write_shard(
    root: str | Path,
    source: str,
    shard_index: int,
    cells: Sequence[Cell | EncodedCell],
    zarr_start: int,
    group: tuple[int, int] | None = None,
) -> ShardRecord:
    """Write tar shard ``shard_index`` of ``source`` and zarr rows ``[zarr_start, zarr_start + len(cells))``:
    :func:`write_tar_shard` then :func:`write_zarr_shard`, encoding plain :class:`Cell` objects first."""
    encoded = [c if isinstance(c, EncodedCell) else encode_cell(c) for c in cells]
    record = write_tar_shard(root, source, shard_index, encoded, zarr_start)
    zarr_record = write_zarr_shard(root, source, shard_index, zarr_start, [e.chunk for e in encoded], group)
    for row, crc in zip(record.rows, zarr_record.crc32c, strict=True):
        row["crc32c"] = crc
    return record


def _check_shard(
    root: Path, source: str, shard_index: int, n: int, zarr_start: int, group: tuple[int, int] | None = None
) -> str:
    rel = shard_relpath(source, shard_index)
    if n == 0:
        raise ValueError(f"write_shard({source}, {shard_index}): no cells")
    if is_variable(source):  # its groups' shard plan is checked against the manifest when finalising
        if group is None:
            raise ValueError(f"{rel}: {source} stores image groups; say which with group=(g, j)")
        return rel
    per = zarr_store.cells_per_shard(zarr_store.open_images(root, source))
    if zarr_start != shard_index * per:
        raise ValueError(
            f"{rel}: zarr_start {zarr_start} != shard_index * cells_per_shard ({shard_index} * {per})"
        )
    return rel


def write_zarr_shard(
    root: str | Path,
    source: str,
    shard_index: int,
    zarr_start: int,
    chunks: Sequence[bytes],
    group: tuple[int, int] | None = None,
) -> ZarrShardRecord:
    """Write zarr shard ``shard_index`` of ``source`` (rows from ``zarr_start``, which must be the shard's
    first row: one writer per zarr shard) from its cells' pre-encoded chunks (``EncodedCell.chunk``); for a
    variable source, zarr shard ``j`` of group ``g`` (``group=(g, j)``). Pass the returned record to
    :func:`finalize_release` with the tar shards' records."""
    _check_shard(Path(root), source, shard_index, len(chunks), zarr_start, group)
    if group is None:
        crcs = zarr_store.write_encoded_shard(root, source, shard_index, chunks)
    else:
        crcs = zarr_store.write_encoded_shard(root, source, group[1], chunks, group=group[0])
    return ZarrShardRecord(source, shard_index, zarr_start, crcs)


def write_tar_shard(
    root: str | Path, source: str, shard_index: int, cells: Sequence[EncodedCell], zarr_start: int
) -> ShardRecord:
    """Write tar shard ``shard_index`` of ``source`` (manifest rows ``zarr_start...``); see the module
    docstring.

    Members per cell: ``<key>.json`` (the record as canonical JSON) then ``<key>.npy.zst`` (the encoded
    image). Written to a temp file and moved into place atomically, hashed on the way.
    """
    root = Path(root)
    rel = _check_shard(
        root, source, shard_index, len(cells), zarr_start, (0, 0) if is_variable(source) else None
    )
    first = cells[0].record
    for cell in cells:
        rec = cell.record
        where = f"{rel}: cell {rec['cell_id']!r}"
        if rec["source"] != source:
            raise ValueError(f"{where} has source {rec['source']!r}, expected {source!r}")
        if (list(rec["shape"]), rec["dtype"], list(rec["channels"])) != (
            list(first["shape"]),
            first["dtype"],
            list(first["channels"]),
        ):
            raise ValueError(
                f"{where}: image {tuple(rec['shape'])} {rec['dtype']} {list(rec['channels'])} differs from "
                "the shard's "
                f"first cell {tuple(first['shape'])} {first['dtype']} {list(first['channels'])}; a shard "
                "holds one tile size and channel set"
            )
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    rows: list[dict[str, Any]] = []
    try:
        # The bytes tarfile would write (ustar headers, data padded to 512, two zero blocks, the archive
        # padded to tarfile's 10240-byte records), written directly and hashed on the way.
        digest_h = hashlib.sha256()
        pos = 0
        with open(tmp, "wb") as fh:

            def put(data: bytes) -> None:
                nonlocal pos
                fh.write(data)
                digest_h.update(data)
                pos += len(data)

            for i, cell in enumerate(cells):
                key = cell.record["cell_id"]
                record = canonical_json(cell.record).encode("utf-8")
                image_name = key + member_suffix(cell.member)  # .npy.zst, or .npy.lz4 for an LZ4 frame
                for name, data in ((key + JSON_SUFFIX, record), (image_name, cell.member)):
                    put(
                        _tar_info(name, len(data)).tobuf(
                            tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"
                        )
                    )
                    offset = pos  # a ustar header is one 512-byte block: the data starts right after it
                    put(data)
                    if len(data) % _TAR_BLOCK:
                        put(bytes(_TAR_BLOCK - len(data) % _TAR_BLOCK))
                rows.append(manifest_row(cell.record, rel, offset, len(cell.member), zarr_start + i))
            put(bytes(2 * _TAR_BLOCK))  # end-of-archive marker
            if pos % tarfile.RECORDSIZE:
                put(bytes(tarfile.RECORDSIZE - pos % tarfile.RECORDSIZE))
        digest = digest_h.hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ShardRecord(
        path=rel, sha256=digest, rows=rows, source=source, shard_index=shard_index, nbytes=size
    )


def _zarr_cells_per_shard(root: Path, source: str, fallback: int) -> int:
    try:
        return zarr_store.cells_per_shard(zarr_store.open_images(root, source))
    except FileNotFoundError:
        return fallback


def _check_rows(df: pd.DataFrame) -> None:
    unknown = sorted(set(df["source"]) - set(RELEASE_SOURCE_KEYS))
    if unknown:
        raise ValueError(f"manifest rows with unknown source(s) {unknown}; valid: {RELEASE_SOURCE_KEYS}")
    dup = df["cell_id"][df["cell_id"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate cell_id(s) in the release: {sorted(set(dup))[:10]}")
    for src, part in df.groupby("source", sort=False):
        rows = part["zarr_row"].to_numpy()
        if not np.array_equal(rows, np.arange(len(part))):
            raise ValueError(
                f"source {src}: zarr rows are not 0..{len(part) - 1} in manifest order (missing shard?)"
            )


def _zarr_crcs(root: Path, df: pd.DataFrame, records: Sequence[ZarrShardRecord]) -> np.ndarray:
    """The ``crc32c`` column: from the zarr writers' records, else as the rows have it, else read back from
    the zarr store (a caller that did not pass the zarr records; -1 where a source has no zarr store)."""
    known = {(r.source, r.zarr_start + i): c for r in records for i, c in enumerate(r.crc32c)}
    have = df["crc32c"] if "crc32c" in df.columns else pd.Series(-1, index=df.index)
    out = np.array(
        [known.get((s, int(z)), int(h)) for s, z, h in zip(df["source"], df["zarr_row"], have, strict=True)],
        dtype=np.int64,
    )
    for src in sorted(set(df["source"][out < 0])):
        if not zarr_store.zarr_path(root, str(src)).exists() or is_variable(str(src)):
            continue  # a variable source's writers always give their records
        arr = zarr_store.open_images(root, str(src))
        per = zarr_store.cells_per_shard(arr)
        for i in np.flatnonzero((out < 0) & (df["source"] == src).to_numpy()):
            z = int(df["zarr_row"].iat[i])
            block_start = z - z % per
            if known.get((str(src), z)) is None:
                block = np.asarray(arr[block_start : block_start + per])
                known.update(
                    {(str(src), block_start + j): zarr_store.pixel_crc32c(img) for j, img in enumerate(block)}
                )
            out[i] = known[(str(src), z)]
    return out


def finalize_release(
    root: str | Path,
    rows: pd.DataFrame | Sequence[dict[str, Any]] | None,
    shard_records: Sequence[ShardRecord | ZarrShardRecord],
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write manifest.parquet, manifest.csv and release.json; record a variable source's image groups in its
    zarr collection (checked against where its rows' shards are).

    ``shard_records``: the tar shards' :class:`ShardRecord` and the zarr shards' :class:`ZarrShardRecord`
    (their pixel crc32c go into the manifest; without them the zarr stores are read back for it).
    ``rows`` are the manifest rows of every cell (None: taken from ``shard_records``); they are ordered by
    source (``RELEASE_SOURCE_KEYS``) then zarr row, which is the pipeline's order. ``config`` is the build
    configuration (its sha256 of canonical JSON goes to release.json); ``extra`` is stored verbatim under
    ``"extra"``. Returns the release.json path.
    """
    from chammi_data import __version__

    root = Path(root)
    zarr_records = [r for r in shard_records if isinstance(r, ZarrShardRecord)]
    shard_records = [r for r in shard_records if not isinstance(r, ZarrShardRecord)]
    if rows is None:
        rows = [r for rec in shard_records for r in rec.rows]
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError(f"finalize_release({root}): no manifest rows")
    order = {s: i for i, s in enumerate(RELEASE_SOURCE_KEYS)}
    df["_o"] = df["source"].map(order).fillna(len(order))
    df = df.sort_values(["_o", "zarr_row"], kind="stable").drop(columns="_o").reset_index(drop=True)
    _check_rows(df)
    df["crc32c"] = _zarr_crcs(root, df, zarr_records)
    listed = {rec.path for rec in shard_records}
    missing = sorted(set(df["shard"]) - listed)
    if missing:
        raise ValueError(f"manifest rows point at shard(s) without a shard record: {missing[:5]}")
    groups = {
        str(src): zarr_store.record_groups(root, str(src), part)
        for src, part in df.groupby("source", sort=False)
        if is_variable(str(src))
    }
    parquet, csv = write_manifest(root, df)
    config = config or {}
    sources_info = {}
    for src, part in df.groupby("source", sort=False):
        first = part.iloc[0]
        recs = sorted(
            (r for r in shard_records if r.source == src or r.path.startswith(f"shards/{src}/")),
            key=lambda r: r.path,
        )
        if str(src) in groups:
            per = zarr_store.group_cells_per_shard(root, str(src))
            sources_info[str(src)] = variable_source_info(part, groups[str(src)], len(recs), per)
            continue
        sources_info[str(src)] = {
            "channels": list(parse_channels(first["channels"])),
            "height": int(first["height"]),
            "width": int(first["width"]),
            "dtype": str(first["dtype"]),
            "n_shards": len(recs),
            "cells_per_shard": _zarr_cells_per_shard(root, str(src), int(part["shard"].value_counts().max())),
        }
    release = {
        "schema_version": SCHEMA_VERSION,
        "package": "chammi",
        "package_version": __version__,
        "counts": release_counts(df),
        "sources": sources_info,
        "shards": {rec.path: rec.sha256 for rec in sorted(shard_records, key=lambda r: r.path)},
        "config_hash": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "config": config,
        "manifest_sha256": file_sha256(parquet),
        "manifest_csv_sha256": file_sha256(csv),
        "extra": extra or {},
    }
    codec = config.get("codec", DEFAULT_CODEC)
    if codec != DEFAULT_CODEC:  # recorded only when not zstd: a default release is byte-identical to before
        release["codec"] = codec
    out = root / "release.json"
    tmp = out.with_name(f".release.json.{uuid.uuid4().hex}.tmp")
    tmp.write_text(canonical_json(release) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


class ReleaseWriter:
    """The serial face of the write path: ``add_source`` per source (cells in release order), then ``close``.
    ``codec``: the image members' codec (``codec.CODECS``; recorded in the config and release.json unless
    it is the default zstd).

    Each shard-sized batch of cells goes through the same :func:`encode_cell`, :func:`write_tar_shard` and
    :func:`write_zarr_shard` as a ``chammi-build`` shard, so the bytes are the same; at most one shard of
    cells is held in memory and the zarr array grows shard by shard (the total count is not needed up front).
    """

    def __init__(
        self,
        root: str | Path,
        cells_per_shard: int = CELLS_PER_SHARD,
        config: dict[str, Any] | None = None,
        progress: bool = True,
        codec: str = DEFAULT_CODEC,
    ):
        if cells_per_shard < 1:
            raise ValueError(f"cells_per_shard must be >= 1, got {cells_per_shard}")
        if codec not in CODECS:
            raise ValueError(f"unknown member codec {codec!r}; valid: {', '.join(CODECS)}")
        self.root = Path(root)
        self.cells_per_shard = int(cells_per_shard)
        self.codec = codec
        self.config = dict(config or {})
        self.config.setdefault("cells_per_shard", self.cells_per_shard)
        if codec != DEFAULT_CODEC:
            self.config["codec"] = codec
        self.progress = progress
        self.records: list[ShardRecord | ZarrShardRecord] = []
        self._sources: set[str] = set()
        self.root.mkdir(parents=True, exist_ok=True)

    def add_source(self, source: str, cells: Iterable[Cell]) -> int:
        """Write every cell of ``source`` (in the given order); returns the number of cells written. In a
        variable source a change of group (study, channels, size) ends the current shard early."""
        if source in self._sources:
            raise ValueError(f"source {source!r} was already added to this release")
        self._sources.add(source)
        variable = is_variable(source)
        if variable:
            create_collection(self.root, source)
        self._group: list[Any] = [-1, None, 0, 0]  # variable source: index, key, rows, shards written
        self._shards = 0
        per, n = self.cells_per_shard, 0
        batch: list[EncodedCell] = []
        total = len(cells) if isinstance(cells, Sized) else None
        for cell in progress_bar(
            cells, desc=f"write {source}", unit="cell", total=total, disable=not self.progress
        ):
            encoded = encode_cell(cell, self.codec)
            if variable and batch and group_key(encoded.record) != group_key(batch[0].record):
                self._flush(source, batch, n)
                n, batch = n + len(batch), []
            batch.append(encoded)
            if len(batch) == per:
                self._flush(source, batch, n)
                n, batch = n + len(batch), []
        if batch:
            self._flush(source, batch, n)
            n += len(batch)
        return n

    def _flush(self, source: str, batch: list[EncodedCell], start: int) -> None:
        first = batch[0].record
        c, h, w = first["shape"]
        shard, self._shards = self._shards, self._shards + 1
        if not is_variable(source):
            if start == 0:
                create_zarr_array(
                    self.root,
                    source,
                    len(batch),
                    first["channels"],
                    (h, w),
                    first["dtype"],
                    self.cells_per_shard,
                )
            else:
                zarr_store.open_images(self.root, source, mode="r+").resize((start + len(batch), c, h, w))
            self.records.append(write_shard(self.root, source, shard, batch, start))
            return
        g = self._group
        if group_key(first) != g[1]:  # a new group: its own array in the collection
            g[:] = [g[0] + 1, group_key(first), 0, 0]
            args = (first["channels"], (h, w), first["dtype"], self.cells_per_shard)
            create_zarr_array(self.root, source, len(batch), *args, group=g[0])
        else:
            arr = zarr_store.open_images(self.root, source, mode="r+", group=g[0])
            arr.resize((g[2] + len(batch), c, h, w))
        self.records.append(write_shard(self.root, source, shard, batch, start, group=(g[0], g[3])))
        g[2], g[3] = g[2] + len(batch), g[3] + 1

    def close(self, extra: dict[str, Any] | None = None) -> Path:
        """Write the manifest and release.json; returns the release.json path."""
        if not self.records:
            raise ValueError(f"release {self.root}: no cells were added")
        return finalize_release(self.root, None, self.records, self.config, extra)
