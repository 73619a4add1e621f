"""WTC-11 (Allen Institute hiPSC single-cell images) -> CHAMMI ``wtc11`` cells.

Input layout (the Allen package): ``metadata.csv`` with one row per cell (``CellId, structure_name,
cell_stage, FOVId, PlateId, WellId, crop_raw, crop_seg, name_dict, scale_micron``) and one OME-TIFF per
cell at ``crop_raw`` (relative to the table's folder, or a full URL), axes (Z, C, Y, X), channels ``dna,
membrane, structure``. The folder is any location (a path, ``s3://allencell/aics/
hipsc_single_cell_image_dataset``, its HTTPS address): the table is read on the client, each cell's
OME-TIFF by the worker that processes it (:mod:`pipelines.steps.rawinput`).

One unit = one metadata row. Per cell:

1. read the OME-TIFF with tifffile; channel names and PhysicalSizeX/Y/Z come from the OME-XML and are
   checked against ``name_dict["crop_raw"]`` and ``scale_micron`` (a mismatch skips the cell, naming the
   file and both lists);
2. maximum projection over Z;
3. channels mapped ``dna -> nucleus, membrane -> membrane, structure -> protein`` and put in CHAMMI order;
4. 8 bit: per channel clip to the ``[low_pct, high_pct]`` percentiles of the cell crop (default 0.1 /
   99.9), computed before padding so the zero border does not move them;
5. brought to 238 x 374 (H x W). The paper does not publish this step. Default ``fit: pad_crop`` centres
   the crop and pads with 0 / crops without scaling, so every CHAMMI pixel keeps the raw 0.108 um pitch
   and cell size stays a feature. ``fit: scale_to_fit`` first shrinks (never enlarges) crops that exceed
   the tile, keeping the aspect ratio, so no part of a large cell is lost.

Label = ``cell_stage``; group ``Structure`` = ``structure_name``. Config section ``wtc11``: ``low_pct``,
``high_pct``, ``fit``, ``pixel_size_tolerance`` (relative, default 0.02), ``channel_map``,
``max_stack_voxels`` (a larger crop_raw is skipped from its header, before decoding). Synthetic sample data:
:mod:`pipelines.sources.wtc11.synth`.
"""

from __future__ import annotations

import ast
import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from skimage.transform import resize

from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit, UnitResult, UnitSkip, safe_id
from pipelines.steps.imaging import center_crop_or_pad, check_finite, to_uint8
from pipelines.steps.rawinput import as_raw_input, raw_input
from pipelines.steps.rawio import ImageHeader, ImageTooLarge, Source, check_size

#: The six cell-cycle stage labels of CHAMMI WTC-11.
STAGES: tuple[str, ...] = ("M0", "M1M2", "M3", "M4M5", "M6M7_complete", "M6M7_single")
REQUIRED_COLUMNS = (
    "CellId",
    "structure_name",
    "cell_stage",
    "FOVId",
    "PlateId",
    "WellId",
    "crop_raw",
    "name_dict",
    "scale_micron",
)
FITS = ("pad_crop", "scale_to_fit")
TABLE = "metadata.csv"


