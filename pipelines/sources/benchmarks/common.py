"""What the adapters of the CHAMMI-75 benchmark suite share: where their input is, how they read it, and the
one shape of a benchmark build source.

An adapter turns one benchmark's published test layout into a release (``chammi-build --source NAME --input
DIR|URL``) whose rows carry, in ``meta``, exactly the table columns its scorer needs
(``chammi_data.evaluation.benchmarks``); features embedded from the release are row-aligned with that table
by construction. Every adapter reads through one ``chammi_data.store`` object, so the same code reads a
folder or the public bucket (anonymously: ``anonymous: auto``).

**Where the input is.** ``--input`` may be the benchmark's own folder or any folder above it: the adapter
looks for its layout's marker (a metadata table, the site folders) at the input, then at ``input/<prefix>``
(option ``prefix``; each adapter documents its default, the published sub-path of
``s3://chammi-data/CHAMMI-75/`` where it is known). So ``--input s3://chammi-data/CHAMMI-75`` and
``--input s3://chammi-data/CHAMMI-75/CHAMMI-75_test/rbc-mc`` read the same data.

**Splits.** A benchmark's test set is held out from pretraining: every row is ``Validation``
(``load("validation", root=...)``); the protocol's own splits (CellPHIE's ``train`` flag, HPAv23's antibody
lists) travel in ``meta`` and are the scorer's business.
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from chammi_data.format.release_format import VALIDATION, canonical_json
from chammi_data.format.schema import Cell
from chammi_data.format.vocab import TASK_COLUMNS, to_names
from chammi_data.store.credentials import client_environment
from chammi_data.store.storage import ReleaseStore, open_store
from pipelines.sources.base import Skipped, SourcePipeline, Unit, UnitResult
from pipelines.sources.chammi75.pipeline import storage_options
from pipelines.steps.rawio import (
    ImageHeader,
    ImageTooLarge,
    ItemSkip,
    check_size,
    png_header_bytes,
    read_or_none,
)

#: The prefix under the CHAMMI-75 root that holds the benchmarks' test data.
TEST_PREFIX = "CHAMMI-75_test"
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

#: Options every benchmark adapter has (each adapter adds its own and sets ``prefix``).
COMMON_DEFAULTS: dict[str, Any] = {
    "prefix": "",  # sub-path of --input that holds the layout when --input is a folder above it
    "items_per_unit": 128,  # images per work unit (each unit is spilled on its own: resume granularity)
    "anonymous": "auto",  # true | false | auto (anonymous for the public chammi-data bucket)
    "storage_options": {},  # fsspec options of the input (credentials come from the standard places)
    "max_image_pixels": 50_000_000,  # refuse an image whose header says it is larger, before decoding
}


@functools.lru_cache(maxsize=8)
def _cached_store(root: str, options_json: str, _environment: str) -> ReleaseStore:
    return open_store(root, json.loads(options_json) or None)


def input_store(root: str, opts: Mapping[str, Any]) -> ReleaseStore:
    """The store of an input folder or URL (one per process, root, options and client environment:
    connections are reused; a changed endpoint or identity gets a new store)."""
    return _cached_store(str(root), canonical_json(storage_options(str(root), opts)), client_environment())


def resolve_root(
    root: str | Path, opts: Mapping[str, Any], has_layout: Callable[[ReleaseStore], bool]
) -> str:
    """``root`` itself when ``has_layout`` finds the benchmark's layout there, else ``root/<prefix>``; a
    ``FileNotFoundError`` naming both places otherwise."""
    base = str(root).rstrip("/")
    tried = [base]
    if has_layout(input_store(base, opts)):
        return base
    prefix = str(opts.get("prefix") or "").strip("/")
    if prefix:
        sub = f"{base}/{prefix}"
        tried.append(sub)
        if has_layout(input_store(sub, opts)):
            return sub
    raise FileNotFoundError(f"no benchmark layout found at {' nor at '.join(tried)}")


def read_table(
    store: ReleaseStore, rel: str, what: str, required: Sequence[str], sep: str = ","
) -> pd.DataFrame:
    """A CSV table of the input with every value as a string ('' for empty cells); errors name the file and
    the missing columns."""
    data = read_or_none(store, rel, what)
    if data is None:
        raise FileNotFoundError(f"{what} {store.path(rel)} not found")
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, sep=sep)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {store.path(rel)} is not a readable table: {exc}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(
            f"{what} {store.path(rel)} lacks column(s) {', '.join(missing)}; has {', '.join(table.columns)}"
        )
    return table


def read_image(store: ReleaseStore, rel: str, what: str, max_pixels: int, option: str) -> np.ndarray:
    """The image file ``rel`` of the input decoded (:func:`decode_image`); a missing file is an
    :class:`ItemSkip` (``missing <what>``) naming it."""
    data = read_or_none(store, rel, what)
    if data is None:
        raise ItemSkip(f"missing {what}", store.path(rel))
    return decode_image(data, store.path(rel), max_pixels, option)


def decode_image(data: bytes, where: str, max_pixels: int, option: str) -> np.ndarray:
    """A PNG or TIFF (recognised by content) as uint8 / uint16 pixels (:func:`integer_image`), its header
    checked against ``max_pixels`` before a pixel is decoded; (H, W) for a grey image, (H, W, S) for S
    samples per pixel. Raises :class:`ItemSkip` naming ``where``."""
    return integer_image(_decode(data, where, max_pixels, option), where)


def _decode(data: bytes, where: str, max_pixels: int, option: str) -> np.ndarray:
    try:
        if data[:8] == _PNG:
            header = png_header_bytes(data[:26])
            check_size(header, max_pixels, where, option)
            import imagecodecs

            return np.asarray(imagecodecs.png_decode(data))
        if data[:4] in _TIFF:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tf:
                series = tf.series[0]
                check_size(ImageHeader.of_series(series), max_pixels, where, option)
                return np.asarray(series.asarray())
        from PIL import Image

        with warnings.catch_warnings():  # the size limit is ours to apply, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                check_size(ImageHeader((im.size[1], im.size[0]), 8), max_pixels, where, option)
                return np.asarray(im)
    except ImageTooLarge as exc:
        raise ItemSkip(str(exc), where) from None
    except Exception as exc:  # a truncated or corrupt file, whatever library read it
        raise ItemSkip(f"unreadable image ({type(exc).__name__}: {exc})", where) from None


def integer_image(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` as uint8 / uint16 (the release's pixel types); other integer types whose values fit in
    16 bits are converted, anything else is an :class:`ItemSkip` naming the file."""
    if array.dtype in (np.uint8, np.uint16):
        return array
    if array.dtype.kind in "iu" and array.size and 0 <= int(array.min()) and int(array.max()) <= 65535:
        return array.astype(np.uint16)
    raise ItemSkip(f"pixels are {array.dtype}, not 8- or 16-bit integers", where)


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into consecutive lists of at most ``size``."""
    return [list(items[i : i + size]) for i in range(0, len(items), max(1, int(size)))]


def item_units(source: str, prefix: str, root: str, key: str, items: Sequence[Any], per: int) -> list[Unit]:
    """``items`` cut into units of ``per`` (ids ``<prefix>-000000``...), payloads ``{"root", key: items}``."""
    return [
        Unit(source, f"{prefix}-{k:06d}", {"root": root, key: part}, items=len(part))
        for k, part in enumerate(chunks(items, per))
    ]


def check_channel_list(value: Any, key: str, count: int | None = None) -> tuple[str, ...]:
    """A configured channel list: registry names (``chammi_data.format.vocab``), distinct, ``count`` long."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"config {key} must be a list of channel names, got {value!r}")
    try:
        names = to_names(value)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"config {key}: {exc.args[0]}") from None
    if count is not None and len(names) != count:
        raise ValueError(f"config {key} must name {count} channels, got {len(names)}")
    return names


