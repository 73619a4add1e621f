"""Read an official CHAMMI download (the ``Allen/``, ``HPA/``, ``CP/`` folders users have) as
:class:`~chammi_data.format.schema.Cell` objects.

Layout: ``ROOT/{Allen,HPA,CP}/enriched_meta.csv`` plus one *tape* image per cell: a 2-D grayscale image of
shape (H, W*C) whose channel k occupies columns [k*W, (k+1)*W), W = the row's ``channel_width``.
Images are read by content (PNG / TIFF / anything PIL opens), not by file extension.

Each row becomes a Cell with ``cell_id = make_cell_id(source, file_path)``, ``label = Label``,
``split = train_test_split``, ``tasks`` = the task columns that are true, ``groups`` from the grouping
columns (CP's ``source`` column becomes ``groups["dataset"]``) and ``meta`` = every original column as
the text of the CSV (so an export writes back exactly what was read).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from chammi_data.format.release_format import CHAMMI_SPLITS, parse_bool
from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES, TASK_COLUMNS, source_info

META_FILE = "enriched_meta.csv"
#: Columns an official metadata file must have (task columns are checked per source).
REQUIRED_COLUMNS = ("file_path", "channel_width", "Label", "train_test_split")


class OfficialFormatError(ValueError):
    """An official metadata row or image is not what the CHAMMI layout says; names file and row."""


def tape_to_chw(tape: np.ndarray, channel_width: int) -> np.ndarray:
    """Fold a tape (H, W*C) into (C, H, W): channel k = columns [k*W, (k+1)*W)."""
    if tape.ndim != 2:
        raise ValueError(f"tape must be 2-D (H, W*C), got shape {tape.shape}")
    h, total = tape.shape
    w = int(channel_width)
    if w <= 0 or total % w:
        raise ValueError(f"tape width {total} is not a multiple of channel_width {w}")
    return np.ascontiguousarray(tape.reshape(h, total // w, w).transpose(1, 0, 2))


def chw_to_tape(image: np.ndarray) -> np.ndarray:
    """Unfold (C, H, W) into a tape (H, W*C), the inverse of :func:`tape_to_chw`."""
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    c, h, w = image.shape
    return np.ascontiguousarray(image.transpose(1, 0, 2).reshape(h, c * w))


def read_image_by_content(path: str | Path) -> np.ndarray:
    """A 2-D grayscale array from a PNG/TIFF/other image file, chosen by its magic bytes."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "P", "1"):
                raise ValueError(f"{path}: expected a grayscale tape image, got PIL mode {im.mode}")
            arr = np.asarray(im)
    arr = np.squeeze(arr)
    if arr.dtype == np.int32 or arr.dtype == np.uint32:  # PIL mode "I" for 16-bit PNGs
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{path}: pixel values outside uint16")
        arr = arr.astype(np.uint16)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected a 2-D uint8/uint16 tape, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def _as_bool(value: str, where: str) -> bool:
    """An official task column value; an empty cell means False (not a query of that task)."""
    try:
        return parse_bool(value, where, empty=False)
    except ValueError as exc:
        raise OfficialFormatError(str(exc)) from None


def _find_merged(root: Path) -> pd.DataFrame | None:
    """A merged metadata CSV of all three sources at the root (column ``chunk`` = Allen/HPA/CP), if any."""
    for csv in sorted(root.glob("*.csv")):
        head = pd.read_csv(csv, nrows=0)
        if "chunk" in head.columns and "file_path" in head.columns:
            return pd.read_csv(csv, dtype=str, keep_default_na=False)
    return None


