"""Write a release in the official CHAMMI layout, so existing CHAMMI loaders and evaluators run on it.

``OUTDIR/{Allen,HPA,CP}/enriched_meta.csv`` + one 8-bit tape PNG (H, W*C) per cell. Rows are in manifest
order (= our feature order). Columns: ``file_path`` (relative to OUTDIR), ``channel_width``, ``Label``,
``train_test_split``, the source's boolean task columns, its grouping column(s) (``Structure`` |
``cell_type`` | ``Plate`` and CP's ``source`` = dataset), ``ID``, then every ``meta`` key not already a
column (first-seen order; lists/dicts as JSON). A cell that came from an official download keeps its
original ``file_path`` (extension .png), so official -> release -> export is a round trip.

uint16 images are scaled to 8 bit (``round(x / 257)``, so 65535 -> 255): the official format is 8-bit;
the summary notes it.
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
from tqdm import tqdm

from chammi_data.manifest import read_manifest, source_rows, sources_in
from chammi_data.official import META_FILE, chw_to_tape
from chammi_data.release_format import canonical_json, parse_meta
from chammi_data.shards import ShardReader
from chammi_data.storage import open_store
from chammi_data.vocab import SourceInfo, source_info

FORMATS = ("chammi",)


@dataclass
class ExportSummary:
    """What :func:`export_official` wrote: output folder, cells per source folder, notes (e.g. 16->8 bit)."""

    outdir: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        return f"wrote {self.outdir} ({parts})" + "".join(f"\nnote: {n}" for n in self.notes)


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


def export_source(release: Any, outdir: Path, source: str, rows: pd.DataFrame, reader: ShardReader,
                  compress_level: int = 6, progress: bool = True) -> tuple[int, list[str]]:
    """Write one source folder; returns (cells written, notes)."""
    info = source_info(source)
    folder = outdir / info.folder
    base = _base_columns(info)
    records: list[dict[str, Any]] = []
    extra_cols: dict[str, None] = {}
    used: set[str] = set()
    n16 = 0
    for row in tqdm(rows.to_dict("records"), desc=f"export {info.folder}", disable=not progress, unit="cell"):
        meta = parse_meta(row["meta"])
        image = reader.read(row)
        if image.dtype == np.uint16:
            n16 += 1
        rel = _safe_official_path(info.folder, meta.get("file_path"))
        if rel is None or rel in used:
            rel = f"{info.folder}/images/{row['cell_id']}.png"
        used.add(rel)
        path = outdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(chw_to_tape(to_uint8(image)), mode="L").save(path, format="PNG", compress_level=compress_level)
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
    if n16:
        notes.append(f"{info.folder}: {n16} uint16 image(s) scaled to 8 bit (x / 257, rounded) for the official PNG format")
    return len(records), notes


def export_official(release: Any, outdir: str | Path, sources: Sequence[str] | None = None,
                    overwrite: bool = False, compress_level: int = 6, progress: bool = True) -> ExportSummary:
    """Write the release at ``release`` into ``outdir`` in the official CHAMMI layout.

    ``sources`` restricts the export (keys or folder names). Existing source folders in ``outdir`` are an
    error unless ``overwrite`` (then they are replaced).
    """
    release, outdir = open_store(release), Path(outdir)
    manifest = read_manifest(release)
    keys = sources_in(manifest) if sources is None else [source_info(s).key for s in sources]
    summary = ExportSummary(outdir)
    reader = ShardReader(release)
    for key in keys:
        rows = source_rows(manifest, key)
        if rows.empty:
            raise ValueError(f"release {release} has no cells of source {key}; it has {sources_in(manifest)}")
        folder = outdir / source_info(key).folder
        if folder.exists():
            if not overwrite:
                raise FileExistsError(f"{folder} already exists; pass overwrite=True (--overwrite) to replace it")
            shutil.rmtree(folder)
        n, notes = export_source(release, outdir, key, rows, reader, compress_level, progress)
        summary.counts[source_info(key).folder] = n
        summary.notes += notes
    reader.close()
    return summary
