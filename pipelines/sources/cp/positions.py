"""Cell Painting nucleus positions: where a site's nuclei are, from CellProfiler output, without pixels.

Per site, in this order (``positions_source``): the per-site ``<plate>/analysis/<plate>-<well>-<site>/
Nuclei.csv``, the per-plate ``<plate>/Nuclei.csv`` (filtered by its ``Metadata_`` columns, or joined to
``Image.csv`` on ``ImageNumber``), the plate's CellProfiler SQLite backend (table ``Nuclei`` joined to
``Image`` on ``ImageNumber`` (+ ``TableNumber``)), else segmentation of the DNA channel by the caller.
Positions are ``Nuclei_Location_Center_X`` / ``_Y`` in field pixels. Files are named relative to the
input root (:mod:`pipelines.steps.rawinput`) and read through it; a SQLite database is copied to the worker
first when the input is not a local folder.
"""

from __future__ import annotations

import csv
import io
import math
import os
import posixpath
import sqlite3
from collections.abc import Collection
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.sources.cp.layout import LayoutError, normalise_well
from pipelines.steps.rawinput import RawInput, as_raw_input

X_COL, Y_COL = "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"


def site_nuclei_csv(plate_dir: Any, plate: str, well: str, site: int) -> Any:
    """Where a per-site CellProfiler ``Nuclei.csv`` lives (a ``Path`` for a ``Path``, else relative)."""
    rel = f"analysis/{plate}-{well}-{site}/Nuclei.csv"
    return plate_dir / rel if isinstance(plate_dir, Path) else posixpath.join(plate_dir, rel)


def positions_source(
    plate_dir: Any,
    plate: str,
    well: str,
    site: int,
    mode: str = "auto",
    listing: Collection[str] | None = None,
    also: tuple[str, ...] = (),
) -> dict[str, str]:
    """Pick where this site's nucleus positions come from: ``{"kind": site_csv|plate_csv|sqlite|segment,
    "path"}``.

    ``plate_dir``: a local folder, or with ``listing`` (every file of the input, relative paths) the plate's
    relative path; then ``path`` is relative too, and ``also`` names more folders holding the plate's
    CellProfiler output (a Gallery plate's ``analysis/<batch>/<plate>`` and ``backend/<batch>/<plate>``,
    whose per-site folders may also be named ``<well>-<site>``). ``mode`` ``auto`` takes the first that
    exists in that order; a named kind forces it (``segment`` always).
    """
    if listing is None:
        pdir = Path(plate_dir)
        sqlite = sorted(pdir.glob("*.sqlite"))
        candidates = [
            ("site_csv", str(site_nuclei_csv(pdir, plate, well, site))),
            ("plate_csv", str(pdir / "Nuclei.csv")),
            ("sqlite", str(sqlite[0] if sqlite else pdir / f"{plate}.sqlite")),
        ]
        exists = os.path.isfile
    else:
        roots = [str(plate_dir).strip("/"), *also]
        candidates = [("site_csv", site_nuclei_csv(r, plate, well, site)) for r in roots]
        candidates += [
            ("site_csv", posixpath.join(r, "analysis", f"{well}-{site}", "Nuclei.csv")) for r in roots[1:]
        ]
        candidates += [("plate_csv", posixpath.join(r, "Nuclei.csv")) for r in roots]
        for r in roots:
            sqlite_rel = sorted(f for f in listing if posixpath.dirname(f) == r and f.endswith(".sqlite"))
            candidates.append(
                ("sqlite", sqlite_rel[0] if sqlite_rel else posixpath.join(r, f"{plate}.sqlite"))
            )
        exists = listing.__contains__
    for kind, path in candidates:
        if mode in ("auto", kind) and exists(path):
            return {"kind": kind, "path": path}
    if mode not in ("auto", "segment"):
        raise LayoutError(f"positions mode {mode!r}: no such file for plate {plate} well {well} site {site}")
    return {"kind": "segment", "path": ""}


#: a nucleus row: (ObjectNumber, x, y) in field pixels
Position = tuple[int, float, float]
#: a row without coordinates: (where in the table: "ObjectNumber N" or "row N", reason)
Dropped = tuple[str, str]
NO_COORDINATES = f"nucleus row without coordinates ({X_COL} or {Y_COL} empty or NaN)"


