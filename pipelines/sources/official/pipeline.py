"""An official CHAMMI download -> our release (``chammi-build --source chammi --input CHAMMI_ROOT``).

The download holds ``Allen/``, ``HPA/``, ``CP/`` with ``enriched_meta.csv`` and one tape image per cell (the
channel tiles side by side). Units are chunks of ``chunk_rows`` consecutive rows of one source's metadata
(config ``chammi.chunk_rows``, default 256). Cells come from
:func:`chammi_data.interop.official_layout.row_to_cell`: every original column is kept in ``meta`` (as the CSV
text), the cell id is derived from ``file_path``, and the split and task membership are the official columns,
taken as they are (no task rules are applied). The release keeps the official row order (``order = "unit"``)
so features computed on our release line up with the official CSV row for row. A row that cannot be read is
skipped and reported with its CSV row.

The download may lie at any location (:mod:`pipelines.steps.rawinput`): from a bucket or a web server the
metadata tables are copied to a temp folder of the machine that reads them (the client, and each worker
once), and a unit's tape images are fetched by its worker into a temp folder before they are read.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from chammi_data.format.release_format import parse_bool_column
from chammi_data.format.vocab import SOURCE_KEYS, SOURCES, TASK_COLUMNS
from chammi_data.interop.official_layout import (
    META_FILE,
    OfficialFormatError,
    chw_to_tape,
    read_official_metadata,
    row_to_cell,
)
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit, UnitResult
from pipelines.steps.rawinput import RawInput, as_raw_input, raw_input


def _tables_folder(raw: RawInput) -> Path:
    """A local folder holding the download's metadata tables: the download itself when local, else a temp
    folder with copies of ``<Folder>/enriched_meta.csv`` (and of merged CSVs at the root, where it can
    list)."""
    if raw.is_local:
        return Path(raw.url).resolve()
    mirror = Path(tempfile.mkdtemp(prefix="chammi-official-"))
    names = [f"{info.folder}/{META_FILE}" for info in SOURCES.values()]
    if raw.can_list:
        names += [f for f in raw.list_files("") if "/" not in f and f.endswith(".csv")]
    for name in names:
        if raw.is_file(name):
            (mirror / name).parent.mkdir(parents=True, exist_ok=True)
            (mirror / name).write_bytes(raw.read(name))
    return mirror


@functools.lru_cache(maxsize=4)
def _metadata(root: str) -> dict[str, pd.DataFrame]:
    """The official tables, read once per worker process (a 65k-row CSV takes a while)."""
    raw = raw_input(root)
    if raw.is_local:
        return read_official_metadata(Path(raw.url).resolve())
    folder = _tables_folder(raw)
    try:
        return read_official_metadata(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class OfficialPipeline(SourcePipeline):
    """Tape images + enriched_meta.csv of all three sources -> cells with the official splits."""

    name = "chammi"
    makes = SOURCE_KEYS
    reads_release = True
    order = "unit"  # official row order, not cell_id order
    unit_kind = cell_kind = "rows"  # a unit batches rows; each row becomes a cell or a skip
    DEFAULTS = {"chunk_rows": 256}

    def check_options(self, opts: dict[str, Any]) -> None:
        opts["chunk_rows"] = int(opts["chunk_rows"])
        if opts["chunk_rows"] < 1:
            raise ValueError(f"config chammi.chunk_rows must be >= 1, got {opts['chunk_rows']}")

    def rules_digest(self, config: Mapping[str, Any]) -> str:
        """No task rules: the splits and tasks are the official columns."""
        return "official"

    def discover(self, input_dir: Any, opts: dict[str, Any]) -> Discovery:
        raw = as_raw_input(input_dir)
        root = raw.url if not raw.is_local else str(Path(raw.url).resolve())
        chunk = opts["chunk_rows"]
        tables = _metadata.__wrapped__(root) if not raw.is_local else read_official_metadata(Path(root))
        units = []
        for key, df in tables.items():
            for start in range(0, len(df), chunk):
                stop = min(start + chunk, len(df))
                units.append(
                    Unit(
                        key,
                        f"{key}-rows-{start:09d}",
                        {"root": root, "source": key, "start": start, "stop": stop},
                        stop - start,
                    )
                )
        return Discovery(
            sorted(units, key=lambda u: u.unit_id), [], found={"rows": sum(map(len, tables.values()))}
        )

    def unit_files(self, unit: Unit) -> list[str]:
        """The tape images of the unit's rows (fetched ahead of its processing on an object store)."""
        p = unit.payload
        df = _metadata(p["root"])[p["source"]]
        return [str(f) for f in df["file_path"].iloc[p["start"] : p["stop"]] if str(f)]

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        raw = raw_input(p["root"])
        df = _metadata(p["root"])[p["source"]]
        records = df.iloc[p["start"] : p["stop"]].to_dict("records")
        local = raw.is_local
        root = Path(p["root"]) if local else Path(tempfile.mkdtemp(prefix="chammi-official-"))
        cells, skipped = [], []
        try:
            for offset, rec in enumerate(records):
                row = p["start"] + offset
                rel = str(rec.get("file_path", ""))
                try:
                    if not local:
                        _fetch_image(raw, rel, root)
                    cells.append(
                        row_to_cell(root, p["source"], {str(k): str(v) for k, v in rec.items()}, row)
                    )
                except (OfficialFormatError, ValueError) as exc:
                    shown = str(root / rel) if local else raw.full(rel)
                    skipped.append(
                        Skipped(p["source"], unit.unit_id, str(exc).replace(str(root), p["root"]), shown, row)
                    )
        finally:
            if not local:
                shutil.rmtree(root, ignore_errors=True)
        return UnitResult(cells, skipped)

    def assign(self, table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
        """The official ``train_test_split`` and task columns, unchanged (missing task column = False)."""
        out = pd.DataFrame(
            {
                "cell_id": table["cell_id"].to_numpy(),
                "train_test_split": table["train_test_split"].astype(str).str.strip().to_numpy(),
            }
        )
        for col in TASK_COLUMNS:
            if col in table.columns:
                out[col] = parse_bool_column(table[col], f"official metadata column {col}", empty=False)
            else:
                out[col] = False
        # a task column only counts for the sources that have that task
        for key, info in SOURCES.items():
            other = [t for t in TASK_COLUMNS if t not in info.tasks]
            out.loc[table["source"].to_numpy() == key, other] = False
        return out

    def synth(self, out_dir: Path, seed: int = 0, cells_per_source: int = 14) -> None:
        """A tiny official-layout download: tape PNGs + enriched_meta.csv per source, every split present."""
        write_official_sample(Path(out_dir), seed, cells_per_source)


def _fetch_image(raw: RawInput, rel: str, folder: Path) -> None:
    """Copy the tape image ``rel`` of a remote download into ``folder`` (left absent when it is missing or
    ``rel`` is unsafe: ``row_to_cell`` then names the problem)."""
    from chammi_data.store.paths import UnsafePathError, safe_join

    try:
        target = safe_join(folder, rel)
        data = raw.read(rel)
    except (UnsafePathError, FileNotFoundError):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def write_official_sample(out_dir: Path, seed: int = 0, cells_per_source: int = 14) -> Path:
    """Write ``Allen/``, ``HPA/``, ``CP/`` with tapes and ``enriched_meta.csv`` (official columns)."""
    rng = np.random.default_rng(seed)
    groups = {"wtc11": ["SON", "TJP1"], "hpa": ["A549", "HEK 293"], "cp": ["P1", "P2"]}
    labels = {
        "wtc11": ["M0", "M3"],
        "hpa": ["Mitochondria", "Golgi apparatus"],
        "cp": ["DMSO", "BRD-K04185004"],
    }
    for key, info in SOURCES.items():
        folder = out_dir / info.folder
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        splits = ["Train", *info.tasks]
        for i in range(cells_per_source):
            split = splits[i % len(splits)]
            h, w = info.tile_hw
            image = rng.integers(0, 256, (info.num_channels, h, w), dtype=np.uint8)
            rel = f"{info.folder}/images/{key}_{i:04d}.png"
            Image.fromarray(chw_to_tape(image)).save(out_dir / rel)
            row: dict[str, Any] = {
                "file_path": rel,
                "ID": f"{key}_{i:04d}",
                "Label": labels[key][i % 2],
                "channel_width": w,
                "train_test_split": split,
                info.group_column: groups[key][(i // 2) % 2],
            }
            row.update({t: t == split for t in info.tasks})
            if key == "cp":
                row.update({"source": ["LINCS", "CDRP"][i % 2], "Key": f"P{i % 2 + 1}/A0{i % 9 + 1}/1"})
            rows.append(row)
        pd.DataFrame(rows).to_csv(folder / META_FILE, index=False)
    return out_dir