def _parse_listish(text: Any, what: str) -> Any:
    """Allen stores lists/dicts in CSV cells as JSON or Python literals."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot parse {what} {text!r}") from None


def read_ome(
    path: Source,
    max_voxels: int | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, list[str], tuple[float | None, float | None, float | None]]:
    """(array (Z, C, Y, X), OME channel names, physical sizes (z, y, x) in um) of an OME-TIFF (a path, or the
    file's bytes in a file object; ``name``: the file name messages show).

    ``max_voxels``: a stack whose header says it is larger raises :class:`pipelines.steps.rawio.ImageTooLarge`
    before any pixel is decoded.
    """
    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a damaged file is reported as a skip; tifffile's own log is noise
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            if max_voxels is not None:
                shown = name or (Path(path).name if isinstance(path, str | Path) else "crop_raw")
                check_size(ImageHeader.of_series(series), max_voxels, shown, "wtc11.max_stack_voxels")
            arr = series.asarray(maxworkers=1)  # one core per dask worker: no decoder thread pool
            axes = series.axes
            xml = tf.ome_metadata
    finally:
        quiet.setLevel(level)
    if not xml:
        raise ValueError("no OME-XML metadata")
    root = ET.fromstring(xml)
    ns = {"ome": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    pixels = root.find(".//ome:Pixels", ns) if ns else root.find(".//Pixels")
    if pixels is None:
        raise ValueError("OME-XML has no Pixels element")
    chans = pixels.findall("ome:Channel", ns) if ns else pixels.findall("Channel")
    names = [c.get("Name", "") for c in chans]
    sizes = tuple(float(v) if (v := pixels.get(f"PhysicalSize{a}")) else None for a in "ZYX")
    # drop singleton axes other than Z/C/Y/X (T, S...), add a missing Z
    for i, ax in reversed(list(enumerate(axes))):
        if ax not in "ZCYX":
            if arr.shape[i] != 1:
                raise ValueError(f"unexpected axis {ax} of size {arr.shape[i]} (axes {axes})")
            arr = arr.take(0, axis=i)
    axes = "".join(a for a in axes if a in "ZCYX")
    if "Z" not in axes:
        arr, axes = arr[None], "Z" + axes
    if set(axes) != set("ZCYX"):
        raise ValueError(f"axes {axes!r} lack C, Y or X")
    arr = np.transpose(arr, [axes.index(a) for a in "ZCYX"])
    return arr, names, sizes  # type: ignore[return-value]


class WTC11Pipeline(SourcePipeline):
    """Allen WTC-11 metadata.csv + per-cell OME-TIFF crops -> 3-channel 238 x 374 cells."""

    name = "wtc11"
    key = "wtc11"
    makes = ("wtc11",)
    units_per_task = 8  # one small cell per unit: batch them so dask's per-task overhead stays small
    DEFAULTS = {
        "low_pct": 0.1,
        "high_pct": 99.9,
        "fit": "pad_crop",  # see FITS
        "pixel_size_tolerance": 0.02,
        "channel_map": {"dna": "nucleus", "membrane": "membrane", "structure": "protein"},
        # Z * C * Y * X of one crop_raw, checked from its header: 1 GB at 16 bits
        "max_stack_voxels": 500_000_000,
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["fit"] not in FITS:
            raise ValueError(f"wtc11.fit must be pad_crop or scale_to_fit, got {opts['fit']!r}")

    def tables(self, opts: dict[str, Any]) -> tuple[str, ...]:
        return (TABLE,)

    def discover(self, input_dir: Any, opts: dict[str, Any]) -> Discovery:
        raw = as_raw_input(input_dir)
        table_path = raw.path(TABLE)
        if not raw.is_file(TABLE):
            raise FileNotFoundError(
                f"WTC-11: {table_path} not found (expected metadata.csv + crop_raw OME-TIFFs)"
            )
        table = raw.table(TABLE, dtype=str, keep_default_na=False)
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"WTC-11: {table_path} lacks column(s) {missing}; has {list(table.columns)}")
        units: dict[str, Unit] = {}
        skipped: list[Skipped] = []
        first_row: dict[str, int] = {}
        for row, rec in enumerate(table.to_dict("records")):
            cell_id = str(rec["CellId"]).strip()
            unit_id = f"cell-{safe_id(cell_id, 75)}"
            if not cell_id:
                skipped.append(Skipped(self.key, f"row-{row}", "empty CellId", table_path, row))
            elif cell_id in first_row:
                skipped.append(
                    Skipped(
                        self.key,
                        unit_id,
                        f"duplicate CellId {cell_id} (first at row {first_row[cell_id]})",
                        table_path,
                        row,
                    )
                )
            elif rec["cell_stage"] not in STAGES:
                skipped.append(
                    Skipped(
                        self.key,
                        unit_id,
                        f"unknown label cell_stage={rec['cell_stage']!r}; valid: {', '.join(STAGES)}",
                        table_path,
                        row,
                    )
                )
            else:
                first_row[cell_id] = row
                units[unit_id] = Unit(
                    self.key,
                    unit_id,
                    {
                        "row": row,
                        "table": table_path,
                        "root": raw.url,
                        **{k: str(v) for k, v in rec.items()},
                    },
                )
        return Discovery([units[k] for k in sorted(units)], skipped, found={"cells": len(table)})

    def unit_files(self, unit: Unit) -> list[str]:
        """The one object a unit reads (fetched ahead of its processing on an object store)."""
        return [unit.payload["crop_raw"]]

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        row = p["row"]
        raw = raw_input(p["root"])
        path = raw.full(p["crop_raw"])
        try:
            source = raw.fetch(p["crop_raw"])
        except FileNotFoundError as exc:
            if getattr(exc, "missing", True):
                raise UnitSkip(
                    f"missing file: crop_raw {p['crop_raw']!r} does not exist", path, row
                ) from None
            raise UnitSkip(f"unreadable crop_raw: {exc}", path, row) from None
        try:
            stack, names, sizes = read_ome(source, int(opts["max_stack_voxels"]), raw.name(p["crop_raw"]))
        except ImageTooLarge as exc:
            raise UnitSkip(str(exc), path, row) from None
        except Exception as exc:  # truncated / corrupt TIFF, bad OME-XML
            raise UnitSkip(f"unreadable OME-TIFF ({type(exc).__name__}: {exc})", path, row) from None
        try:
            expected = list(_parse_listish(p["name_dict"], "name_dict")["crop_raw"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UnitSkip(f"bad name_dict ({exc})", p["table"], row) from None
        target = SOURCES[self.key].channels
        if stack.shape[1] != len(target) or len(names) != stack.shape[1]:
            raise UnitSkip(
                f"wrong channel count: image has {stack.shape[1]} channels (OME names {names}), "
                f"expected {len(target)} like name_dict crop_raw {expected}",
                path,
                row,
            )
        if names != expected:
            raise UnitSkip(
                f"channel names in OME metadata {names} != name_dict crop_raw {expected}", path, row
            )
        self._check_pixel_size(p, sizes, opts, path, row)
        mapping = opts["channel_map"]
        try:
            order = [names.index(next(n for n, t in mapping.items() if t == ch)) for ch in target]
        except (StopIteration, ValueError):
            raise UnitSkip(
                f"channels {names} cannot be mapped to {list(target)} with {mapping}", path, row
            ) from None
        try:
            check_finite(stack, "crop_raw")
        except ValueError as exc:
            raise UnitSkip(f"non-finite pixels: {exc}", path, row) from None
        proj = stack.max(axis=0)[order]  # (C, Y, X): project first, then reorder (no copy of the stack)
        try:
            img = to_uint8(proj, opts["low_pct"], opts["high_pct"], axis=0, where="crop_raw max projection")
        except ValueError as exc:  # "constant image (channel k): ..."
            raise UnitSkip(str(exc), path, row) from None
        img, scale = self._fit(img, opts["fit"])
        meta = {
            "CellId": p["CellId"],
            "structure_name": p["structure_name"],
            "cell_stage": p["cell_stage"],
            "FOVId": p["FOVId"],
            "PlateId": p["PlateId"],
            "WellId": p["WellId"],
            "crop_raw": p["crop_raw"],
            "row": row,
            "shape_zcyx": list(stack.shape),
            "physical_size_zyx": list(sizes),
            "scale": scale,
        }
        cell = Cell(
            image=img,
            channels=target,
            source=self.key,
            label=p["cell_stage"],
            cell_id=make_cell_id(self.key, p["CellId"]),
            meta=meta,
            groups={"Structure": p["structure_name"]},
        )
        return UnitResult([cell])

    @staticmethod
    def _check_pixel_size(p: dict[str, Any], sizes: tuple, opts: dict[str, Any], path: str, row: int) -> None:
        """PhysicalSizeZ/Y/X must agree with ``scale_micron`` (a number or a list) when both are given."""
        text = p.get("scale_micron", "")
        if not text or all(s is None for s in sizes):
            return
        try:
            scale = _parse_listish(text, "scale_micron")
        except ValueError as exc:
            raise UnitSkip(str(exc), p["table"], row) from None
        values = [float(v) for v in (scale if isinstance(scale, list | tuple) else [scale] * 3)]
        tol = float(opts["pixel_size_tolerance"])
        for axis, got, want in zip("ZYX", sizes, values[-3:], strict=False):
            if got is not None and abs(got - want) > tol * max(abs(want), 1e-12):
                raise UnitSkip(
                    f"PhysicalSize{axis}={got} um in OME metadata != scale_micron {values} "
                    f"(tolerance {tol:.0%})",
                    path,
                    row,
                )

    def _fit(self, img: np.ndarray, fit: str) -> tuple[np.ndarray, float]:
        th, tw = SOURCES[self.key].tile_hw
        scale = 1.0
        if fit == "scale_to_fit":
            scale = min(1.0, th / img.shape[1], tw / img.shape[2])
            if scale < 1.0:
                shape = (
                    img.shape[0],
                    max(1, round(img.shape[1] * scale)),
                    max(1, round(img.shape[2] * scale)),
                )
                img = (
                    np.rint(
                        resize(
                            img.astype(np.float64), shape, order=1, anti_aliasing=True, preserve_range=True
                        )
                    )
                    .clip(0, 255)
                    .astype(np.uint8)
                )
        return center_crop_or_pad(img, (th, tw), fill=0), scale

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        from pipelines.sources.wtc11.synth import write_sample

        write_sample(Path(out_dir), seed, stages=STAGES)
