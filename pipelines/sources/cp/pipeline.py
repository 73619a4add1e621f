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
``mixed_bit_depth`` (skip | allow), ``dataset`` and ``images_root`` (the Gallery's layout), ``plates`` (the
plate barcodes to build; others are neither read nor counted). Accounting: plates, sites (rows of the plates'
tables), cells (nucleus positions of the sites used).
"""

from __future__ import annotations

import os
import posixpath
from contextlib import ExitStack
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
from pipelines.sources.cp.illum import illuminate
from pipelines.steps.imaging import BORDER_POLICIES, crop_box, to_uint8
from pipelines.steps.rawinput import RawInput, as_raw_input, raw_input
from pipelines.steps.rawio import (
    FieldMismatch,
    ImageHeader,
    ImageTooLarge,
    check_field,
    check_size,
)

CHANNELS: tuple[str, ...] = SOURCES["cp"].channels
assert tuple(lay.RAW_TO_VOCAB[c] for c in lay.RAW_CHANNELS) == CHANNELS, "cp_layout channel order drifted"

POSITIONS = ("auto", "site_csv", "plate_csv", "sqlite", "segment")
MIXED_BIT_DEPTH = ("skip", "allow")


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
        # dataset name of every plate (groups["dataset"]); None: the folder holding platemaps/, or for the
        # Gallery's layout the project's (layout.GALLERY_DATASETS), else the project folder's name
        "dataset": None,
        # where a Gallery project's images are; None: <project>/<source>/images beside the workspace
        "images_root": None,
        # plate barcodes to build (a list); None: every plate found. Others are not read (nor counted)
        "plates": None,
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
    def discover(self, input_dir: Any, opts: dict[str, Any]) -> Discovery:
        """One unit per usable site; plates and sites that cannot be used are returned as skipped.

        The input is listed once (every file, relative paths) and only its tables are read. Accounting: plates
        (folders found; a plate whose tables cannot be read is skipped as a whole, its sites uncounted) and
        sites (rows of the readable plates' tables).
        """
        raw = as_raw_input(input_dir)
        if raw.is_local and not os.path.isdir(raw.url):
            raise FileNotFoundError(f"Cell Painting input folder not found: {raw.url}")
        wanted = {str(p) for p in opts["plates"]} if opts["plates"] else None
        listing = lay.gallery_listing(raw, wanted)
        if listing is None:
            listing = set(raw.list_files())
        if not listing and not raw.is_local:
            raise FileNotFoundError(f"Cell Painting input {raw.url}: no files there")
        units: dict[str, Unit] = {}
        skipped: list[Skipped] = []
        plates = [d for d in lay.plate_dirs(listing) if wanted is None or posixpath.basename(d) in wanted]
        n_sites = 0
        for pdir in plates:
            plate_unit = f"cp-plate-{safe_id(pdir)}"
            table = lay.plate_table(pdir, listing)
            gallery = lay.gallery_plate(pdir)
            images_root = lay.gallery_images_root(raw, gallery, opts["images_root"])
            try:
                if table is not None:
                    sites = lay.read_load_data(raw, table, listing, images_root)
                else:
                    images = posixpath.join(pdir, "images")
                    sites = lay.sites_from_filenames(
                        images, posixpath.basename(pdir), opts["phenix_channels"], listing
                    )
                    if not sites:
                        raise lay.LayoutError(
                            f"{raw.path(images)}: no load_data.csv and no ImageXpress file names (or Phenix "
                            "names with config phenix_channels) to read the sites from"
                        )
                pm_dir = lay.find_platemaps(pdir, listing)
                if pm_dir is None:
                    raise lay.LayoutError(
                        f"{raw.path(pdir)}: no platemaps/barcode_platemap.csv in this folder or above it"
                    )
                maps: dict[str, tuple[dict[str, lay.WellInfo], str]] = {}
                for plate in sorted({site.plate for site in sites}):
                    maps[plate] = lay.read_platemap(raw, pm_dir, plate)
            except (lay.LayoutError, OSError, pd.errors.ParserError) as exc:
                skipped.append(Skipped(self.key, plate_unit, str(exc), file=table or pdir, kind="plates"))
                continue
            n_sites += len(sites)
            dataset = lay.plate_dataset(raw, pm_dir, gallery, opts["dataset"])
            extra = lay.gallery_extras(raw, gallery, images_root if opts["illum"] else None)
            for site in sites:
                unit = self._site_unit(site, pdir, raw, dataset, maps[site.plate], opts, listing, extra)
                if isinstance(unit, Skipped):
                    skipped.append(unit)
                elif unit.unit_id in units:
                    skipped.append(
                        Skipped(
                            self.key,
                            unit.unit_id,
                            "duplicate site: the same plate/well/site appears twice",
                            file=site.table,
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
        pdir: str,
        raw: RawInput,
        dataset: str,
        platemap: tuple[dict[str, lay.WellInfo], str],
        opts: dict[str, Any],
        listing: set[str],
        extra: dict[str, Any] | None = None,
    ) -> Unit | Skipped:
        unit_id = f"cp-{safe_id(dataset)}-{safe_id(site.plate)}-{site.well}-s{site.site}"
        where = {"file": site.table, "row": site.row}
        if site.problems:
            return Skipped(self.key, unit_id, "; ".join(site.problems), **where)
        wells, map_file = platemap
        info = wells.get(site.well)
        if info is None:
            return Skipped(
                self.key,
                unit_id,
                f"well {site.well} of plate {site.plate} is not in platemap {map_file}",
                **where,
            )
        extra = extra or {}
        illum = {}
        if opts["illum"]:
            for ch in lay.RAW_CHANNELS:
                cand = posixpath.join(pdir, "illum", f"{site.plate}_Illum{ch}.npy")
                if cand in listing:
                    illum[ch] = cand
            illum.update(extra.get("illum", {}))
            illum.update(site.illum)  # the row's own columns win
        try:
            positions = cp_positions.positions_source(
                pdir, site.plate, site.well, site.site, opts["positions"], listing, extra.get("also", ())
            )
        except lay.LayoutError as exc:
            return Skipped(self.key, unit_id, str(exc), **where)
        return Unit(
            self.key,
            unit_id,
            {
                "root": raw.url,
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

    def unit_files(self, unit: Unit) -> list[str]:
        """The objects a site reads: its five channel files and a per-site positions table (fetched ahead of
        its processing on an object store; plate-wide tables are read once per worker)."""
        p = unit.payload
        files = [p["files"][ch] for ch in lay.RAW_CHANNELS]
        if p["positions"]["kind"] == "site_csv":
            files.append(p["positions"]["path"])
        return files

    # ---------------------------------------------------------------------------------------------- process
    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        """Read, correct, scale, locate nuclei and crop one site. Raises :class:`UnitSkip` for an unusable
        site."""
        p = unit.payload
        root = raw_input(p["root"])
        field, depths = self._read_field(p, root, opts)
        field = illuminate(field, p["illum"], root)
        img8 = np.empty((len(field), *field[0].shape), dtype=np.uint8)
        for k, ch in enumerate(lay.RAW_CHANNELS):
            try:
                img8[k] = to_uint8(field[k], opts["low_pct"], opts["high_pct"], where=f"channel {ch}")
            except ValueError as exc:  # constant channel or NaN/inf after correction
                raise UnitSkip(str(exc), root.display(p["files"][ch]), p["row"]) from None
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
                "file": root.display(p["files"]["DNA"]),
                "files": {ch: root.display(f) for ch, f in p["files"].items()},
                "load_data": root.display(p["table"]),
                "row": p["row"],
                "platemap": root.display(p["platemap"]),
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
        self, p: dict[str, Any], root: RawInput, opts: dict[str, Any]
    ) -> tuple[list[np.ndarray], dict[str, int]]:
        """The 5 (H, W) planes in RAW_CHANNELS order, in the files' own dtype, and each file's bit depth.

        Every file's header is checked before any is decoded: all five present (the skip names every missing
        one), within ``max_field_pixels``, one plane each, of one size (the skip names each differing file and
        its size) and of one bit depth unless ``mixed_bit_depth`` is ``allow`` (the skip names each file's
        depth). Integer planes stay integer so that ``to_uint8`` takes its exact histogram path (a partial
        sort of a float copy costs more than reading the TIFFs); only illumination correction makes a plane
        float.
        """
        rel = {ch: root.display(p["files"][ch]) for ch in lay.RAW_CHANNELS}
        name = {ch: f"{ch} ({posixpath.basename(r)})" for ch, r in rel.items()}
        sources: dict[str, Any] = {}
        missing = []
        for ch in lay.RAW_CHANNELS:
            try:
                sources[ch] = root.fetch(p["files"][ch])
            except FileNotFoundError as exc:
                if not getattr(exc, "missing", True):  # refused, not missing: say so
                    raise UnitSkip(f"unreadable {ch} image: {exc}", rel[ch], p["row"]) from None
                missing.append(ch)
        if missing:
            raise UnitSkip(
                f"missing channel file(s): {', '.join(name[k] for k in missing)}", rel[missing[0]], p["row"]
            )
        with ExitStack() as stack:
            tiffs, shapes, depths = {}, {}, {}
            for ch in lay.RAW_CHANNELS:
                try:
                    tiffs[ch] = stack.enter_context(tifffile.TiffFile(sources[ch]))
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

    def _positions(
        self,
        p: dict[str, Any],
        field: list[np.ndarray],
        opts: dict[str, Any],
        root: RawInput,
    ) -> tuple[list[tuple[int, float, float]], list[tuple[str, str]], str]:
        """[(object number, x, y)] in field pixels, [(row, reason)] of position rows without coordinates, and
        the file they came from ('segmentation:DNA' for segmentation)."""
        spec = p["positions"]
        if spec["kind"] != "segment":
            rel = root.display(spec["path"])
            try:
                found, dropped = cp_positions.read_positions(spec, p["plate"], p["well"], p["site"], root)
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
                root.display(p["files"]["DNA"]),
                p["row"],
            )
        return [(int(r["label"]), r["centroid"][1], r["centroid"][0]) for r in props], [], "segmentation:DNA"

    def synth(self, out_dir: Path, seed: int = 0, *, field_size: int = 512) -> None:
        """Write the synthetic Cell Painting sample (7 plates, 3 datasets): see
        :mod:`pipelines.sources.cp.synth`."""
        from pipelines.sources.cp.synth import write_sample

        write_sample(Path(out_dir), seed, field_size=field_size)