class BenchmarkPipeline(SourcePipeline):
    """A benchmark adapter: the source key is the build name, every row ``Validation``, no task rules, rows
    stored by image group (size and channels) like CHAMMI-75's."""

    unit_kind = cell_kind = "images"
    order = "group"
    units_per_task = 1
    #: the benchmark's registry name (``chammi_data.evaluation.benchmarks``)
    benchmark: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.key = cls.name
        cls.makes = (cls.name,)

    def check_options(self, opts: dict[str, Any]) -> None:
        name = self.name
        if not isinstance(opts["prefix"], str):
            raise ValueError(f"config {name}.prefix must be a path under --input, got {opts['prefix']!r}")
        for key in ("items_per_unit", "max_image_pixels"):
            if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
                raise ValueError(f"config {name}.{key} must be a positive integer, got {opts[key]!r}")
        if opts["anonymous"] not in (True, False, "auto"):
            raise ValueError(
                f"config {name}.anonymous must be true, false or auto, got {opts['anonymous']!r}"
            )
        if not isinstance(opts["storage_options"], Mapping):
            raise ValueError(f"config {name}.storage_options must be a mapping of fsspec options")

    def rules_digest(self, config: Mapping[str, Any]) -> str:
        """No task rules: every row is ``Validation``."""
        return f"benchmark:{self.benchmark}"

    def assign(self, table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
        """Every row ``Validation`` (held out from pretraining), no task."""
        out = pd.DataFrame({"cell_id": table["cell_id"].to_numpy(), "train_test_split": VALIDATION})
        for col in TASK_COLUMNS:
            out[col] = False
        return out

    def file_cells(
        self,
        unit: Unit,
        opts: Mapping[str, Any],
        names: tuple[str, ...],
        to_image: Callable[[np.ndarray, str], np.ndarray],
        identify: Callable[[int, str, dict[str, Any]], tuple[str, str, dict[str, str]]],
    ) -> UnitResult:
        """The cells of a unit whose ``payload["cells"]`` are ``[table row, image file, table meta]``, one
        image file per cell. Each file is read (at most ``max_image_pixels``) and ``to_image(pixels, where)``
        makes it the cell's (C, H, W) image with channels ``names``, raising :class:`ItemSkip` when its shape
        is wrong; ``identify(row, file, meta)`` gives the cell's (label, cell id, groups). A cell's meta is
        the table's plus ``file`` and ``row``; a file that cannot be read or is rejected is skipped, with its
        table row."""
        store = input_store(unit.payload["root"], opts)
        cells, skipped = [], []
        for row, rel, meta in unit.payload["cells"]:
            try:
                limit = opts["max_image_pixels"]
                pixels = read_image(store, rel, "cell image", limit, f"{self.name}.max_image_pixels")
                image = to_image(pixels, store.path(rel))
            except ItemSkip as exc:
                skipped.append(Skipped(self.name, unit.unit_id, exc.reason, exc.file, row))
                continue
            label, cell_id, groups = identify(row, rel, meta)
            cells.append(
                Cell(
                    image,
                    names,
                    self.name,
                    label,
                    cell_id,
                    meta={**meta, "file": rel, "row": row},
                    groups=groups,
                )
            )
        return UnitResult(cells, skipped)

    def synth(self, out_dir: Path, seed: int = 0) -> None:
        import importlib

        importlib.import_module(f"{type(self).__module__.rpartition('.')[0]}.synth").write_sample(
            out_dir, seed
        )
