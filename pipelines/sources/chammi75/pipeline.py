"""CHAMMI-75 -> a release (``chammi-build --source chammi75 --input ROOT``; ROOT a folder or
``s3://chammi-data/CHAMMI-75``).

One sample = one multi-channel image (the metadata rows sharing ``imaging.multi_channel_id``): its channels,
named by ``imaging.channel_type`` in ``imaging.channel`` order, stacked into a (C, H, W) uint8 image with the
exact pixels of the PNGs; its cells' centroids (and areas) from the guidance file of its first channel are
stored after the pixels in its tar member (``chammi_data.format.codec``: no extra read when the stream cuts a
guided crop); ``meta`` holds the image's metadata columns under their own names. By default the release keeps
whole images (``load()`` returns them so) and guided crops happen in ``chammi_data.stream``; ``store: crops``
stores each image's guided crops instead (fixed-size rows, cut once at build time) and ``store: both`` stores
the images and their crops (:mod:`pipelines.sources.chammi75.crops`).

Reading: the metadata table is planned by :mod:`pipelines.sources.chammi75.metadata` (8 M rows, columns by
name, strings); the PNGs and guidance files are read through ``chammi_data.store`` from a folder or a URL
(anonymously from the public bucket), so a bucket input needs no copy.

Skips (each naming its file), beside those of the planner: a missing or unreadable channel file, a channel
file that is not an 8-bit single-channel PNG or is over ``max_image_pixels``, channels of one image that
disagree in size, an unreadable guidance file.

Splits: CHAMMI-75 has no labels (``label`` is ""). Every image is ``Train`` except those of
``holdout_studies``, which are ``Validation`` (held out to validate pretraining: ``load("validation")``).

Options (config section ``chammi75``, or ``chammi-build --set chammi75.KEY=VALUE``): ``metadata`` (full |
small | a path or URL of a table), ``studies`` (the study filter), ``cap_per_study`` (images per study, for
trials), ``holdout_studies``, ``images_per_unit``, ``anonymous`` (true | false | auto: anonymous for the
public bucket), ``storage_options`` (fsspec options of the input), ``max_image_pixels``; ``store`` (images |
crops | both), ``crop_size`` (the side of a stored crop, pixels), ``crops_per_image`` (most crops per image)
and ``crop_table`` (null: ``manifests/chammi75_crops.yaml``), see :mod:`pipelines.sources.chammi75.crops`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from chammi_data.format.codec import MAX_GUIDANCE_CELLS, Guidance
from chammi_data.format.release_format import TRAIN, VALIDATION, canonical_json
from chammi_data.format.schema import Cell, make_cell_id
from chammi_data.format.vocab import TASK_COLUMNS
from chammi_data.store.credentials import client_environment
from chammi_data.store.storage import ReleaseStore, open_store
from pipelines.sources.base import Discovery, Skipped, SourcePipeline, Unit, UnitResult
from pipelines.sources.chammi75.crops import CROP_DEFAULTS, check_crop_options, crop_cells
from pipelines.sources.chammi75.layout import (
    BUCKET_ROOT,
    METADATA_TABLES,
    STUDY,
    ImageEntry,
    guidance_path,
    parse_unit_images,
)
from pipelines.sources.chammi75.metadata import SOURCE, discover_table
from pipelines.steps.rawio import (
    FieldMismatch,
    ImageTooLarge,
    ItemSkip,
    check_field,
    check_size,
    png_header_bytes,
    read_or_none,
)


def storage_options(root: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The fsspec options to read ``root`` with: ``storage_options`` plus ``anon`` when ``anonymous`` is true
    (``auto``: for the public bucket only)."""
    out = dict(opts.get("storage_options") or {})
    anonymous = opts.get("anonymous", "auto")
    if anonymous is True or (anonymous == "auto" and str(root).startswith(BUCKET_ROOT.rsplit("/", 1)[0])):
        out.setdefault("anon", True)
    return out


def _store(root: str, options_json: str) -> ReleaseStore:
    """The input store of a worker process (one per root, options and client environment: its connections
    are reused; a changed endpoint or identity gets a new store)."""
    return _cached_store(root, options_json, client_environment())


@functools.lru_cache(maxsize=8)
def _cached_store(root: str, options_json: str, _environment: str) -> ReleaseStore:
    import json

    return open_store(root, json.loads(options_json) or None)


