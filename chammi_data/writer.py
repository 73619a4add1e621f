"""Write a release: WebDataset tar shards + Zarr v3 images + manifest + ``release.json``.

Three functions make a release and can be spread over processes:

1. :func:`create_zarr_array` once per source (needs the final cell count),
2. :func:`write_shard` once per shard, in any process, concurrently for different shards - it writes the
   tar shard k and exactly zarr shard k (rows ``[k * cells_per_shard, ...)``) and returns a
   :class:`ShardRecord` with the manifest rows of its cells,
3. :func:`finalize_release` once, with every row and shard record: manifest.parquet/.csv and release.json.

:class:`ReleaseWriter` is the serial convenience on top (streams cells, one shard in memory at a time).
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
from tqdm import tqdm

from chammi_data import zarr_store
from chammi_data.codec import IMAGE_SUFFIX, JSON_SUFFIX, encode_image
from chammi_data.manifest import write_manifest
from chammi_data.schema import SCHEMA_VERSION, Cell, canonical_json, file_sha256  # noqa: F401 (re-exported)
from chammi_data.vocab import SOURCE_KEYS, TASK_COLUMNS

#: Default number of cells per tar shard (= per zarr shard).
CELLS_PER_SHARD = 256
_TAR_BLOCK = 512


@dataclass
class ShardRecord:
    """What one :func:`write_shard` call produced: the tar path (relative to the root), its sha256 and
    the manifest rows (dicts keyed by ``schema.MANIFEST_COLUMNS``) of its cells, in shard order."""

    path: str
    sha256: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    shard_index: int = 0
    nbytes: int = 0


def shard_relpath(source: str, shard_index: int) -> str:
    """``shards/<source>/<source>-%06d.tar`` (posix, relative to the release root)."""
    return f"shards/{source}/{source}-{shard_index:06d}.tar"


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


def manifest_row(cell: Cell, shard: str, offset: int, nbytes: int, zarr_row: int, checksum: str | None = None) -> dict[str, Any]:
    """The manifest row of one written cell (keys = ``schema.MANIFEST_COLUMNS``)."""
    c, h, w = cell.image.shape
    row: dict[str, Any] = {
        "cell_id": cell.cell_id,
        "source": cell.source,
        "label": cell.label,
        "train_test_split": cell.split,
    }
    row.update({t: t in cell.tasks for t in TASK_COLUMNS})
    row.update({g: str(cell.groups.get(g, "")) for g in ("Structure", "cell_type", "Plate", "dataset")})
    row.update(
        {
            "channels": ",".join(cell.channels),
            "height": int(h),
            "width": int(w),
            "dtype": str(cell.image.dtype),
            "shard": shard,
            "key": cell.cell_id,
            "offset": int(offset),
            "nbytes": int(nbytes),
            "zarr_row": int(zarr_row),
            "sha256": checksum or cell.checksum,
            "meta": canonical_json(cell.meta),
        }
    )
    return row


#: Step 1, once per source: create ``zarr/<source>.zarr`` (N, C, H, W) for the final cell count
#: (``root, source, n_cells, channels, hw, dtype, cells_per_shard``). The zarr module owns the layout.
create_zarr_array = zarr_store.create_images


@dataclass(frozen=True)
class EncodedCell:
    """The CPU-heavy part of writing one cell, done once: its tar image member, its pixel sha256 and its
    zarr chunk (``zarr_store.encode_chunk``). A build makes these on the worker that made the cell, in
    parallel with everything else, and the shard writers only concatenate them."""

    member: bytes
    checksum: str
    chunk: bytes


def encode_cell(cell: Cell) -> EncodedCell:
    """Compress one cell for both formats (``codec.encode_image`` and ``zarr_store.encode_chunk``) and hash it."""
    return EncodedCell(encode_image(cell.image), cell.checksum, zarr_store.encode_chunk(cell.image))


def write_shard(root: str | Path, source: str, shard_index: int, cells: Sequence[Cell], zarr_start: int,
                encoded: Sequence[EncodedCell] | None = None) -> ShardRecord:
    """Write tar shard ``shard_index`` of ``source`` and zarr rows ``[zarr_start, zarr_start + len(cells))``.

    Those rows must be exactly zarr shard ``shard_index`` (``zarr_start == shard_index * cells_per_shard``),
    so that each zarr shard has one writer; different shards may be written concurrently from different
    processes. :func:`write_tar_shard` and :func:`write_zarr_shard` are the two halves; they touch different
    files and may also run in different processes.
    """
    encoded = list(encoded) if encoded is not None else [encode_cell(c) for c in cells]
    record = write_tar_shard(root, source, shard_index, cells, zarr_start, encoded)
    write_zarr_shard(root, source, shard_index, zarr_start, chunks=[e.chunk for e in encoded])
    return record


def _check_shard(root: Path, source: str, shard_index: int, n: int, zarr_start: int) -> str:
    rel = shard_relpath(source, shard_index)
    if n == 0:
        raise ValueError(f"write_shard({source}, {shard_index}): no cells")
    per = zarr_store.cells_per_shard(zarr_store.open_images(root, source))
    if zarr_start != shard_index * per:
        raise ValueError(f"{rel}: zarr_start {zarr_start} != shard_index * cells_per_shard ({shard_index} * {per})")
    return rel


def write_zarr_shard(root: str | Path, source: str, shard_index: int, zarr_start: int,
                     images: Sequence[np.ndarray] | None = None, chunks: Sequence[bytes] | None = None) -> None:
    """Write zarr shard ``shard_index`` of ``source`` (rows from ``zarr_start``) from ``images`` (encoded
    here by zarr-python) or from their pre-encoded ``chunks`` (``EncodedCell.chunk``; the same bytes)."""
    if (images is None) == (chunks is None):
        raise ValueError("write_zarr_shard: pass exactly one of images or chunks")
    n = len(images) if images is not None else len(chunks)  # type: ignore[arg-type]
    _check_shard(Path(root), source, shard_index, n, zarr_start)
    if chunks is not None:
        zarr_store.write_encoded_shard(root, source, shard_index, chunks)
    else:
        zarr_store.write_rows(root, source, zarr_start, np.stack(images))  # type: ignore[arg-type]


def write_tar_shard(root: str | Path, source: str, shard_index: int, cells: Sequence[Cell], zarr_start: int,
                    encoded: Sequence[EncodedCell] | None = None) -> ShardRecord:
    """Write tar shard ``shard_index`` of ``source`` (rows ``zarr_start...`` in the manifest); see :func:`write_shard`.

    The tar is written to a temp file and moved into place atomically. Members per cell:
    ``<key>.json`` (``Cell.record()`` as canonical JSON) then ``<key>.npy.zst`` (``codec.encode_image``).
    ``encoded``: :func:`encode_cell` of each cell when already done elsewhere (same bytes either way).
    """
    root = Path(root)
    rel = _check_shard(root, source, shard_index, len(cells), zarr_start)
    if encoded is not None and len(encoded) != len(cells):
        raise ValueError(f"write_shard({source}, {shard_index}): {len(encoded)} encoded images for {len(cells)} cells")
    first = cells[0]
    for cell in cells:
        where = f"{rel}: cell {cell.cell_id!r}"
        if cell.source != source:
            raise ValueError(f"{where} has source {cell.source!r}, expected {source!r}")
        if cell.image.shape != first.image.shape or cell.image.dtype != first.image.dtype or cell.channels != first.channels:
            raise ValueError(
                f"{where}: image {cell.image.shape} {cell.image.dtype} {cell.channels} differs from the shard's first cell "
                f"{first.image.shape} {first.image.dtype} {first.channels}; a source needs one tile size and channel set"
            )
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    rows: list[dict[str, Any]] = []
    try:
        # The bytes tarfile would write (ustar headers, data padded to 512, two zero blocks, the archive padded
        # to tarfile's 10240-byte records), written directly and hashed on the way: no copies through BytesIO
        # and no second read of the file for its sha256.
        digest_h = hashlib.sha256()
        pos = 0
        with open(tmp, "wb") as fh:

            def put(data: bytes) -> None:
                nonlocal pos
                fh.write(data)
                digest_h.update(data)
                pos += len(data)

            for i, cell in enumerate(cells):
                if encoded is not None:
                    image, checksum = encoded[i].member, encoded[i].checksum
                else:
                    image, checksum = encode_image(cell.image), cell.checksum
                record = canonical_json(cell.record(checksum)).encode("utf-8")
                for name, data in ((cell.cell_id + JSON_SUFFIX, record), (cell.cell_id + IMAGE_SUFFIX, image)):
                    put(_tar_info(name, len(data)).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
                    offset = pos  # a ustar header is one 512-byte block: the data starts right after it
                    put(data)
                    if len(data) % _TAR_BLOCK:
                        put(bytes(_TAR_BLOCK - len(data) % _TAR_BLOCK))
                rows.append(manifest_row(cell, rel, offset, len(image), zarr_start + i, checksum))
            put(bytes(2 * _TAR_BLOCK))  # end-of-archive marker
            if pos % tarfile.RECORDSIZE:
                put(bytes(tarfile.RECORDSIZE - pos % tarfile.RECORDSIZE))
        digest = digest_h.hexdigest()
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ShardRecord(path=rel, sha256=digest, rows=rows, source=source, shard_index=shard_index, nbytes=size)


def _counts(df: pd.DataFrame) -> dict[str, Any]:
    out: dict[str, Any] = {"total": int(len(df)), "sources": {}, "splits": {}, "tasks": {}}
    for src in SOURCE_KEYS:
        part = df[df["source"] == src]
        if part.empty:
            continue
        out["sources"][src] = int(len(part))
        out["splits"][src] = {str(k): int(v) for k, v in sorted(part["train_test_split"].value_counts().items())}
        out["tasks"][src] = {t: int(part[t].sum()) for t in TASK_COLUMNS if int(part[t].sum()) > 0}
    return out


def _zarr_cells_per_shard(root: Path, source: str, fallback: int) -> int:
    try:
        return zarr_store.cells_per_shard(zarr_store.open_images(root, source))
    except FileNotFoundError:
        return fallback


def _check_rows(df: pd.DataFrame) -> None:
    unknown = sorted(set(df["source"]) - set(SOURCE_KEYS))
    if unknown:
        raise ValueError(f"manifest rows with unknown source(s) {unknown}; valid: {SOURCE_KEYS}")
    dup = df["cell_id"][df["cell_id"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate cell_id(s) in the release: {sorted(set(dup))[:10]}")
    for src, part in df.groupby("source", sort=False):
        rows = part["zarr_row"].to_numpy()
        if not np.array_equal(rows, np.arange(len(part))):
            raise ValueError(f"source {src}: zarr rows are not 0..{len(part) - 1} in manifest order (missing shard?)")


def finalize_release(
    root: str | Path,
    rows: pd.DataFrame | Sequence[dict[str, Any]] | None,
    shard_records: Sequence[ShardRecord],
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write manifest.parquet, manifest.csv and release.json; record cell ids in each zarr store.

    ``rows`` are the manifest rows of every cell (None: taken from ``shard_records``); they are ordered by
    source (``SOURCE_KEYS``) then zarr row, which is the pipeline's order. ``config`` is the build
    configuration (its sha256 of canonical JSON goes to release.json); ``extra`` is stored verbatim under
    ``"extra"``. Returns the release.json path.
    """
    from chammi_data import __version__

    root = Path(root)
    if rows is None:
        rows = [r for rec in shard_records for r in rec.rows]
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if df.empty:
        raise ValueError(f"finalize_release({root}): no manifest rows")
    order = {s: i for i, s in enumerate(SOURCE_KEYS)}
    df["_o"] = df["source"].map(order).fillna(len(order))
    df = df.sort_values(["_o", "zarr_row"], kind="stable").drop(columns="_o").reset_index(drop=True)
    _check_rows(df)
    listed = {rec.path for rec in shard_records}
    missing = sorted(set(df["shard"]) - listed)
    if missing:
        raise ValueError(f"manifest rows point at shard(s) without a shard record: {missing[:5]}")
    parquet, csv = write_manifest(root, df)
    for src, part in df.groupby("source", sort=False):
        if zarr_store.zarr_path(root, str(src)).exists():
            zarr_store.set_cell_ids(root, str(src), part["cell_id"].tolist())
    config = config or {}
    sources_info = {}
    for src, part in df.groupby("source", sort=False):
        first = part.iloc[0]
        recs = sorted((r for r in shard_records if r.source == src or r.path.startswith(f"shards/{src}/")), key=lambda r: r.path)
        sources_info[str(src)] = {
            "channels": str(first["channels"]).split(","),
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
        "counts": _counts(df),
        "sources": sources_info,
        "shards": {rec.path: rec.sha256 for rec in sorted(shard_records, key=lambda r: r.path)},
        "config_hash": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "config": config,
        "manifest_sha256": file_sha256(parquet),
        "manifest_csv_sha256": file_sha256(csv),
        "extra": extra or {},
    }
    out = root / "release.json"
    tmp = out.with_name(f".release.json.{uuid.uuid4().hex}.tmp")
    tmp.write_text(canonical_json(release) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out


class ReleaseWriter:
    """Serial release writer: ``add_source`` per source (cells in final order), then ``close``.

    Cells are streamed: at most one shard of cells is held in memory. The zarr array is grown shard by
    shard (the total count is not needed up front).
    """

    def __init__(self, root: str | Path, cells_per_shard: int = CELLS_PER_SHARD, config: dict[str, Any] | None = None,
                 progress: bool = True):
        if cells_per_shard < 1:
            raise ValueError(f"cells_per_shard must be >= 1, got {cells_per_shard}")
        self.root = Path(root)
        self.cells_per_shard = int(cells_per_shard)
        self.config = dict(config or {})
        self.config.setdefault("cells_per_shard", self.cells_per_shard)
        self.progress = progress
        self.records: list[ShardRecord] = []
        self._sources: set[str] = set()
        self.root.mkdir(parents=True, exist_ok=True)

    def add_source(self, source: str, cells: Iterable[Cell]) -> int:
        """Write every cell of ``source`` (in the given order); returns the number of cells written."""
        if source in self._sources:
            raise ValueError(f"source {source!r} was already added to this release")
        self._sources.add(source)
        per, n, shard_index = self.cells_per_shard, 0, 0
        batch: list[Cell] = []
        total = len(cells) if isinstance(cells, Sized) else None
        for cell in tqdm(cells, desc=f"write {source}", unit="cell", total=total, disable=not self.progress):
            batch.append(cell)
            if len(batch) == per:
                self._flush(source, shard_index, batch, n)
                n, shard_index, batch = n + len(batch), shard_index + 1, []
        if batch:
            self._flush(source, shard_index, batch, n)
            n += len(batch)
        return n

    def _flush(self, source: str, shard_index: int, batch: list[Cell], start: int) -> None:
        first = batch[0]
        c, h, w = first.image.shape
        if shard_index == 0:
            create_zarr_array(self.root, source, len(batch), first.channels, (h, w), first.image.dtype, self.cells_per_shard)
        else:
            arr = zarr_store.open_images(self.root, source, mode="r+")
            arr.resize((start + len(batch), c, h, w))
        self.records.append(write_shard(self.root, source, shard_index, batch, start))

    def close(self, extra: dict[str, Any] | None = None) -> Path:
        """Write the manifest and release.json; returns the release.json path."""
        if not self.records:
            raise ValueError(f"release {self.root}: no cells were added")
        return finalize_release(self.root, None, self.records, self.config, extra)