def _objects(df: pd.DataFrame, where: str) -> tuple[list[Position], list[Dropped]]:
    """Positions of the rows of ``df`` with both coordinates, and the rows without (``ObjectNumber``, or the
    row's number when the table has no such column)."""
    for col in (X_COL, Y_COL):
        if col not in df.columns:
            raise LayoutError(f"{where}: missing column {col!r}")
    has_obj = "ObjectNumber" in df.columns
    obj = df["ObjectNumber"] if has_obj else pd.Series(range(1, len(df) + 1), index=df.index)
    out, dropped = [], []
    for n, (o, x, y) in enumerate(zip(obj, df[X_COL], df[Y_COL], strict=True), start=1):
        if pd.notna(x) and pd.notna(y):
            out.append((int(o), float(x), float(y)))
        else:
            dropped.append(
                (f"ObjectNumber {int(o)}" if has_obj and pd.notna(o) else f"row {n}", NO_COORDINATES)
            )
    return out, dropped


#: what pandas reads as missing by default; a per-site table is parsed with the csv module (pandas' start-up
#: cost per call is large next to a small table) with the same meaning for empty and NA cells
_NA = {
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
}


def _site_csv_objects(text: str | Path, where: str) -> tuple[list[Position], list[Dropped]]:
    """:func:`_objects` of a per-site Nuclei.csv (its text, or a local file), read with the csv module (same
    rows, same numbers)."""
    if isinstance(text, Path):
        text = text.read_text(encoding="utf-8-sig")
    with io.StringIO(text, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None:
            raise LayoutError(f"{where}: empty table")
        for col in (X_COL, Y_COL):
            if col not in header:
                raise LayoutError(f"{where}: missing column {col!r}")
        ix, iy = header.index(X_COL), header.index(Y_COL)
        io_ = header.index("ObjectNumber") if "ObjectNumber" in header else None
        out: list[Position] = []
        dropped: list[Dropped] = []
        n = 0
        for row in rows:
            if not row:
                continue  # pandas skips blank lines too
            n += 1
            if len(row) > len(header):
                raise LayoutError(f"{where}: row {n} has {len(row)} fields, the header has {len(header)}")
            row = row + [""] * (len(header) - len(row))  # a short row's missing cells are NA, as in pandas
            x, y = row[ix].strip(), row[iy].strip()
            fx = math.nan if x in _NA else float(x)
            fy = math.nan if y in _NA else float(y)
            if math.isnan(fx) or math.isnan(fy):
                o = row[io_].strip() if io_ is not None else ""
                dropped.append(
                    (f"ObjectNumber {int(float(o))}" if o not in _NA else f"row {n}", NO_COORDINATES)
                )
                continue
            out.append((int(float(row[io_])) if io_ is not None else n, fx, fy))
    return out, dropped


def _site_filter(df: pd.DataFrame, plate: str, well: str, site: int, prefix: str) -> pd.Series:
    wells = df[f"{prefix}Metadata_Well"].astype(str).map(normalise_well)
    mask = (wells == well) & (pd.to_numeric(df[f"{prefix}Metadata_Site"]) == site)
    if f"{prefix}Metadata_Plate" in df.columns:
        mask &= df[f"{prefix}Metadata_Plate"].astype(str) == plate
    return mask


@lru_cache(maxsize=4)
def _read_table(raw: RawInput, path: str, stamp: str) -> pd.DataFrame:
    """A per-plate table read once per worker process (sites of a plate usually run on the same worker);
    ``stamp`` (a local file's mtime) makes a changed file be read again.

    Only the columns the position lookup needs are kept: real per-plate Nuclei.csv files have hundreds of
    feature columns and millions of rows.
    """
    data = raw.read(path)
    header = pd.read_csv(io.BytesIO(data), nrows=0).columns
    keep = [c for c in header if c in (X_COL, Y_COL, "ObjectNumber", "ImageNumber") or "Metadata_" in c]
    return pd.read_csv(io.BytesIO(data), usecols=keep)


def _table(raw: RawInput, path: str) -> pd.DataFrame:
    store, rel = raw.locate(path)
    stamp = str(os.stat(store.path(rel)).st_mtime_ns) if store.is_local else ""
    return _read_table(raw, path, stamp)


def read_positions(
    spec: dict[str, str], plate: str, well: str, site: int, raw: RawInput | None = None
) -> tuple[list[Position], list[Dropped]]:
    """The site's nuclei from a :func:`positions_source` spec (its path relative to the input ``raw``, or
    absolute without one): [(ObjectNumber, x, y)] in pixels, and [(where, reason)] of its rows that have no
    coordinates (the caller lists them as skipped)."""
    raw = raw or as_raw_input("/")
    kind, path = spec["kind"], spec["path"]
    where = f"{raw.full(path)} (plate {plate} well {well} site {site})"
    if kind == "site_csv":
        return _site_csv_objects(raw.read(path).decode("utf-8-sig"), where)
    if kind == "plate_csv":
        df = _table(raw, path)
        if "Metadata_Well" not in df.columns:
            image_csv = posixpath.join(posixpath.dirname(path.replace("\\", "/")), "Image.csv")
            if "ImageNumber" not in df.columns or not raw.is_file(image_csv):
                raise LayoutError(
                    f"{where}: needs Metadata_Well/Metadata_Site columns, or ImageNumber + Image.csv"
                )
            img = _table(raw, image_csv)
            prefix = "Image_" if "Image_Metadata_Well" in img.columns else ""
            keep = img.loc[_site_filter(img, plate, well, site, prefix), "ImageNumber"]
            return _objects(df[df["ImageNumber"].isin(keep)], where)
        return _objects(df[_site_filter(df, plate, well, site, "")], where)
    if kind == "sqlite":
        return _sqlite_positions(raw.local_file(path), plate, well, site, where)
    raise LayoutError(f"{where}: unknown positions kind {kind!r}")


def _sqlite_positions(
    path: Path, plate: str, well: str, site: int, where: str
) -> tuple[list[Position], list[Dropped]]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in con.execute("PRAGMA table_info(Image)")}
        ncols = {r[1] for r in con.execute("PRAGMA table_info(Nuclei)")}
        if not cols or not ncols:
            raise LayoutError(f"{where}: SQLite needs tables Image and Nuclei")
        join = "n.ImageNumber = i.ImageNumber"
        if "TableNumber" in cols and "TableNumber" in ncols:
            join += (
                " AND n.TableNumber = i.TableNumber"  # CellProfiler splits big plates into numbered tables
            )
        obj = "n.Nuclei_Number_Object_Number" if "Nuclei_Number_Object_Number" in ncols else "n.ObjectNumber"
        sql = (
            f"SELECT {obj}, n.{X_COL}, n.{Y_COL}, i.Image_Metadata_Well FROM Nuclei n JOIN Image i ON {join} "
            "WHERE CAST(i.Image_Metadata_Plate AS TEXT) = ? AND CAST(i.Image_Metadata_Site AS INTEGER) = ? "
            "ORDER BY 1"
        )
        rows = con.execute(sql, (plate, site)).fetchall()
    except sqlite3.Error as exc:
        raise LayoutError(f"{where}: SQLite query failed ({exc})") from None
    finally:
        con.close()
    rows = [(o, x, y) for o, x, y, w in rows if normalise_well(w) == well]
    good = [
        (int(o), float(x), float(y))
        for o, x, y in rows
        if x is not None and y is not None and not (math.isnan(float(x)) or math.isnan(float(y)))
    ]
    dropped = [
        (f"ObjectNumber {o}", NO_COORDINATES)
        for o, x, y in rows
        if x is None or y is None or math.isnan(float(x)) or math.isnan(float(y))
    ]
    return good, dropped


def write_cellprofiler_sqlite(path: Path, images: pd.DataFrame, nuclei: pd.DataFrame) -> None:
    """Write a minimal CellProfiler-style SQLite backend with tables ``Image`` and ``Nuclei`` (synthetic
    data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    try:
        images.to_sql("Image", con, index=False)
        nuclei.to_sql("Nuclei", con, index=False)
        con.execute("CREATE INDEX idx_nuclei_image ON Nuclei (TableNumber, ImageNumber)")
        con.commit()
    finally:
        con.close()
