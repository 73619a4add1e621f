"""The published CHAMMI-75 layout: prefixes, metadata tables and columns, and how a unit carries its images.

The facts (issue 19; the reference loader is the authority where its README is out of date):

- ``CHAMMI-75/CHAMMI-75_train/<study>/<file>.png``: one 8-bit single-channel PNG per channel, named
  ``<source image id>-ch<k>.png`` with a 0-based ``k``; keys may hold ``+``, ``[`` and ``]``.
- ``CHAMMI-75/CHAMMI-75_guidance/<study>/<file>.safetensors``: per PNG, the same path with ``CHAMMI-75_train``
  -> ``CHAMMI-75_guidance`` and ``.png`` -> ``.safetensors``; key ``data``: int (N, 2) cell centroids as
  (x = column, y = row), optional ``sizes``: (N,) areas in pixels. An image without cells has no file.
- ``CHAMMI-75/CHAMMI-75_train_metadata.csv`` (about 8 M rows) and ``CHAMMI-75_small_metadata.csv`` (a
  subset): one row per PNG. Column order and extra columns are not guaranteed (we select by name); every value
  is read as a string (well, plate, fov, magnification, depth and z_slice must stay strings); a missing value
  is ``"unknown"``, a row that is not a control says ``"no"``; ``imaging.channel`` is 1-based;
  ``storage.path`` is relative to the ``CHAMMI-75/`` prefix.
- One multi-channel image = the rows sharing ``imaging.multi_channel_id``, ordered by ``imaging.channel``;
  its channel names are the rows' ``imaging.channel_type``.

A unit's payload carries its images as text (one line per image, fields separated by tabs, the channel
files of an image by ``\\x1e``, a file's path and channel type by ``\\x1f``): built column-wise by Arrow at
discovery, so planning 8 M rows never makes a Python object per row.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The dataset in its public bucket (us-west-2, anonymous reads).
BUCKET_ROOT = "s3://chammi-data/CHAMMI-75"
TRAIN_PREFIX = "CHAMMI-75_train"
GUIDANCE_PREFIX = "CHAMMI-75_guidance"
#: ``metadata`` option -> table file name under the root (any other value is a path or URL of a table).
METADATA_TABLES = {"full": "CHAMMI-75_train_metadata.csv", "small": "CHAMMI-75_small_metadata.csv"}
#: The value CHAMMI-75 writes for a missing field.
MISSING = "unknown"

STUDY = "experiment.study"
MCID = "imaging.multi_channel_id"
CHANNEL = "imaging.channel"
CHANNEL_TYPE = "imaging.channel_type"
N_CHANNELS = "geometry.channels"
PATH = "storage.path"
#: Columns a table must have.
REQUIRED_COLUMNS = (STUDY, MCID, CHANNEL, CHANNEL_TYPE, N_CHANNELS, PATH)
#: Image-level columns kept in a cell's ``meta`` (taken from the image's first channel row) when the table
#: has them, under their own names. Every manifest row carries them (2.8 M rows): the rest of the table stays
#: in the table, found again by ``imaging.multi_channel_id``.
META_COLUMNS = (
    MCID,
    STUDY,
    "experiment.plate",
    "experiment.well",
    "experiment.reagent",
    "experiment.control",
    "biology.organism",
    "biology.cell_line",
    "biology.cell_type",
    "microscopy.type",
    "microscopy.magnification",
    "microscopy.fov",
)
#: Characters that separate the fields of a unit's text (removed from values before encoding).
FIELD, IMAGE_SEP, FILE_SEP, PART_SEP = "\t", "\n", "\x1e", "\x1f"
SEPARATORS_RE = "[\t\n\r\x1e\x1f]"


def guidance_path(png: str) -> str:
    """The guidance file of a channel PNG (``storage.path``): train -> guidance prefix, .png -> .safetensors.

    Raises ``ValueError`` for a path outside ``CHAMMI-75_train/`` or without the ``.png`` suffix."""
    if not png.startswith(TRAIN_PREFIX + "/") or not png.endswith(".png"):
        raise ValueError(f"storage.path {png!r} is not {TRAIN_PREFIX}/<study>/<file>.png")
    return GUIDANCE_PREFIX + png[len(TRAIN_PREFIX) : -len(".png")] + ".safetensors"


@dataclass(frozen=True)
class ImageEntry:
    """One multi-channel image of a unit: its id, its meta columns and its channel files in channel order."""

    mcid: str
    meta: dict[str, str]
    files: tuple[str, ...]  #: ``storage.path`` of each channel, relative to the root
    types: tuple[str, ...]  #: ``imaging.channel_type`` of each channel


def parse_unit_images(text: str, columns: list[str]) -> list[ImageEntry]:
    """The images of a unit payload's text (see the module docstring); ``columns`` name the meta fields
    (:data:`MCID` and :data:`STUDY` among them), in the order of each line."""
    out = []
    for line in text.split(IMAGE_SEP):
        fields = line.split(FIELD)
        if len(fields) != len(columns) + 1:
            raise ValueError(f"unit payload line has {len(fields)} fields, expected {len(columns) + 1}")
        meta = dict(zip(columns, fields[:-1], strict=True))
        files, types = zip(*(f.split(PART_SEP) for f in fields[-1].split(FILE_SEP)), strict=True)
        out.append(ImageEntry(meta[MCID], meta, files, types))
    return out
