"""HPA (Human Protein Atlas) fields -> 512 x 512 single-cell crops.

Input folder (``--input DIR``: a path or any location, e.g. an HTTPS server or a bucket; the tables are read
on the client and each field's four images by the worker that processes it, see
:mod:`pipelines.steps.rawinput`):

- field images ``{ID}_{red,green,blue,yellow}.png`` (8- or 16-bit grayscale, any size), in ``DIR`` or
  ``DIR/train``; red = microtubules, green = protein of interest, blue = nucleus, yellow = ER;
- ``train.csv``: ``ID, Label`` with pipe-separated class indices 0..18;
- a cell-line table (``kaggle_2021.tsv`` style: ``Image, Label, Cellline, in_trainset``). ``Image`` matches
  ``ID`` exactly, or as its last path/URL component (extension and trailing ``_`` removed), or as its
  last two components joined by ``_`` (see :func:`_image_keys`).

Selection: single-label images of the 7 CHAMMI classes. Other rows are skipped and counted with their
``train.csv`` row number (1 = first data row): ``multi-label``, ``class not in CHAMMI``, ``unknown label``,
``duplicate ID``, ``no cell line``. One work unit = one field.

Per field: read the four PNGs (missing, unreadable or truncated file, non-grayscale, size mismatch,
constant channel -> the field is skipped), segment cells (``pipelines.steps.segmentation``, default the
weight-free nuclei-seeded watershed on nucleus + microtubules/ER/protein), scale each channel to 8 bit
(16-bit: percentile clip ``low_pct``/``high_pct`` with ``imaging.to_uint8``; 8-bit: kept as is) and cut one
512 x 512 crop centred on each cell's centroid, channels microtubules, protein, nucleus, er.

Border policy (option ``border``, default ``"pad"``): a box that reaches past the field keeps the cell
centred and is zero-padded (``"pad"``), or is moved inside the field so the cell is off-centre
(``"shift"``), or the cell is dropped and counted as skipped (``"skip"``). Every cell records
``crop_touched_border`` (its centred box left the field) and ``cell_touches_edge`` (its mask touches the
field edge, i.e. the cell may be cut off). Masking of neighbouring cells (``mask_neighbours``) is OFF by
default, as in the published crops: neighbours stay visible; when on, pixels of other cells are zeroed.

Options (``config["hpa"]``, all optional): :attr:`HPAPipeline.DEFAULTS`, each default with what it means.
Accounting: fields (rows of the labels table), then cells (segmented in the fields used). Synthetic sample
data: :mod:`pipelines.sources.hpa.synth`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import SOURCES
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit, UnitResult, UnitSkip, safe_id
from pipelines.steps.imaging import BORDER_POLICIES, crop_box, to_uint8
from pipelines.steps.rawinput import RawInput, as_raw_input, raw_input
from pipelines.steps.rawio import (
    FieldMismatch,
    ImageHeader,
    ImageTooLarge,
    Source,
    check_field,
    check_size,
    image_header,
)
from pipelines.steps.segmentation import cell_properties, segment

#: The 19 HPA classes by index (the class indices of ``train.csv`` ``Label``).
HPA_CLASSES: tuple[str, ...] = (
    "Nucleoplasm",
    "Nuclear membrane",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nuclear speckles",
    "Nuclear bodies",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Actin filaments",
    "Microtubules",
    "Mitotic spindle",
    "Centrosome",
    "Plasma membrane",
    "Mitochondria",
    "Aggresome",
    "Cytosol",
    "Vesicles and punctate cytosolic patterns",
    "Negative",
)
#: The class indices CHAMMI keeps.
CHAMMI_CLASSES: tuple[int, ...] = (4, 14, 10, 7, 0, 16, 6)
#: stain colour -> CHAMMI channel name; tuple order = the HPA tile order of ``vocab.SOURCES["hpa"]``
STAINS: dict[str, str] = {"red": "microtubules", "green": "protein", "blue": "nucleus", "yellow": "er"}
MIXED_BIT_DEPTH = ("skip", "allow")


def _image_keys(image: str) -> list[str]:
    """Field IDs a ``kaggle_2021.tsv`` Image value may name: the value itself, its last path/URL component
    (extension and trailing ``_`` removed), and the last two components joined by ``_`` (HPA public image
    URLs ``.../10005/921_B9_1_`` name the files ``10005_921_B9_1_<stain>.png``)."""
    value = str(image).strip()
    parts = [p for p in re.split(r"[/\\]", value) if p]
    if not parts:
        return []
    last = re.sub(r"\.(png|tif|tiff|jpg|jpeg)$", "", parts[-1], flags=re.IGNORECASE).rstrip("_")
    keys = [value, last]
    if len(parts) >= 2 and "." not in parts[-2] and ":" not in parts[-2]:
        keys.append(f"{parts[-2]}_{last}")
    return list(dict.fromkeys(keys))


def find_image_dir(raw: Any, probe_id: str = "") -> str:
    """``"train"`` when ``raw/train`` holds the ``*_blue.png`` fields, else ``""`` (fields at the root).

    A folder is searched; a location that cannot list (plain HTTP) is asked for ``train/<probe_id>_blue.png``,
    the first field of the labels table."""
    raw = as_raw_input(raw)
    if raw.is_local:
        sub = Path(raw.url) / "train"
        return "train" if sub.is_dir() and any(sub.glob("*_blue.png")) else ""
    if probe_id and raw.is_file(f"train/{probe_id}_blue.png"):
        return "train"
    return "train" if raw.can_list and not probe_id and raw.is_dir("train") else ""


def table_delimiter(header: str) -> str:
    """Tab or comma, whichever the header line holds more of: HPA's ``kaggle_2021.tsv`` is comma-separated
    despite its suffix (the public Kaggle solutions read it with ``pd.read_csv(path)``), other copies use
    tabs."""
    return "\t" if header.count("\t") > header.count(",") else ","


def read_cellline_table(raw: Any, ref: str | None = None) -> dict[str, dict[str, Any]]:
    """{field ID: {"cellline", "in_trainset"}} from a ``kaggle_2021.tsv``-style table (``ref`` in the input
    ``raw``, or a path given as ``raw`` alone), tab- or comma-separated; ``Image`` values may be field IDs,
    file paths or HPA public addresses (see :func:`_image_keys`)."""
    if ref is None:
        raw, ref = as_raw_input(Path(raw).parent), Path(raw).name
    raw = as_raw_input(raw)
    where = raw.path(ref)
    table = raw.table(ref, sep=table_delimiter(raw.first_line(ref)), dtype=str, keep_default_na=False)
    missing = {"Image", "Cellline"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{where}: cell-line table lacks column(s) {sorted(missing)}; has {list(table.columns)}"
        )
    out: dict[str, dict[str, Any]] = {}
    for image, line, in_train in zip(
        table["Image"], table["Cellline"], table.get("in_trainset", pd.Series([""] * len(table))), strict=True
    ):
        for key in _image_keys(image):
            out.setdefault(key, {"cellline": line.strip(), "in_trainset": in_train})
    return out


def read_field(
    files: dict[str, Any],
    row: int | None,
    max_pixels: int,
    mixed_bit_depth: str = "skip",
    raw: RawInput | None = None,
) -> dict[str, np.ndarray]:
    """The four stain images of a field ({stain: 2-D uint8/uint16 array}), checked from their headers before
    any is decoded; ``UnitSkip`` naming the file(s) and the table row when the field cannot be used.

    ``files``: {stain: file}, paths or, with ``raw``, names in that input (relative or full URLs). Checks:
    every file exists (the skip names all missing ones), none decodes to more than ``max_pixels`` pixels, all
    have the nucleus image's size (the skip names each differing file and its size), and all share one bit
    depth unless ``mixed_bit_depth == "allow"`` (the skip names each file's depth).
    """
    raw = raw or as_raw_input("/")
    full = {s: raw.full(str(files[s])) for s in STAINS}
    names = {s: raw.name(str(files[s])) for s in STAINS}
    opened: dict[str, Source] = {}
    missing: list[str] = []
    for stain in STAINS:
        try:
            opened[stain] = raw.fetch(str(files[stain]))
        except FileNotFoundError as exc:
            if not getattr(exc, "missing", True):  # refused, not missing: say so
                raise UnitSkip(f"unreadable channel file: {exc}", full[stain], row) from None
            missing.append(stain)
    if missing:
        raise UnitSkip(
            f"missing channel file(s): {', '.join(names[k] for k in missing)}", full[missing[0]], row
        )
    headers: dict[str, ImageHeader] = {}
    for stain in STAINS:
        try:
            headers[stain] = image_header(opened[stain])
            check_size(headers[stain], max_pixels, names[stain], "hpa.max_field_pixels")
        except ImageTooLarge as err:
            raise UnitSkip(str(err), full[stain], row) from None
        except Exception as err:  # not an image, or a header cut short
            raise UnitSkip(
                f"unreadable or truncated image ({type(err).__name__}: {err})", full[stain], row
            ) from None
    try:
        check_field(
            {s: h.shape[:2] for s, h in headers.items()},
            {s: h.bits for s, h in headers.items()},
            names,
            "blue",
            mixed_bit_depth == "allow",
            "hpa.mixed_bit_depth",
        )
    except FieldMismatch as err:
        raise UnitSkip(str(err), full[err.key], row) from None
    return {s: read_channel(opened[s], row, full[s]) for s in STAINS}


def read_channel(path: Source, row: int | None = None, where: str | None = None) -> np.ndarray:
    """One stain PNG (a path, or its bytes in a file object shown as ``where``) as a 2-D uint8/uint16 array;
    ``UnitSkip`` naming the file (and the table row) when it cannot be used."""
    shown = where or str(path)
    if isinstance(path, str | Path) and not Path(path).is_file():
        raise UnitSkip("missing channel file", shown, row)
    try:
        with warnings.catch_warnings():  # the size limit was checked from the header (read_field)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                arr = np.array(im)
    except Image.DecompressionBombError as err:  # over 2 x Image.MAX_IMAGE_PIXELS: Pillow refuses to open it
        raise UnitSkip(f"image too large for Pillow ({err})", shown, row) from None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise UnitSkip(f"unreadable or truncated image ({type(err).__name__}: {err})", shown, row) from None
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and all(np.array_equal(arr[..., 0], arr[..., k]) for k in (1, 2)):
            arr = arr[..., 0]  # grey stored as RGB(A): same plane three times
        else:
            raise UnitSkip(f"expected a single-channel image, got shape {arr.shape}", shown, row)
    if arr.ndim != 2:
        raise UnitSkip(f"expected a 2-D image, got shape {arr.shape}", shown, row)
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)  # some 16-bit PNGs open as 32-bit "I"
    raise UnitSkip(f"unsupported pixel type {arr.dtype}", shown, row)


class HPAPipeline(SourcePipeline):
    """HPA fields -> single cells (see the module docstring)."""

    name = "hpa"
    key = "hpa"
    makes = ("hpa",)
    unit_kind = "fields"
    units_per_task = 2  # fields per dask task
    DEFAULTS = {
        "border": "pad",  # pad | shift | skip: a crop box that leaves the field (module docstring)
        "crop": 512,  # crop side in pixels
        "low_pct": 0.0,  # percentile clipped to 0 when scaling to 8 bit
        "high_pct": 99.9,  # percentile clipped to 255
        "segmentation": "watershed",  # segmentation backend (pipelines.steps.segmentation)
        "segmentation_options": {},  # backend options, e.g. {weights: PATH} for cellpose
        "mask_neighbours": False,  # zero the pixels of other cells inside a crop
        "min_cell_area": 0,  # cells smaller than this (pixels) are skipped
        "cellline_table": "kaggle_2021.tsv",  # HPA's cell-line table, tab- or comma-separated
        "labels_table": "train.csv",  # ID, Label (pipe-separated class indices)
        # a larger image is skipped from its header, before decoding
        "max_field_pixels": 10_000 * 10_000,
        # skip: a field whose files mix 8- and 16-bit is skipped, naming each file's depth; allow: each file
        # is scaled by its own depth and the cells record channel_bit_depths
        "mixed_bit_depth": "skip",
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["border"] not in BORDER_POLICIES:
            raise ValueError(
                f"config hpa.border: {opts['border']!r} is not one of {', '.join(BORDER_POLICIES)}"
            )
        if opts["mixed_bit_depth"] not in MIXED_BIT_DEPTH:
            raise ValueError(
                f"config hpa.mixed_bit_depth: {opts['mixed_bit_depth']!r} is not one of "
                f"{', '.join(MIXED_BIT_DEPTH)}"
            )

    def tables(self, opts: dict[str, Any]) -> tuple[str, ...]:
        return (opts["labels_table"],)

    def discover(self, input_dir: Any, opts: dict[str, Any]) -> Discovery:
        raw = as_raw_input(input_dir)
        labels_ref, lines_ref = opts["labels_table"], opts["cellline_table"]
        labels_path, lines_path = raw.path(labels_ref), raw.path(lines_ref)
        for ref, what in (
            (labels_ref, "labels table (ID, Label)"),
            (lines_ref, "cell-line table (Image, Label, Cellline, in_trainset)"),
        ):
            if not raw.is_file(ref):
                raise FileNotFoundError(f"HPA input {raw}: {what} not found: {raw.path(ref)}")
        labels = raw.table(labels_ref, dtype=str, keep_default_na=False)
        if not {"ID", "Label"} <= set(labels.columns):
            raise ValueError(f"{labels_path}: needs columns ID and Label; has {list(labels.columns)}")
        lines = read_cellline_table(raw, lines_ref)
        first = next((str(i).strip() for i in labels["ID"] if str(i).strip()), "")
        image_dir = find_image_dir(raw, first if not raw.is_local else "")
        units: list[Unit] = []
        skipped: list[Skipped] = []
        seen: dict[str, int] = {}
        for i, (field_id, label) in enumerate(zip(labels["ID"], labels["Label"], strict=True)):
            row, field_id = i + 1, field_id.strip()
            uid = safe_id(field_id)

            def skip(reason: str, file: str = labels_path, _row: int = row, _uid: str = uid) -> None:
                skipped.append(Skipped("hpa", _uid, reason, file, _row))

            if not field_id:
                skip("empty ID")
                continue
            if field_id in seen:
                skip(f"duplicate ID {field_id!r} (first at row {seen[field_id]})")
                continue
            seen[field_id] = row
            parts = [p.strip() for p in label.split("|") if p.strip()]
            if not parts or not all(p.isdigit() and int(p) < len(HPA_CLASSES) for p in parts):
                skip(f"unknown label {label!r} (expected class indices 0..{len(HPA_CLASSES) - 1})")
                continue
            if len(set(parts)) > 1:
                skip(f"multi-label {label!r}")
                continue
            cls = int(parts[0])
            if cls not in CHAMMI_CLASSES:
                skip(f"class not in CHAMMI: {cls} {HPA_CLASSES[cls]}")
                continue
            info = lines.get(field_id)
            if info is None or not info["cellline"]:
                skip(f"no cell line for {field_id!r}", lines_path)
                continue
            files = {stain: f"{image_dir}/{field_id}_{stain}.png".lstrip("/") for stain in STAINS}
            units.append(
                Unit(
                    "hpa",
                    uid,
                    {
                        "id": field_id,
                        "row": row,
                        "class_index": cls,
                        "label": HPA_CLASSES[cls],
                        "cellline": info["cellline"],
                        "in_trainset": info["in_trainset"],
                        "files": files,
                        "root": raw.url,
                    },
                )
            )
        units.sort(key=lambda u: u.unit_id)
        return Discovery(units, skipped, found={"fields": len(labels)})

    def unit_files(self, unit: Unit) -> list[str]:
        """The four images of a field (fetched ahead of its processing on an object store)."""
        return [unit.payload["files"][s] for s in STAINS]

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        input_ = raw_input(p["root"])
        files = {stain: input_.full(f) for stain, f in p["files"].items()}
        raw = read_field(p["files"], p["row"], int(opts["max_field_pixels"]), opts["mixed_bit_depth"], input_)
        shapes = {stain: a.shape for stain, a in raw.items()}
        depths = {STAINS[s]: 16 if a.dtype == np.uint16 else 8 for s, a in raw.items()}
        bit_depth = max(depths.values())
        field8 = []
        for stain in STAINS:  # STAINS order = microtubules, protein, nucleus, er = SOURCES["hpa"].channels
            a = raw[stain]
            try:
                if a.dtype == np.uint8:
                    if a.min() == a.max():
                        raise ValueError(f"constant image: every pixel equal to {int(a.min())}")
                    field8.append(a)
                else:
                    field8.append(to_uint8(a, opts["low_pct"], opts["high_pct"], where=str(files[stain])))
            except ValueError as err:
                raise UnitSkip(str(err), files[stain], p["row"]) from None
        field = np.stack(field8)  # (4, H, W) uint8

        seg = segment(
            raw["blue"],
            [raw["red"], raw["yellow"], raw["green"]],
            backend=opts["segmentation"],
            **dict(opts["segmentation_options"]),
        )
        props = [c for c in cell_properties(seg.cells) if c["area"] >= int(opts["min_cell_area"])]
        if not props:
            raise UnitSkip("no cells found by segmentation", files["blue"], p["row"])

        rel = {s: input_.display(p["files"][s]) for s in STAINS}
        size = int(opts["crop"])
        cells: list[Cell] = []
        skipped: list[Skipped] = []
        seen_ids: set[str] = set()
        for c in props:
            cy, cx = c["centroid"]
            cell_id = make_cell_id("hpa", p["id"], int(round(cy)), int(round(cx)))
            if cell_id in seen_ids:  # two cells with one rounded centroid (a ring around a cell): keep one
                skipped.append(
                    Skipped(
                        "hpa",
                        unit.unit_id,
                        f"cell {c['label']} shares its centroid with another",
                        rel["blue"],
                        p["row"],
                    )
                )
                continue
            seen_ids.add(cell_id)
            crop, info = crop_box(field, (cy, cx), (size, size), opts["border"])
            if crop is None:
                skipped.append(
                    Skipped(
                        "hpa",
                        unit.unit_id,
                        f"cell {c['label']} at the field border (policy skip)",
                        rel["blue"],
                        p["row"],
                    )
                )
                continue
            if opts["mask_neighbours"]:
                lab, _ = crop_box(seg.cells[None], (cy, cx), (size, size), opts["border"])
                other = (lab[0] != 0) & (lab[0] != c["label"])
                crop = np.where(other[None], 0, crop).astype(np.uint8)
            centroid = [round(cy, 2), round(cx, 2)]
            meta = {
                "ID": p["id"],
                "row": p["row"],
                "field_file": rel["blue"],
                "files": rel,
                "class_index": p["class_index"],
                "cellline": p["cellline"],
                "in_trainset": p["in_trainset"],
                "centroid": centroid,
                "bbox": list(c["bbox"]),
                "area": c["area"],
                "cell_label": c["label"],
                "cell_touches_edge": c["touches_edge"],
                "crop_touched_border": info.touched_border,
                "crop_top": info.top,
                "crop_left": info.left,
                "border_policy": info.policy,
                "bit_depth": bit_depth,
                "original_size": list(shapes["blue"]),
                "segmentation": opts["segmentation"],
                "masked_neighbours": bool(opts["mask_neighbours"]),
            }
            if len(set(depths.values())) > 1:  # mixed_bit_depth: allow
                meta["channel_bit_depths"] = depths
            cells.append(
                Cell(
                    image=np.ascontiguousarray(crop),
                    channels=SOURCES["hpa"].channels,
                    source="hpa",
                    label=p["label"],
                    cell_id=cell_id,
                    meta=meta,
                    groups={"cell_type": p["cellline"]},
                )
            )
        return UnitResult(cells=cells, skipped=skipped, found={"cells": len(props)})

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        from pipelines.sources.hpa.synth import write_hpa_sample

        write_hpa_sample(Path(out_dir), seed)
