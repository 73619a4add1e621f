"""IDR0017 -> a release (``chammi-build --source idr0017 --input DIR|URL``): one sample per cell patch.

The published test layout (HCT116 isogenic lines, Breinig et al. 2015; the reference loader is the authority):

    <root>/idr0017_meta.csv          one row per channel image, CHAMMI-75's metadata schema (option metadata)
    <root>/<plate>.zip               a plate's images (TIFF or PNG, found by file name at any depth), or
    <root>/<plate>/                  the unzipped plate
    <root>/<plate>.safetensors       the plate's crop boxes; or the one .safetensors in <plate>/ or in the zip

``<plate>`` is the table's ``storage.zip`` (a trailing ``.zip`` dropped). The boxes of an image are under key
``idr0017-<plate>-converted/<storage.filename>`` (option ``coordinate_key``; the bare file name is tried
too): int (N, 4) ``y_min, y_max, x_min, x_max``. An image = the rows sharing ``imaging.multi_channel_id``,
ordered by ``imaging.channel``, named by ``imaging.channel_type`` (the nucleus channel); its boxes are those
of its first channel file that has any (as the reference loader does). Default ``prefix``:
``CHAMMI-75_test/idr0017`` (the folder the published benchmark config names).

One sample = one patch ``image[:, y_min:y_max, x_min:x_max]`` (clipped to the image) with exact pixels. Its
``meta`` is the scorer's table: ``plate``, ``well`` (``experiment.well``), ``image_id`` (the multi-channel
id), ``cell_line`` (``biology.cell_line``), ``compound`` (``experiment.reagent``), ``control`` (true when
``experiment.control`` is one of ``control_values``, default ``negative control``), plus ``patch``,
``box`` and ``file``. ``label`` is the compound, or ``control``.

Accounting: ``images`` (discovery decides: an image without boxes, or whose plate has no box file or no
images, is a skip naming it) and ``patches`` (a patch is written or skipped: an unreadable or missing channel
file, channels of different sizes, a box outside the image).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.format.schema import Cell, make_cell_id
from pipelines.sources.base import Discovery, Skipped, Unit, UnitResult, safe_id
from pipelines.sources.benchmarks.common import (
    COMMON_DEFAULTS,
    TEST_PREFIX,
    BenchmarkPipeline,
    ItemSkip,
    chunks,
    decode_image,
    input_store,
    read_or_none,
    read_table,
    resolve_root,
)
from pipelines.sources.benchmarks.idr0017.plates import plate_boxes, plate_container

MCID, CHANNEL, CHANNEL_TYPE = "imaging.multi_channel_id", "imaging.channel", "imaging.channel_type"
FILENAME, PLATE = "storage.filename", "storage.zip"
WELL, REAGENT, CONTROL, CELL_LINE = (
    "experiment.well",
    "experiment.reagent",
    "experiment.control",
    "biology.cell_line",
)
REQUIRED = (MCID, CHANNEL, CHANNEL_TYPE, FILENAME, PLATE, WELL, REAGENT, CONTROL, CELL_LINE)


class IDR0017Pipeline(BenchmarkPipeline):
    """Plates of images + crop boxes + the metadata table -> one nucleus patch per cell."""

    name = "idr0017"
    benchmark = "idr0017"
    unit_kind = cell_kind = "patches"
    DEFAULTS: dict[str, Any] = {
        **COMMON_DEFAULTS,
        "prefix": f"{TEST_PREFIX}/idr0017",  # the folder the published benchmark config reads
        "items_per_unit": 32,  # images per unit (one plate's)
        "metadata": "idr0017_meta.csv",  # the metadata table, relative to the root
        "coordinate_key": "idr0017-{plate}-converted/{filename}",  # key of an image's boxes
        "control_values": ["negative control"],  # experiment.control values of control wells
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        if not isinstance(opts["metadata"], str) or not opts["metadata"]:
            raise ValueError(f"config idr0017.metadata must be a file name, got {opts['metadata']!r}")
        if "{filename}" not in str(opts["coordinate_key"]):
            raise ValueError(
                "config idr0017.coordinate_key must contain {filename} (and may contain {plate})"
            )
        values = opts["control_values"]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"config idr0017.control_values must be a list of strings, got {values!r}")

    def tables(self, opts: Any) -> tuple[str, ...]:
        return (opts["metadata"],)

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        root = resolve_root(input_dir, opts, lambda s: s.exists(opts["metadata"]))
        store = input_store(root, opts)
        table = read_table(store, opts["metadata"], "IDR0017 metadata table", REQUIRED)
        table["_channel"] = _channel_numbers(table, store.path(opts["metadata"]))
        table["_plate"] = table[PLATE].str.replace(r"\.zip$", "", regex=True)
        table = table.sort_values([MCID, "_channel"], kind="stable")
        controls = set(opts["control_values"])
        units, skipped, n_images, n_patches, used = [], [], 0, 0, 0
        for plate, rows in table.groupby("_plate", sort=True):
            images = _images(rows, controls)
            n_images += len(images)
            container = plate_container(store, str(plate))
            boxes, problem = plate_boxes(store, str(plate), container) if container else ({}, "")
            if not container or problem:
                reason = problem or f"plate {plate}: neither {plate}.zip nor a {plate}/ folder of images"
                skipped += [
                    Skipped(self.name, "discover", reason, store.path(str(plate)), im["mcid"], kind="images")
                    for im in images
                ]
                continue
            ready = []
            for im in images:
                found = _image_boxes(im, boxes, str(plate), opts["coordinate_key"])
                if found is None:
                    skipped.append(
                        Skipped(
                            self.name,
                            "discover",
                            "no crop boxes for the image",
                            store.path(f"{plate}/{im['files'][0]}"),
                            im["mcid"],
                            kind="images",
                        )
                    )
                    continue
                im["boxes"] = found
                ready.append(im)
            used += len(ready)
            n_patches += sum(len(im["boxes"]) for im in ready)
            for k, part in enumerate(chunks(ready, opts["items_per_unit"])):
                payload = {"root": root, "plate": str(plate), "container": container, "images": part}
                units.append(
                    Unit(
                        self.name,
                        f"{safe_id(plate)}-{k:05d}",
                        payload,
                        items=sum(len(im["boxes"]) for im in part),
                    )
                )
        return Discovery(
            units, skipped, found={"images": n_images, "patches": n_patches}, used={"images": used}
        )

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        store = input_store(p["root"], opts)
        reader = _PlateReader(store, p["plate"], p["container"])
        try:
            return self._patches(unit, reader, opts)
        finally:
            reader.close()

    def _patches(self, unit: Unit, reader: _PlateReader, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        cells, skipped = [], []
        for im in p["images"]:
            try:
                image = reader.image(im["files"], opts["max_image_pixels"])
            except ItemSkip as exc:
                skipped.append(
                    Skipped(
                        self.name,
                        unit.unit_id,
                        f"{exc.reason} (image {im['mcid']})",
                        exc.file,
                        count=len(im["boxes"]),
                    )
                )
                continue
            h, w = image.shape[1:]
            for k, (y0, y1, x0, x1) in enumerate(im["boxes"]):
                y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
                if y1 <= y0 or x1 <= x0:
                    skipped.append(
                        Skipped(
                            self.name,
                            unit.unit_id,
                            f"box {k} of image {im['mcid']} lies outside its {h} x {w} pixels",
                            reader.where(im["files"][0]),
                        )
                    )
                    continue
                meta = {
                    **im["meta"],
                    "patch": k,
                    "box": [y0, y1, x0, x1],
                    "file": f"{p['plate']}/{im['files'][0]}",
                }
                label = "control" if meta["control"] else meta["compound"]
                cells.append(
                    Cell(
                        np.ascontiguousarray(image[:, y0:y1, x0:x1]),
                        tuple(im["types"]),
                        self.name,
                        label,
                        make_cell_id(self.name, im["mcid"], k),
                        meta=meta,
                        groups={"dataset": p["plate"]},
                    )
                )
        return UnitResult(cells, skipped)


def _channel_numbers(table: Any, where: str) -> Any:
    """``imaging.channel`` as integers; a clear error naming the first bad row."""
    import pandas as pd

    numbers = pd.to_numeric(table[CHANNEL], errors="coerce")
    bad = numbers.isna().to_numpy().nonzero()[0]
    if len(bad):
        raise ValueError(
            f"{where} row {int(bad[0])}: {CHANNEL} {table[CHANNEL].iloc[bad[0]]!r} is not a number"
        )
    return numbers.astype(int)


def _images(rows: Any, controls: set[str]) -> list[dict[str, Any]]:
    """The multi-channel images of one plate's rows, as JSON-ready dicts (channel files in channel order)."""
    out = []
    for mcid, g in rows.groupby(MCID, sort=True):
        first = g.iloc[0]
        control = first[CONTROL] in controls
        out.append(
            {
                "mcid": str(mcid),
                "files": g[FILENAME].tolist(),
                "types": g[CHANNEL_TYPE].tolist(),
                "meta": {
                    "plate": str(first["_plate"]),
                    "well": first[WELL],
                    "image_id": str(mcid),
                    "cell_line": first[CELL_LINE],
                    "compound": "" if control else first[REAGENT],
                    "control": bool(control),
                },
            }
        )
    return out


