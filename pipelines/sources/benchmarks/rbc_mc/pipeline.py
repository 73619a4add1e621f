"""RBC-MC -> a release (``chammi-build --source rbc_mc --input DIR|URL``).

The published test layout (bright-field imaging-flow-cytometry images of red blood cells, two sites):

    <root>/Swiss/**/<class>/<name>.ome.tif
    <root>/Canadian/**/<class>/<name>.ome.tif

The site is the top folder, the class the file's parent folder (one of the seven RBC-MC classes, or
``Undecidable``, which the protocol excludes). Default ``prefix``: ``CHAMMI-75_test/rbc-mc`` (the bucket
prefix ``s3://chammi-data/CHAMMI-75/CHAMMI-75_test/rbc-mc/`` of the published tutorial).

One sample = one image, stored with its exact pixels (8- or 16-bit, one ``bright-field`` channel: option
``channel``); the protocol's resize to 224 happens at embedding. ``meta``: ``site``, ``label`` (the scorer's
table) and ``file`` (relative to the root). Images of a size form their own group (rows are ordered by
site, size, then id).

Skips, each naming its file: ``Undecidable`` images (excluded by the protocol), a class folder that is not an
RBC-MC class, a file directly in a site folder (no class), and per image an unreadable file, a file over
``max_image_pixels``, pixels that are not one 8/16-bit plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from chammi_data.evaluation.benchmarks.rbc_mc import CLASSES, EXCLUDED
from chammi_data.format.schema import Cell, make_cell_id
from pipelines.sources.base import Discovery, Skipped, Unit, UnitResult
from pipelines.sources.benchmarks.common import (
    COMMON_DEFAULTS,
    TEST_PREFIX,
    BenchmarkPipeline,
    ItemSkip,
    check_channel_list,
    input_store,
    item_units,
    read_image,
    resolve_root,
)

#: The sites are the layout's top folders (training and test sites of the protocol); the classes and the
#: excluded class are the scorer's (``chammi_data.evaluation.benchmarks.rbc_mc``).
SITES = ("Swiss", "Canadian")
PATTERN = "**/*.ome.tif"


class RBCMCPipeline(BenchmarkPipeline):
    """Site folders of class folders of OME-TIFFs -> one bright-field sample per image."""

    name = "rbc_mc"
    benchmark = "rbc-mc"
    DEFAULTS: dict[str, Any] = {
        **COMMON_DEFAULTS,
        "prefix": f"{TEST_PREFIX}/rbc-mc",  # the published bucket prefix
        "items_per_unit": 512,  # small images: many per unit
        "channel": "bright-field",  # the CHAMMI-75 type of the single channel
    }

    def check_options(self, opts: dict[str, Any]) -> None:
        super().check_options(opts)
        check_channel_list([opts["channel"]], "rbc_mc.channel", 1)

    def tables(self, opts: Any) -> tuple[str, ...]:
        return SITES

    def discover(self, input_dir: Path | str, opts: dict[str, Any]) -> Discovery:
        root = resolve_root(input_dir, opts, _has_sites)
        store = input_store(root, opts)
        items, skipped = [], []
        for site in SITES:
            for rel in store.glob(f"{site}/{PATTERN}") or []:
                parts = rel.split("/")
                label = parts[-2] if len(parts) > 2 else ""
                reason = ""
                if len(parts) <= 2:
                    reason = "file directly in the site folder: its class folder is missing"
                elif label == EXCLUDED:
                    reason = f"class {EXCLUDED} is excluded by the RBC-MC protocol"
                elif label not in CLASSES:
                    reason = f"class folder {label!r} is not an RBC-MC class ({', '.join(CLASSES)})"
                if reason:
                    skipped.append(Skipped(self.name, "discover", reason, store.path(rel), kind="images"))
                else:
                    items.append([rel, site, label])
        units = item_units(self.name, "images", root, "items", items, opts["items_per_unit"])
        return Discovery(units, skipped, found={"images": len(items) + len(skipped)})

    def process(self, unit: Unit, opts: dict[str, Any]) -> UnitResult:
        store = input_store(unit.payload["root"], opts)
        channel = (opts["channel"],)
        cells, skipped = [], []
        for rel, site, label in unit.payload["items"]:
            where = store.path(rel)
            try:
                limit = opts["max_image_pixels"]
                plane = np.squeeze(read_image(store, rel, "image file", limit, "rbc_mc.max_image_pixels"))
                if plane.ndim != 2:
                    raise ItemSkip(f"image is {plane.shape}, not one bright-field plane", where)
            except ItemSkip as exc:
                skipped.append(Skipped(self.name, unit.unit_id, exc.reason, exc.file))
                continue
            meta = {"site": site, "label": label, "file": rel}
            cell_id = make_cell_id(self.name, rel)
            cells.append(
                Cell(plane[None], channel, self.name, label, cell_id, meta=meta, groups={"dataset": site})
            )
        return UnitResult(cells, skipped)


def _has_sites(store: Any) -> bool:
    """The layout is here when a site folder holds at least one OME-TIFF."""
    return any(store.glob(f"{site}/{PATTERN}") for site in SITES)
