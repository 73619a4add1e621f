"""Write a release in the official CHAMMI layout, so existing CHAMMI loaders and evaluators run on it.

``OUTDIR/{Allen,HPA,CP}/enriched_meta.csv`` + one 8-bit tape PNG (H, W*C) per cell. Rows are in manifest
order (= our feature order). Columns: ``file_path`` (relative to OUTDIR), ``channel_width``, ``Label``,
``train_test_split``, the source's boolean task columns, its grouping column(s) (``Structure`` |
``cell_type`` | ``Plate`` and CP's ``source`` = dataset), ``ID``, then every ``meta`` key not already a
column (first-seen order; lists/dicts as JSON). A cell that came from an official download keeps its
original ``file_path`` (extension .png), so official -> release -> export is a round trip.

uint16 images are scaled to 8 bit (``round(x / 257)``, so 65535 -> 255): the official format is 8-bit;
the summary notes it.

By default the export also writes ``OUTDIR/morphem70k_v2.csv``, the combined CSV the paper's training code
reads (:mod:`chammi_data.interop.cam_training_csv`), from every ``enriched_meta.csv`` in OUTDIR.

Every output path is joined with :func:`chammi_data.store.paths.safe_join`: a cell id or a ``file_path`` from
a download's metadata can never place a file outside OUTDIR. A cell id that is not a valid id is an error; an
unusable original ``file_path`` falls back to ``<Folder>/images/<cell_id>.png`` with a note.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from chammi_data.format.manifest import read_manifest, source_rows, sources_in
from chammi_data.format.release_format import canonical_json, check_cell_id, parse_meta
from chammi_data.format.shards import ShardReader
from chammi_data.format.vocab import SourceInfo, source_info
from chammi_data.interop.cam_training_csv import write_cam_csv
from chammi_data.interop.official_layout import META_FILE, chw_to_tape
from chammi_data.progress import progress as progress_bar
from chammi_data.store.paths import safe_join
from chammi_data.store.storage import open_store

FORMATS = ("chammi",)


@dataclass
class ExportSummary:
    """What :func:`export_official` wrote: output folder, cells per source folder, notes (e.g. 16->8 bit)."""

    outdir: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cam_csv: Path | None = None

    def __str__(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        cam = f"; CAM training CSV {self.cam_csv}" if self.cam_csv is not None else ""
        return f"wrote {self.outdir} ({parts}){cam}" + "".join(f"\nnote: {n}" for n in self.notes)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 unchanged; uint16 scaled by 255/65535 with rounding."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    raise ValueError(f"cannot export dtype {image.dtype}: expected uint8 or uint16")


def _safe_official_path(folder: str, value: Any) -> str | None:
    """The original file_path (as .png) when it is a safe relative path inside ``folder``."""
    if not isinstance(value, str) or not value:
        return None
    p = PurePosixPath(value.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or len(p.parts) < 2 or p.parts[0] != folder or not p.suffix:
        return None
    return str(p.with_suffix(".png"))


def _base_columns(info: SourceInfo) -> list[str]:
    groups = [info.group_column] + (["source"] if info.key == "cp" else [])
    return ["file_path", "channel_width", "Label", "train_test_split", *info.tasks, *groups, "ID"]


def _meta_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return canonical_json(value)
    return value


def export_source(
    release: Any,
    outdir: Path,
    source: str,
    rows: pd.DataFrame,
    reader: ShardReader,
    compress_level: int = 6,
    progress: bool = True,
) -> tuple[int, list[str]]:
    """Write one source folder; returns (cells written, notes)."""
    info = source_info(source)
    folder = safe_join(outdir, info.folder)
    base = _base_columns(info)
    records: list[dict[str, Any]] = []
    extra_cols: dict[str, None] = {}
    used: set[str] = set()
    n16 = n_renamed = 0
    for i, row in enumerate(
        progress_bar(rows.to_dict("records"), desc=f"export {info.folder}", unit="cell", disable=not progress)
    ):
        cell_id = check_cell_id(row["cell_id"], f"{info.folder} manifest row {i}")
        meta = parse_meta(row["meta"])
        image = reader.read(row)
        if image.dtype == np.uint16:
            n16 += 1
        original = meta.get("file_path")
        rel = _safe_official_path(info.folder, original)
        if rel is None or rel in used:
            n_renamed += original is not None
            rel = f"{info.folder}/images/{cell_id}.png"
        used.add(rel)
        path = safe_join(outdir, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chw_to_tape(to_uint8(image)), mode="L").save(
            path, format="PNG", compress_level=compress_level
        )
        rec: dict[str, Any] = {
            "file_path": rel,
            "channel_width": int(row["width"]),
            "Label": row["label"],
            "train_test_split": row["train_test_split"],
            **{t: bool(row[t]) for t in info.tasks},
            info.group_column: row[info.group_column],
            "ID": meta.get("ID", row["cell_id"]),
        }
        if info.key == "cp":
            rec["source"] = row["dataset"]
        for k, v in meta.items():
            if k not in base:
                extra_cols.setdefault(k)
                rec[k] = _meta_value(v)
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=base + list(extra_cols)).fillna("")
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / META_FILE, index=False, lineterminator="\n")
    notes = []
    if n_renamed:
        notes.append(
            f"{info.folder}: {n_renamed} original file_path value(s) unusable (outside {info.folder}/ or "
            f"repeated); those cells are written as {info.folder}/images/<cell_id>.png"
        )
    if n16:
        notes.append(
            f"{info.folder}: {n16} uint16 image(s) scaled to 8 bit (x / 257, rounded) for the official PNG "
            "format"
        )
    return len(records), notes


def export_official(
    release: Any,
    outdir: str | Path,
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
    compress_level: int = 6,
    progress: bool = True,
    cam_csv: bool = True,
) -> ExportSummary:
    """Write the release at ``release`` into ``outdir`` in the official CHAMMI layout.

    ``sources`` restricts the export (keys or folder names). Existing source folders in ``outdir`` are an
    error (``FileExistsError``, before anything is written) unless ``overwrite`` (then they are replaced).
    ``cam_csv``: also write ``outdir/morphem70k_v2.csv`` for the paper's training code
    (:mod:`chammi_data.interop.cam_training_csv`), from every source folder in ``outdir``.
    """
    release, outdir = open_store(release), Path(outdir)
    manifest = read_manifest(release)
    keys = sources_in(manifest) if sources is None else [source_info(s).key for s in sources]
    parts = {key: source_rows(manifest, key) for key in keys}
    empty = [key for key, rows in parts.items() if rows.empty]
    if empty:
        raise ValueError(
            f"release {release} has no cells of source(s) {empty}; it has {sources_in(manifest)}"
        )
    folders = {key: safe_join(outdir, source_info(key).folder) for key in keys}
    existing = [str(f) for f in folders.values() if f.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True (--overwrite) to replace"
        )
    summary = ExportSummary(outdir)
    reader = ShardReader(release)
    try:
        for key in keys:
            if folders[key].exists():
                shutil.rmtree(folders[key])
            n, notes = export_source(release, outdir, key, parts[key], reader, compress_level, progress)
            summary.counts[source_info(key).folder] = n
            summary.notes += notes
    finally:
        reader.close()
    if cam_csv:
        summary.cam_csv = write_cam_csv(outdir)
    return summary