def read_official_metadata(root: str | Path) -> dict[str, pd.DataFrame]:
    """{source key: metadata DataFrame} in file order, columns as in the CSV (text; task columns bool).

    Reads ``<Folder>/enriched_meta.csv`` for each folder present; falls back to a merged CSV at the root
    (column ``chunk``) for folders without one. Checks the required and task columns.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"official CHAMMI folder {root} does not exist")
    out: dict[str, pd.DataFrame] = {}
    merged: pd.DataFrame | None = None
    for key, info in SOURCES.items():
        csv = root / info.folder / META_FILE
        if csv.is_file():
            df = pd.read_csv(csv, dtype=str, keep_default_na=False)
            where = str(csv)
        else:
            if merged is None:
                merged = _find_merged(root)
            if merged is None or not (merged["chunk"].str.lower() == info.folder.lower()).any():
                continue
            df = merged[merged["chunk"].str.lower() == info.folder.lower()].reset_index(drop=True)
            where = f"merged metadata CSV at {root} (chunk {info.folder})"
        missing = [c for c in (*REQUIRED_COLUMNS, info.group_column) if c not in df.columns]
        if missing:
            raise OfficialFormatError(f"{where}: missing column(s) {missing}; has {list(df.columns)}")
        no_task = [t for t in info.tasks if t not in df.columns]
        if no_task:
            raise OfficialFormatError(f"{where}: missing task column(s) {no_task} of {info.folder}")
        for t in (t for t in TASK_COLUMNS if t in df.columns):
            df[t] = [_as_bool(v, f"{where} row {i} column {t}") for i, v in enumerate(df[t])]
            df[t] = df[t].astype(bool)
        out[key] = df
    if not out:
        folders = ", ".join(f"{i.folder}/{META_FILE}" for i in SOURCES.values())
        raise FileNotFoundError(f"no official CHAMMI metadata under {root}: expected {folders}")
    return out


def row_to_cell(root: Path, source: str, row: dict[str, str], index: int) -> Cell:
    """One official metadata row (text values) -> a Cell; errors name the CSV row and image file."""
    info = source_info(source)
    rel = row["file_path"]
    where = f"{info.folder}/{META_FILE} row {index} ({rel})"
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise OfficialFormatError(f"{where}: file_path must be a relative path inside the release root")
    path = root / rel
    if not path.is_file():
        raise OfficialFormatError(f"{where}: image file {path} not found")
    try:
        width = int(float(row["channel_width"]))
        image = tape_to_chw(read_image_by_content(path), width)
    except ValueError as exc:
        raise OfficialFormatError(f"{where}: {exc}") from None
    if image.shape[0] != info.num_channels:
        raise OfficialFormatError(
            f"{where}: tape folds into {image.shape[0]} channels of width {width}, {info.folder} has "
            f"{info.num_channels}"
        )
    split = row["train_test_split"].strip()
    if split not in CHAMMI_SPLITS:
        raise OfficialFormatError(f"{where}: train_test_split {split!r} not one of {CHAMMI_SPLITS}")
    tasks = frozenset(
        t for t in TASK_COLUMNS if t in row and t in info.tasks and _as_bool(row[t], f"{where} column {t}")
    )
    groups = {info.group_column: row[info.group_column]}
    if source == "cp" and "source" in row:
        groups["dataset"] = row["source"]
    return Cell(
        image=image,
        channels=info.channels,
        source=info.key,
        label=row["Label"],
        cell_id=make_cell_id(info.key, rel),
        meta=dict(row),
        split=split,
        tasks=tasks,
        groups=groups,
    )


def iter_official_cells(
    root: str | Path, source: str, rows: Iterable[int] | None = None, metadata: pd.DataFrame | None = None
) -> Iterator[Cell]:
    """Cells of one source of an official download, in metadata file order.

    ``rows``: positional row numbers to read (default all); ``metadata``: the source's DataFrame from
    :func:`read_official_metadata` (read here when None). Raises :class:`OfficialFormatError` naming the
    CSV row and file for a missing/unreadable image, a bad tape width or an unknown split.
    """
    root = Path(root)
    key = source_info(source).key
    if metadata is None:
        meta = read_official_metadata(root)
        if key not in meta:
            raise FileNotFoundError(f"official download {root} has no {source_info(key).folder}/{META_FILE}")
        metadata = meta[key]
    records = metadata.to_dict("records")
    indices = range(len(records)) if rows is None else rows
    for i in indices:
        if not 0 <= int(i) < len(records):
            raise IndexError(
                f"row {i} outside {source_info(key).folder}/{META_FILE} with {len(records)} rows"
            )
        yield row_to_cell(root, key, {str(k): str(v) for k, v in records[int(i)].items()}, int(i))