def _key(store: ReleaseStore, rel: str) -> str:
    """A file's path as the store wants it: percent-encoded for HTTP (keys hold ``+``, ``[`` and ``]``)."""
    return quote(rel, safe="/") if store.protocol in ("http", "https") else rel


class Chammi75Pipeline(SourcePipeline):
    """CHAMMI-75's metadata table + PNGs + guidance files -> whole multi-channel images with their cells."""

    name = "chammi75"
    key = SOURCE
    makes = (SOURCE,)
    unit_kind = cell_kind = "images"  # a unit batches images of one study; each becomes a cell or a skip
    order = "group"  # by study, channel set and size (the release's image groups), then cell id
    DEFAULTS: dict[str, Any] = {
        "metadata": "full",
        "studies": [],
        "cap_per_study": None,
        "holdout_studies": [],
        "images_per_unit": 64,
        "anonymous": "auto",
        "storage_options": {},
        "max_image_pixels": 100_000_000,
        **CROP_DEFAULTS,
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        for key in ("studies", "holdout_studies"):
            value = opts[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"config chammi75.{key} must be a list of study names, got {value!r}")
        cap = opts["cap_per_study"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ValueError(f"config chammi75.cap_per_study must be null or an integer >= 0, got {cap!r}")
        if opts["anonymous"] not in (True, False, "auto"):
            raise ValueError(
                f"config chammi75.anonymous must be true, false or auto, got {opts['anonymous']!r}"
            )
        if not isinstance(opts["storage_options"], Mapping):
            raise ValueError("config chammi75.storage_options must be a mapping of fsspec options")
        for key in ("images_per_unit", "max_image_pixels"):
            if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
                raise ValueError(f"config chammi75.{key} must be a positive integer, got {opts[key]!r}")
        if not isinstance(opts["metadata"], str) or not opts["metadata"]:
            raise ValueError(
                f"config chammi75.metadata must be full, small or a path, got {opts['metadata']!r}"
            )
        check_crop_options(opts)

    def tables(self, opts: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(METADATA_TABLES.values())

    def rules_digest(self, config: Mapping[str, Any]) -> str:
        """No task rules: CHAMMI-75 has no labels; the only split rule is ``holdout_studies``."""
        return "holdout:" + canonical_json(sorted((config.get(self.name) or {}).get("holdout_studies") or []))

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        root = str(input_dir).rstrip("/")
        options = {**opts, "storage_options": storage_options(root, opts)}
        return discover_table(root, options)

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        p = unit.payload
        store = _store(p["root"], canonical_json(storage_options(p["root"], opts)))
        cells, skipped, crops = [], [], 0
        for entry in parse_unit_images(p["images"], p["columns"]):
            try:
                made = self._stored(store, entry, opts)
            except ItemSkip as exc:
                skipped.append(Skipped(SOURCE, unit.unit_id, f"{exc.reason} (image {entry.mcid})", exc.file))
                continue
            cells += made
            crops += sum(c.meta.get("kind") == "crop" for c in made)
        return UnitResult(cells, skipped, {} if opts["store"] == "images" else {"crops": crops})

    def _stored(self, store: ReleaseStore, entry: ImageEntry, opts: Mapping[str, Any]) -> list[Cell]:
        """The rows of one image: itself (``store: images``), its crops (``crops``) or both
        (:mod:`pipelines.sources.chammi75.crops`)."""
        image = self._image(store, entry, opts)
        if opts["store"] == "images":
            return [image]
        crops = crop_cells(image, opts)
        if opts["store"] == "both":
            image.meta["kind"] = "image"
            return [image, *crops]
        if not crops:
            file = store.path(guidance_path(entry.files[0]))
            raise ItemSkip("no cells to crop around (no guidance file), so no crop to store", file)
        return crops

    def used(self, cells: list[dict[str, Any]], opts: Mapping[str, Any]) -> dict[str, int]:
        """Images used (an image row, or the parent of a crop row) and crops written."""
        if opts["store"] == "images":
            return super().used(cells, opts)
        images = {c["meta"].get("parent_cell_id", c["cell_id"]) for c in cells}
        return {"images": len(images), "crops": sum(c["meta"].get("kind") == "crop" for c in cells)}

    def _image(self, store: ReleaseStore, entry: ImageEntry, opts: Mapping[str, Any]) -> Cell:
        planes = {
            k: _read_png(store, rel, int(opts["max_image_pixels"])) for k, rel in enumerate(entry.files)
        }
        try:
            names = {k: store.path(rel) for k, rel in enumerate(entry.files)}
            check_field({k: a.shape for k, a in planes.items()}, {k: 8 for k in planes}, names, 0, True, "")
        except FieldMismatch as exc:
            raise ItemSkip(f"channels of one image disagree in size: {exc}", names[exc.key]) from None
        image = np.stack([planes[k] for k in range(len(entry.files))])
        guidance = _read_guidance(store, entry.files[0], image.shape[1:])
        meta: dict[str, Any] = dict(entry.meta)
        meta["guidance_cells"] = len(guidance.centroids)
        study = entry.meta[STUDY]
        groups = {
            "dataset": study,
            "Plate": entry.meta.get("experiment.plate", ""),
            "cell_type": entry.meta.get("biology.cell_line", ""),
        }
        cell_id = make_cell_id(SOURCE, entry.mcid)
        return Cell(image, entry.types, SOURCE, "", cell_id, meta=meta, groups=groups, guidance=guidance)

    def assign(self, table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
        """``Train``, or ``Validation`` for the images of ``holdout_studies``; no tasks."""
        held = set((config.get(self.name) or {}).get("holdout_studies") or [])
        study = table["dataset"].astype(str).to_numpy()
        out = pd.DataFrame({"cell_id": table["cell_id"].to_numpy()})
        out["train_test_split"] = np.where(np.isin(study, list(held)), VALIDATION, TRAIN)
        for col in TASK_COLUMNS:
            out[col] = False
        return out

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        from pipelines.sources.chammi75.synth import write_sample

        write_sample(out_dir, seed)


def _read_png(store: ReleaseStore, rel: str, max_pixels: int) -> np.ndarray:
    """One channel file as an (H, W) uint8 array, checked from its header before it is decoded."""
    import imagecodecs

    data = read_or_none(store, rel, "channel file", _key(store, rel))
    where = store.path(rel)
    if data is None:
        raise ItemSkip("missing channel file", where)
    try:
        header = png_header_bytes(data[:26])
        check_size(header, max_pixels, rel, "chammi75.max_image_pixels")
    except ImageTooLarge as exc:
        raise ItemSkip(str(exc), where) from None
    except ValueError as exc:
        raise ItemSkip(f"unreadable channel file ({exc})", where) from None
    if header.bits != 8 or len(header.shape) != 2:
        raise ItemSkip(f"channel file is {header.bits}-bit {header.dims()}, not an 8-bit grey PNG", where)
    try:
        plane = imagecodecs.png_decode(data)
    except Exception as exc:  # a truncated or corrupt PNG
        raise ItemSkip(f"unreadable channel file ({type(exc).__name__}: {exc})", where) from None
    if plane.dtype != np.uint8 or plane.shape != header.shape:
        raise ItemSkip(
            f"channel file decodes to {plane.shape} {plane.dtype}, not {header.dims()} uint8", where
        )
    return plane


def _read_guidance(store: ReleaseStore, png: str, hw: tuple[int, int]) -> Guidance:
    """The cells of an image from its first channel's guidance file: none when there is no file (an image
    without cells has none); centroids outside the image are clipped to its border."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    rel = guidance_path(png)
    data = read_or_none(store, rel, "guidance file", _key(store, rel))
    if data is None:
        return Guidance(np.zeros((0, 2), np.int32))
    try:
        tensors = load(data)
        c = np.asarray(tensors["data"])
        sizes = tensors.get("sizes")
        if c.ndim != 2 or c.shape[1] != 2 or len(c) > MAX_GUIDANCE_CELLS or c.dtype.kind not in "iuf":
            raise ValueError(f"data is {c.shape} {c.dtype}, not (N, 2) numbers")
        if sizes is not None and np.asarray(sizes).shape != (len(c),):
            raise ValueError(f"sizes is {np.asarray(sizes).shape}, not ({len(c)},)")
    except (SafetensorError, KeyError, ValueError) as exc:
        raise ItemSkip(f"unreadable guidance file ({type(exc).__name__}: {exc})", store.path(rel)) from None
    h, w = hw
    xy = np.rint(c).astype(np.int64)
    xy = np.stack([np.clip(xy[:, 0], 0, w - 1), np.clip(xy[:, 1], 0, h - 1)], axis=1).astype(np.int32)
    return Guidance(xy, None if sizes is None else np.asarray(sizes, dtype=np.float32))
