"""Cell Painting (LINCS, CDRP, BBBC022) -> CHAMMI CP cells: one unit per site (plate, well, site).

Raw layout (tables and file names): :mod:`pipelines.sources.cp.layout`; nucleus positions:
:mod:`pipelines.sources.cp.positions`. Per site:

1. read the five channel TIFFs (16-bit expected; 8-bit or float are accepted and recorded in ``meta``),
   their headers checked before decoding: each 2-D, within ``max_field_pixels``, all the same shape and,
   unless ``mixed_bit_depth: allow``, the same bit depth;
2. divide by the plate's illumination function of each channel when ``illum/<plate>_Illum<Ch>.npy`` exists
   (must be finite, positive and of the field's shape);
3. per channel, clip to the ``low_pct`` / ``high_pct`` percentiles (0.05 / 99.95, the DeepProfiler export)
   and scale to 8-bit (:func:`pipelines.steps.imaging.to_uint8`);
4. nucleus centres from the per-site ``Nuclei.csv``, else the per-plate ``Nuclei.csv``, else the plate
   SQLite, else (fallback) the default segmentation of the DNA channel; a position row without coordinates
   is listed as skipped;
5. a ``box`` x ``box`` (160) crop centred on each nucleus. Border policy ``border`` (default ``"pad"``: the
   box stays centred on the nucleus and the part outside the field is zero, as DeepProfiler pads the field;
   ``"shift"`` moves the box inside; ``"skip"`` drops the cell and lists it as skipped).

Cells are (5, 160, 160) uint8 in the order nucleus (DNA), er (ER), rna (RNA), golgi (AGP), mito (Mito).
Label = first 13 characters of the platemap's ``broad_sample`` (empty = ``DMSO``); groups ``Plate`` and
``dataset``; split and tasks come from ``manifests/tasks/cp.yaml``.

Options (``config["cp"]``, all optional): ``low_pct``, ``high_pct``, ``box``,
``border``, ``positions`` (auto | site_csv | plate_csv | sqlite | segment), ``illum`` (bool),
``phenix_channels`` ({ch number: DNA|ER|RNA|AGP|Mito} for plates without load_data.csv),
``segment_backend`` and ``segment_options`` (fallback segmentation), ``max_field_pixels`` (10000 x 10000),
``mixed_bit_depth`` (skip | allow). Accounting: plates, sites (rows of the plates' tables), cells (nucleus
positions of the sites used).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

import pipelines.sources.cp.layout as lay
import pipelines.sources.cp.positions as cp_positions
from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit, UnitResult, UnitSkip, safe_id
from pipelines.steps.imaging import BORDER_POLICIES, crop_box, to_uint8
from pipelines.steps.rawio import (
    FieldMismatch,
    ImageHeader,
    ImageTooLarge,
    check_field,
    check_size,
    missing_files,
)

CHANNELS: tuple[str, ...] = SOURCES["cp"].channels
assert tuple(lay.RAW_TO_VOCAB[c] for c in lay.RAW_CHANNELS) == CHANNELS, "cp_layout channel order drifted"

POSITIONS = ("auto", "site_csv", "plate_csv", "sqlite", "segment")
MIXED_BIT_DEPTH = ("skip", "allow")


def _rel(path: str | Path, root: Path) -> str:
    """Path relative to the input root when inside it (so provenance does not depend on where data sits)."""
    return _rel_cached(str(path), str(root))


@lru_cache(maxsize=65536)
def _rel_cached(path: str, root: str) -> str:
    # Cached: resolve() is a realpath walk (syscalls per component) and a site names each file several times.
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return path


def plate_dirs(root: Path) -> list[Path]:
    """Plate folders under ``root``: those with ``load_data.csv``, or with an ``images/`` folder and no
    table."""
    found = {p.parent for p in root.rglob("load_data.csv")}
    found |= {
        p.parent for p in root.rglob("images") if p.is_dir() and not (p.parent / "load_data.csv").exists()
    }
    return sorted(found)


@lru_cache(maxsize=5)
def _illum_function(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """A plate's illumination function as read-only float64, cached per worker for the plate's 5 channels.

    Every site of a plate divides by the same 5 functions (a real one is 2160 x 2160 float: 37 MB); units are
    sorted by plate, so consecutive sites on a worker hit the cache. (mtime, size) in the key: a changed file
    is read again.
    """
    fn = np.squeeze(np.load(path, allow_pickle=False)).astype(np.float64)
    fn.setflags(write=False)
    return fn


class CPPipeline(SourcePipeline):
    """Cell Painting plates -> 5-channel 160 x 160 single-cell crops labelled by compound."""

    name = "cp"
    key = "cp"
    makes = ("cp",)
    unit_kind = "sites"
    units_per_task = 3  # sites per dask task
    DEFAULTS = {
        "low_pct": 0.05,
        "high_pct": 99.95,
        "box": 160,
        "border": "pad",
        "positions": "auto",  # see POSITIONS
        "illum": True,
        "phenix_channels": None,
        "segment_backend": "watershed",
        "segment_options": {},
        "max_field_pixels": 10_000 * 10_000,
        "mixed_bit_depth": "skip",  # see MIXED_BIT_DEPTH
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["border"] not in BORDER_POLICIES:
            raise ValueError(f"cp border policy {opts['border']!r}; valid: {', '.join(BORDER_POLICIES)}")
        if opts["positions"] not in POSITIONS:
            raise ValueError(f"cp positions {opts['positions']!r}; valid: {', '.join(POSITIONS)}")
        if opts["mixed_bit_depth"] not in MIXED_BIT_DEPTH:
            raise ValueError(
                f"cp mixed_bit_depth {opts['mixed_bit_depth']!r}; valid: {', '.join(MIXED_BIT_DEPTH)}"
            )
        if opts["phenix_channels"]:
            opts["phenix_channels"] = {int(k): str(v) for k, v in opts["phenix_channels"].items()}

    # --------------------------------------------------------------------------------------------- discover
    def discover(self, input_dir: Path, opts: dict[str, Any]) -> Discovery:
        """One unit per usable site; plates and sites that cannot be used are returned as skipped.

        Accounting: plates (folders found; a plate whose tables cannot be read is skipped as a whole, its
        sites uncounted) and sites (rows of the readable plates' tables).
        """
        root = Path(input_dir).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"Cell Painting input folder not found: {root}")
        units: dict[str, Unit] = {}
        skipped: list[Skipped] = []
        plates = plate_dirs(root)
        n_sites = 0
        for pdir in plates:
            plate_unit = f"cp-plate-{safe_id(_rel(pdir, root))}"
            table = pdir / "load_data.csv"
            try:
                if table.is_file():
                    sites = lay.read_load_data(table)
                else:
                    sites = lay.sites_from_filenames(pdir / "images", pdir.name, opts["phenix_channels"])
                    if not sites:
                        raise lay.LayoutError(
                            f"{pdir / 'images'}: no load_data.csv and no ImageXpress file names (or Phenix "
                            "names "
                            "with config phenix_channels) to read the sites from"
                        )
                pm_dir = lay.find_platemaps(pdir, root)
                if pm_dir is None:
                    raise lay.LayoutError(
                        f"{pdir}: no platemaps/barcode_platemap.csv in this folder or above it"
                    )
                maps: dict[str, tuple[dict[str, lay.WellInfo], str]] = {}
                for plate in sorted({site.plate for site in sites}):
                    maps[plate] = lay.read_platemap(pm_dir, plate)
            except (lay.LayoutError, OSError, pd.errors.ParserError) as exc:
                skipped.append(
                    Skipped(
                        self.key,
                        plate_unit,
                        str(exc),
                        file=_rel(table if table.is_file() else pdir, root),
                        kind="plates",
                    )
                )
                continue
            n_sites += len(sites)
            dataset = pm_dir.parent.name
            for site in sites:
                unit = self._site_unit(site, pdir, root, dataset, maps[site.plate], opts)
                if isinstance(unit, Skipped):
                    skipped.append(unit)
                elif unit.unit_id in units:
                    skipped.append(
                        Skipped(
                            self.key,
                            unit.unit_id,
                            "duplicate site: the same plate/well/site appears twice",
                            file=_rel(site.table, root),
                            row=site.row,
                        )
                    )
                else:
                    units[unit.unit_id] = unit
        n_plate_skips = sum(1 for s in skipped if s.kind == "plates")
        return Discovery(
            [units[k] for k in sorted(units)],
            skipped,
            found={"plates": len(plates), "sites": n_sites},
            used={"plates": len(plates) - n_plate_skips},
        )

    def _site_unit(
        self,
        site: lay.SiteRow,
        pdir: Path,
        root: Path,
        dataset: str,
        platemap: tuple[dict[str, lay.WellInfo], str],
        opts: dict[str, Any],
    ) -> Unit | Skipped:
        unit_id = f"cp-{safe_id(dataset)}-{safe_id(site.plate)}-{site.well}-s{site.site}"
        where = {"file": _rel(site.table, root), "row": site.row}
        if site.problems:
            return Skipped(self.key, unit_id, "; ".join(site.problems), **where)
        wells, map_file = platemap
        info = wells.get(site.well)
        if info is None:
            return Skipped(
                self.key,
                unit_id,
                f"well {site.well} of plate {site.plate} is not in platemap {_rel(map_file, root)}",
                **where,
            )
        illum = {}
        if opts["illum"]:
            for ch in lay.RAW_CHANNELS:
                p = pdir / "illum" / f"{site.plate}_Illum{ch}.npy"
                if p.is_file():
                    illum[ch] = str(p)
        try:
            positions = cp_positions.positions_source(
                pdir, site.plate, site.well, site.site, opts["positions"]
            )
        except lay.LayoutError as exc:
            return Skipped(self.key, unit_id, str(exc), **where)
        return Unit(
            self.key,
            unit_id,
            {
                "root": str(root),
                "dataset": dataset,
                "plate": site.plate,
                "well": site.well,
                "site": site.site,
                "files": site.files,
                "table": site.table,
                "row": site.row,
                "illum": illum,
                "positions": positions,
                "broad_sample": info.broad_sample,
                "mmoles_per_liter": info.mmoles_per_liter,
                "solvent": info.solvent,
                "label": info.label,
                "platemap": map_file,
            },
        )

    # ---------------------------------------------------------------------------------------------- process
    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        """Read, correct, scale, locate nuclei and crop one site. Raises :class:`UnitSkip` for an unusable
        site."""
        p = unit.payload
        root = Path(p["root"])
        field, depths = self._read_field(p, root, opts)
        field = self._illuminate(field, p, root)
        img8 = np.empty((len(field), *field[0].shape), dtype=np.uint8)
        for k, ch in enumerate(lay.RAW_CHANNELS):
            try:
                img8[k] = to_uint8(field[k], opts["low_pct"], opts["high_pct"], where=f"channel {ch}")
            except ValueError as exc:  # constant channel or NaN/inf after correction
                raise UnitSkip(str(exc), _rel(p["files"][ch], root), p["row"]) from None
        centres, dropped, pos_file = self._positions(p, field, opts, root)
        h, w = field[0].shape
        cells: list[Cell] = []
        skipped = [
            Skipped(self.key, unit.unit_id, reason, file=pos_file, row=where) for where, reason in dropped
        ]
        box = int(opts["box"])
        for obj, x, y in centres:
            if not (0 <= x < w and 0 <= y < h):
                skipped.append(
                    Skipped(
                        self.key,
                        unit.unit_id,
                        f"nucleus {obj} at (x={x:.1f}, y={y:.1f}) is outside the {w}x{h} field",
                        file=pos_file,
                        row=f"ObjectNumber {obj}",
                    )
                )
                continue
            crop, info = crop_box(img8, (y, x), (box, box), opts["border"])
            if crop is None:
                skipped.append(
                    Skipped(
                        self.key,
                        unit.unit_id,
                        f"nucleus {obj}: {box}x{box} box reaches past the field border (border policy skip)",
                        file=pos_file,
                        row=f"ObjectNumber {obj}",
                    )
                )
                continue
            meta = {
                "plate": p["plate"],
                "well": p["well"],
                "site": p["site"],
                "dataset": p["dataset"],
                "broad_sample": p["broad_sample"],
                "mmoles_per_liter": p["mmoles_per_liter"],
                "solvent": p["solvent"],
                "object_number": obj,
                "nucleus_x": round(x, 3),
                "nucleus_y": round(y, 3),
                "positions": p["positions"]["kind"],
                "positions_file": pos_file,
                "file": _rel(p["files"]["DNA"], root),
                "files": {ch: _rel(f, root) for ch, f in p["files"].items()},
                "load_data": _rel(p["table"], root),
                "row": p["row"],
                "platemap": _rel(p["platemap"], root),
                "illum": bool(p["illum"]),
                "bit_depth": max(depths.values()),
                "field_hw": [h, w],
                "touched_border": info.touched_border,
                "border_policy": opts["border"],
            }
            if len(set(depths.values())) > 1:  # mixed_bit_depth: allow
                meta["channel_bit_depths"] = depths
            cells.append(
                Cell(
                    image=crop,
                    channels=CHANNELS,
                    source=self.key,
                    label=p["label"],
                    cell_id=make_cell_id(self.key, p["dataset"], p["plate"], p["well"], p["site"], obj),
                    meta=meta,
                    groups={"Plate": p["plate"], "dataset": p["dataset"]},
                )
            )
        if not cells and not skipped:
            raise UnitSkip("site has no nuclei", pos_file, p["row"])
        return UnitResult(cells, skipped, found={"cells": len(centres) + len(dropped)})

    def _read_field(
        self, p: dict[str, Any], root: Path, opts: dict[str, Any]
    ) -> tuple[list[np.ndarray], dict[str, int]]:
        """The 5 (H, W) planes in RAW_CHANNELS order, in the files' own dtype, and each file's bit depth.

        Every file's header is checked before any is decoded: all five present (the skip names every missing
        one), within ``max_field_pixels``, one plane each, of one size (the skip names each differing file and
        its size) and of one bit depth unless ``mixed_bit_depth`` is ``allow`` (the skip names each file's
        depth). Integer planes stay integer so that ``to_uint8`` takes its exact histogram path (a partial
        sort of a float copy costs more than reading the TIFFs); only illumination correction makes a plane
        float.
        """
        files = {ch: Path(p["files"][ch]) for ch in lay.RAW_CHANNELS}
        rel = {ch: _rel(f, root) for ch, f in files.items()}
        name = {ch: f"{ch} ({Path(r).name})" for ch, r in rel.items()}
        missing = missing_files(files, name)
        if missing:
            raise UnitSkip(missing[0], rel[missing[1]], p["row"])
        with ExitStack() as stack:
            tiffs, shapes, depths = {}, {}, {}
            for ch in lay.RAW_CHANNELS:
                try:
                    tiffs[ch] = stack.enter_context(tifffile.TiffFile(files[ch]))
                    series = tiffs[ch].series[0]
                    header = ImageHeader.of_series(series)
                    dtype = np.dtype(series.dtype)
                except Exception as exc:  # truncated or not a TIFF: tifffile raises several kinds
                    raise UnitSkip(
                        f"unreadable {ch} image ({type(exc).__name__}: {exc})", rel[ch], p["row"]
                    ) from None
                try:
                    check_size(
                        header, int(opts["max_field_pixels"]), Path(rel[ch]).name, "cp.max_field_pixels"
                    )
                except ImageTooLarge as exc:
                    raise UnitSkip(str(exc), rel[ch], p["row"]) from None
                shapes[ch] = tuple(n for n in header.shape if n != 1)
                if len(shapes[ch]) != 2:
                    raise UnitSkip(
                        f"{ch} image must be 2-D (one plane per channel per site), got shape {shapes[ch]}",
                        rel[ch],
                        p["row"],
                    )
                if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
                    raise UnitSkip(f"{ch} image has unsupported dtype {dtype}", rel[ch], p["row"])
                depths[ch] = header.bits
            try:
                check_field(
                    shapes, depths, name, "DNA", opts["mixed_bit_depth"] == "allow", "cp.mixed_bit_depth"
                )
            except FieldMismatch as err:
                raise UnitSkip(str(err), rel[err.key], p["row"]) from None
            planes = []
            for ch in lay.RAW_CHANNELS:
                try:
                    planes.append(np.squeeze(tiffs[ch].asarray()))
                except Exception as exc:  # damaged image data behind a good header
                    raise UnitSkip(
                        f"unreadable {ch} image ({type(exc).__name__}: {exc})", rel[ch], p["row"]
                    ) from None
        return planes, depths

    def _illuminate(self, field: list[np.ndarray], p: dict[str, Any], root: Path) -> list[np.ndarray]:
        """Divide each channel by its illumination function (CellProfiler convention), in float64.

        An integer plane is rounded back to integers after the division (to the nearest count, the precision
        the camera gave; values stay non-negative), so that the percentile clip keeps its exact histogram path
        instead of sorting a float copy (much slower): the 8-bit result moves by at most one grey level on
        rare pixels. Float planes stay float.
        """
        if not p["illum"]:
            return field
        out = list(field)
        for k, ch in enumerate(lay.RAW_CHANNELS):
            path = p["illum"].get(ch)
            if path is None:
                continue
            rel = _rel(path, root)
            try:
                st = os.stat(path)
                fn = _illum_function(str(path), st.st_mtime_ns, st.st_size)
            except Exception as exc:
                raise UnitSkip(
                    f"unreadable illumination function {ch} ({type(exc).__name__}: {exc})", rel
                ) from None
            if fn.shape != field[k].shape:
                raise UnitSkip(
                    f"illumination function {ch} has shape {fn.shape}, field is {field[k].shape}", rel
                )
            if not np.all(np.isfinite(fn)):
                raise UnitSkip(f"illumination function {ch} holds NaN/inf", rel)
            if np.any(fn <= 0):
                raise UnitSkip(f"illumination function {ch} has values <= 0 (cannot divide)", rel)
            corrected = field[k].astype(np.float64) / fn
            if np.issubdtype(field[k].dtype, np.integer) and corrected.min() >= 0 and corrected.max() < 2**31:
                corrected = np.rint(corrected).astype(np.int32)
            out[k] = corrected
        return out

    def _positions(
        self,
        p: dict[str, Any],
        field: list[np.ndarray],
        opts: dict[str, Any],
        root: Path,
    ) -> tuple[list[tuple[int, float, float]], list[tuple[str, str]], str]:
        """[(object number, x, y)] in field pixels, [(row, reason)] of position rows without coordinates, and
        the file they came from ('segmentation:DNA' for segmentation)."""
        spec = p["positions"]
        if spec["kind"] != "segment":
            rel = _rel(spec["path"], root)
            try:
                found, dropped = cp_positions.read_positions(spec, p["plate"], p["well"], p["site"])
            except (lay.LayoutError, OSError, ValueError, pd.errors.ParserError) as exc:
                raise UnitSkip(f"cannot read nucleus positions ({exc})", rel, p["row"]) from None
            if not found:
                extra = f" ({len(dropped)} row(s) without coordinates)" if dropped else ""
                raise UnitSkip(f"site has no nuclei in {spec['kind']} positions{extra}", rel, p["row"])
            return found, dropped, rel
        from pipelines.steps.segmentation import cell_properties, segment  # lazy: only the fallback needs it

        seg = segment(field[0], None, backend=opts["segment_backend"], **(opts["segment_options"] or {}))
        labels = seg.nuclei if seg.nuclei is not None else seg.cells
        props = cell_properties(labels)
        if not props:
            raise UnitSkip(
                "site has no nuclei (segmentation of the DNA channel found none)",
                _rel(p["files"]["DNA"], root),
                p["row"],
            )
        return [(int(r["label"]), r["centroid"][1], r["centroid"][0]) for r in props], [], "segmentation:DNA"

    def synth(self, out_dir: Path, seed: int = 0, *, field_size: int = 512) -> None:
        """Write the synthetic Cell Painting sample (7 plates, 3 datasets): see
        :mod:`pipelines.sources.cp.synth`."""
        from pipelines.sources.cp.synth import write_sample

        write_sample(Path(out_dir), seed, field_size=field_size)