def _image_boxes(
    image: dict[str, Any], boxes: dict[str, np.ndarray], plate: str, template: str
) -> list[list[int]] | None:
    """The boxes of an image (its first channel file that has any), None when none has."""
    for f in image["files"]:
        name = f.rsplit("/", 1)[-1]
        for key in (template.format(plate=plate, filename=name), name):
            if key in boxes:
                return [[int(v) for v in b] for b in boxes[key]]
    return None


class _PlateReader:
    """Channel files of one plate, from its zip (opened once; members matched by file name) or its folder."""

    def __init__(self, store: Any, plate: str, container: str):
        self.store, self.plate, self.container = store, plate, container
        self._zip: zipfile.ZipFile | None = None
        self._file: Any = None
        self._members: dict[str, str] = {}

    def close(self) -> None:
        for handle in (self._zip, self._file):
            if handle is not None:
                handle.close()
        self._zip = self._file = None

    def where(self, filename: str) -> str:
        if self.container == "zip":
            return f"{self.store.path(self.plate + '.zip')}:{filename}"
        return self.store.path(f"{self.plate}/{filename}")

    def read(self, filename: str) -> bytes:
        if self.container == "zip":
            if self._zip is None:
                try:  # a seekable file: members are read by range, the plate is never read whole
                    self._file = self.store.open(f"{self.plate}.zip")
                    self._zip = zipfile.ZipFile(self._file)
                except (OSError, zipfile.BadZipFile) as exc:
                    raise ItemSkip(
                        f"unreadable plate zip ({exc})", self.store.path(self.plate + ".zip")
                    ) from None
                self._members = {n.rsplit("/", 1)[-1]: n for n in self._zip.namelist() if not n.endswith("/")}
            member = self._members.get(filename.rsplit("/", 1)[-1])
            if member is None:
                raise ItemSkip("missing channel file (not in the plate zip)", self.where(filename))
            try:
                return self._zip.read(member)
            except (OSError, zipfile.BadZipFile, ValueError) as exc:
                raise ItemSkip(f"unreadable channel file ({exc})", self.where(filename)) from None
        data = read_or_none(self.store, f"{self.plate}/{filename}", "channel file")
        if data is None:
            raise ItemSkip("missing channel file", self.where(filename))
        return data

    def image(self, files: list[str], max_pixels: int) -> np.ndarray:
        """(C, H, W) of an image's channel files; channels of different sizes are an :class:`ItemSkip`."""
        planes = []
        for f in files:
            where = self.where(f)
            plane = np.squeeze(decode_image(self.read(f), where, max_pixels, "idr0017.max_image_pixels"))
            if plane.ndim != 2:
                raise ItemSkip(f"channel file is {plane.shape}, not one plane", where)
            if planes and plane.shape != planes[0].shape:
                raise ItemSkip(
                    f"channels of one image disagree in size: {plane.shape} vs {planes[0].shape}", where
                )
            planes.append(plane)
        if len({p.dtype for p in planes}) > 1:
            planes = [p.astype(np.uint16) for p in planes]
        return np.stack(planes)
