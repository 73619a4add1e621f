"""Cell Painting raw layout: the tables and file names of a plate, read without pixels.

The layout follows the Cell Painting Gallery closely enough that a Gallery download can be arranged into it
by moving folders, never by rewriting files::

    <root>/<dataset>/                   dataset folder: LINCS | CDRP | BBBC022 (its name -> groups["dataset"])
      platemaps/barcode_platemap.csv    Assay_Plate_Barcode, Plate_Map_Name
      platemaps/<Plate_Map_Name>.txt    tab-separated: well_position, broad_sample, mmoles_per_liter, solvent
      <plate>/load_data.csv[.gz]        one row per site (optional for ImageXpress names, see below)
      <plate>/images/*.tif[f]           16-bit TIFF, one per channel per site
      <plate>/illum/<plate>_Illum<Ch>.npy                  optional illumination functions (divide),
                                                           Ch in DNA ER RNA AGP Mito
      <plate>/analysis/<plate>-<well>-<site>/Nuclei.csv    per-site CellProfiler nuclei, or
      <plate>/Nuclei.csv (+ <plate>/Image.csv)             per-plate nuclei, or
      <plate>/<plate>.sqlite                               CellProfiler SQLite backend (tables Image, Nuclei)

The root is any location (a folder, ``s3://...``, ...; :mod:`pipelines.steps.rawinput`): discovery lists it
once and reads only the tables; every path below is relative to the root. Channel files named by URL
(``URL_<Channel>`` columns, or ``PathName_`` folders holding ``s3://``, ``gs://``, ``https://`` URLs: the
Gallery's own form) are read where they are, by the worker that processes the site, unless a file of the
same name lies in ``<plate>/images/`` (a copy the user downloaded); an absolute path of another machine is
taken from ``<plate>/images/`` the same way. ``platemaps/`` is looked up from the plate folder upwards, so a
plate may sit deeper (``<dataset>/<batch>/<plate>``); the folder holding ``platemaps/`` names the dataset.
Paths in ``load_data.csv`` (``PathName_`` or ``URL_`` columns) that are relative are taken relative to the
folder of ``load_data.csv``.

**The Gallery's own layout** is read as it is, with the input at a project's ``workspace``
(``s3://cellpainting-gallery/<project>/<source>/workspace``)::

    load_data_csv/<batch>/<plate>/load_data.csv[.gz]       the plate's sites
    metadata/platemaps/<batch>/barcode_platemap.csv        and .../platemap/<Plate_Map_Name>.txt
    analysis/<batch>/<plate>/analysis/<plate>-<well>-<site>/Nuclei.csv   (or .../<well>-<site>/)
    backend/<batch>/<plate>/<plate>.sqlite
    ../images/<batch>/illum/<plate>/<plate>_Illum<Ch>.npy  (or FileName_/PathName_Illum<Ch> columns)

A channel file named by an absolute path of the machine that ran CellProfiler (``/home/ubuntu/bucket/
projects/.../<batch>/images/<plate>/...``) is read from the same place under ``<project>/<source>/images/``
(:func:`gallery_plate`, :func:`gallery_image`). The dataset is the project's (``cpg0004-lincs``: LINCS,
``cpg0012-wawer-bioactivecompoundprofiling``: CDRP) unless the option ``cp.dataset`` names it.

A plate folder without ``load_data.csv`` is read from its ImageXpress file names (``<prefix>_<Well>_s<site>_
w<1-5><GUID>.tif``, w1 DNA .. w5 Mito), or from Phenix names (``r01c01f01p01-ch1sk1fk1fl1.tiff``) when the
build config gives the Phenix channel numbers (they differ between projects). The nucleus position files
are read by :mod:`pipelines.sources.cp.positions`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

#: CellProfiler channel names in CHAMMI tile order, and their vocabulary names.
RAW_CHANNELS: tuple[str, ...] = ("DNA", "ER", "RNA", "AGP", "Mito")
RAW_TO_VOCAB: dict[str, str] = {"DNA": "nucleus", "ER": "er", "RNA": "rna", "AGP": "golgi", "Mito": "mito"}
#: ImageXpress wavelength index -> channel (BBBC022 convention).
IXM_WAVELENGTHS: dict[int, str] = {1: "DNA", 2: "ER", 3: "RNA", 4: "AGP", 5: "Mito"}

PHENIX_RE = re.compile(
    r"^r(?P<row>\d{2})c(?P<col>\d{2})f(?P<site>\d{2})p\d{2}-ch(?P<ch>\d+)sk\d+fk\d+fl\d+\.tiff?$",
    re.IGNORECASE,
)
IXM_RE = re.compile(
    r"^(?P<prefix>.+?)_(?P<well>[A-Pa-p]\d{2})_s(?P<site>\d+)_w(?P<w>[1-9])(?P<guid>[0-9A-Fa-f-]*)"
    r"\.tiff?$"
)
_REMOTE_SCHEMES = ("http", "https", "s3", "s3a", "gs", "gcs", "ftp", "az", "abfs")
#: file names of a plate's site table
LOAD_DATA = ("load_data.csv", "load_data.csv.gz", "load_data_with_illum.csv", "load_data_with_illum.csv.gz")
#: Cell Painting Gallery projects of CHAMMI's CP plates -> CHAMMI's dataset name
GALLERY_DATASETS = {"cpg0004-lincs": "LINCS", "cpg0012-wawer-bioactivecompoundprofiling": "CDRP"}


def gallery_plate(plate_dir: str) -> tuple[str, str, str] | None:
    """(workspace, batch, plate) for a plate folder ``<workspace>/load_data_csv/<batch>/<plate>`` of the
    Gallery's layout (paths relative to the input root), else None."""
    parts = plate_dir.strip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "load_data_csv":
        return "/".join(parts[:-3]), parts[-2], parts[-1]
    return None


def gallery_image(path: str, batch: str, images_root: str) -> str | None:
    """A CellProfiler machine's absolute path ``.../<batch>/images/<plate>/<file>`` as the Gallery URL
    ``<images_root>/<batch>/images/<plate>/<file>``; None when the path does not hold ``/<batch>/``."""
    marker = f"/{batch}/"
    if marker not in path:
        return None
    return f"{images_root.rstrip('/')}/{batch}/{path.split(marker, 1)[1]}"


class LayoutError(ValueError):
    """A plate table is unusable as a whole; the message names the file (and row) and the problem."""


@dataclass
class SiteRow:
    """One site of a plate as its table describes it: where each channel's file is."""

    plate: str
    well: str
    site: int
    files: dict[str, str]  #: raw channel (DNA, ER, ...) -> path relative to the input root, or a full URL
    table: str  #: file the row came from (load_data.csv, or the images folder), relative to the root
    row: int | None  #: line number in ``table`` (header = line 1), None for file-name discovery
    problems: list[str] = field(
        default_factory=list
    )  #: reasons the site cannot be used (missing/remote files)
    illum: dict[str, str] = field(default_factory=dict)  #: channel -> illumination function the row names


def normalise_well(well: str) -> str:
    """``a1`` / ``A1`` / ``A01`` -> ``A01`` (row letter, two-digit column)."""
    m = re.fullmatch(r"\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*", str(well))
    if not m:
        raise ValueError(f"not a well name: {well!r}")
    return f"{m.group(1).upper()}{int(m.group(2)):02d}"


def well_from_row_col(row: int, col: int) -> str:
    """Phenix r/c numbers (1-based) -> ``A01``."""
    return f"{chr(ord('A') + row - 1)}{col:02d}"


def label_from_broad_sample(broad_sample: object) -> str:
    """CHAMMI label: first 13 characters of ``broad_sample`` (``BRD-K21680192``); empty or missing ->
    ``DMSO``."""
    if broad_sample is None or (isinstance(broad_sample, float) and pd.isna(broad_sample)):
        return "DMSO"
    text = str(broad_sample).strip()
    if not text or text.upper() in ("NAN", "DMSO"):
        return "DMSO"
    return text[:13]


def _join(base: str, rel: str) -> str:
    """``base/rel`` normalised (``..`` and ``.`` resolved), ``/``-separated."""
    return posixpath.normpath(posixpath.join(base, rel)).lstrip("/") if base else posixpath.normpath(rel)


def _resolve_url(url: str, base: str, raw: Any) -> tuple[str, str | None]:
    """(where, problem) for a ``URL_Orig`` value: a remote URL as it is, ``file://`` as a path, a relative one
    relative to the table's folder ``base``; an unknown scheme is a problem."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in _REMOTE_SCHEMES:
        return url, None
    if scheme == "file":
        path = unquote(parsed.path)
        return (raw.rel_of(path) or path), None
    if scheme and len(scheme) > 1:
        return url, f"unsupported URL scheme {parsed.scheme!r} in {url!r}"
    return (raw.rel_of(url) or url) if url.startswith("/") else _join(base, url), None


def read_load_data(
    raw: Any, table: str, listing: Collection[str], images_root: str | None = None
) -> list[SiteRow]:
    """Sites of a plate's ``load_data.csv`` (``table``: its path in the input ``raw``; FileName/PathName or
    URL columns); ``listing``: every file of the input (relative paths), for the files' existence.

    A channel named by a remote URL is kept as the URL (read where it is) unless ``<plate>/images/`` holds a
    file of that name; with ``images_root`` (a Gallery plate) an absolute path of another machine is read
    from the Gallery (:func:`gallery_image`). Illumination columns (``FileName_Illum<Ch>``,
    ``PathName_Illum<Ch>``) go to ``SiteRow.illum``. A row without a file for a channel keeps the problem in
    ``SiteRow.problems`` (the caller skips it with file and row). A table without the Metadata or channel
    columns raises :class:`LayoutError`.
    """
    where = raw.path(table)
    try:
        df = raw.table(table, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LayoutError(f"{where}: cannot read load_data table ({type(exc).__name__}: {exc})") from None
    need = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c not in df.columns]
    if need:
        raise LayoutError(f"{where}: missing column(s) {need}")
    missing = [
        ch
        for ch in RAW_CHANNELS
        if f"FileName_Orig{ch}" not in df.columns and f"URL_Orig{ch}" not in df.columns
    ]
    if missing:
        raise LayoutError(f"{where}: no FileName_Orig<Ch> or URL_Orig<Ch> column for channel(s) {missing}")
    base = posixpath.dirname(table)
    batch = (gallery_plate(base) or ("", "", ""))[1]

    def foreign(full: str, name: str) -> str:
        # an absolute path of another machine: a downloaded copy in images/, else the Gallery's object
        inside = raw.rel_of(full)
        if inside in listing:
            return inside  # type: ignore[return-value]
        moved = gallery_image(full, batch, images_root) if images_root and batch else None
        return local_copy(name) or inside or moved or full

    def local_copy(name: str) -> str | None:
        # Gallery tables carry absolute paths of the machine that made them, or s3 URLs: a file of the same
        # name in <plate>/images/ is the same image downloaded by the user; it is read instead
        cand = _join(base, f"images/{posixpath.basename(urlparse(name).path)}")
        return cand if cand in listing else None

    sites: list[SiteRow] = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        problems: list[str] = []
        try:
            well, site = normalise_well(rec["Metadata_Well"]), int(rec["Metadata_Site"])
        except ValueError as exc:
            raise LayoutError(f"{where} line {line}: bad Metadata_Well/Site ({exc})") from None
        files: dict[str, str] = {}
        for ch in RAW_CHANNELS:
            name = rec.get(f"FileName_Orig{ch}", "")
            if name:
                folder = rec.get(f"PathName_Orig{ch}", "")
                if folder.lower().startswith(tuple(s + "://" for s in _REMOTE_SCHEMES)):
                    url = f"{folder.rstrip('/')}/{name}"
                    files[ch] = local_copy(name) or (raw.rel_of(url) or url)
                    continue
                if folder.startswith("/") or name.startswith("/"):
                    files[ch] = foreign(posixpath.join(folder, name) if folder else name, name)
                    continue
                rel = _join(base, posixpath.join(folder, name) if folder else name)
                files[ch] = rel if rel in listing else (local_copy(name) or rel)
            elif rec.get(f"URL_Orig{ch}", ""):
                files[ch], problem = _resolve_url(rec[f"URL_Orig{ch}"], base, raw)
                if problem is None and files[ch] not in listing:
                    files[ch] = local_copy(files[ch]) or files[ch]
                if problem:
                    problems.append(f"channel {ch}: {problem}")
            else:
                problems.append(f"channel {ch}: no file name in this row")
        illum = {}
        for ch in RAW_CHANNELS:
            name, folder = rec.get(f"FileName_Illum{ch}", ""), rec.get(f"PathName_Illum{ch}", "")
            if name:
                full = posixpath.join(folder, name) if folder else name
                remote = full.lower().startswith(tuple(s + "://" for s in _REMOTE_SCHEMES))
                illum[ch] = (
                    full if remote else (foreign(full, name) if full.startswith("/") else _join(base, full))
                )
        sites.append(SiteRow(rec["Metadata_Plate"], well, site, files, table, line, problems, illum))
    return sites


def sites_from_filenames(
    images_dir: str, plate: str, phenix_channels: dict[int, str] | None, listing: Collection[str]
) -> list[SiteRow]:
    """Sites of a plate without ``load_data.csv``: ImageXpress names, or Phenix names given the channel
    numbers, of the files under ``images_dir`` (a path relative to the input root; ``listing``: every file of
    the input).

    ``phenix_channels`` maps Phenix ``ch`` numbers to raw channels (``{1: "DNA", ...}``). A site missing a
    channel file gets a problem naming it.
    """
    groups: dict[tuple[str, int], dict[str, str]] = {}
    prefix = images_dir.rstrip("/") + "/"
    for p in sorted(f for f in listing if f.startswith(prefix)):
        fname = posixpath.basename(p)
        m = IXM_RE.match(fname)
        if m and int(m.group("w")) in IXM_WAVELENGTHS:
            key, ch = (
                (normalise_well(m.group("well")), int(m.group("site"))),
                IXM_WAVELENGTHS[int(m.group("w"))],
            )
        else:
            m = PHENIX_RE.match(fname)
            if not m or not phenix_channels or int(m.group("ch")) not in phenix_channels:
                continue
            key = (well_from_row_col(int(m.group("row")), int(m.group("col"))), int(m.group("site")))
            ch = phenix_channels[int(m.group("ch"))]
        files = groups.setdefault(key, {})
        if ch in files:
            files[ch] = files[ch] + "|" + p  # two files claim one channel: flagged below
        else:
            files[ch] = p
    sites = []
    for (well, site), files in sorted(groups.items()):
        problems = [
            f"channel {ch}: no image file for well {well} site {site}"
            for ch in RAW_CHANNELS
            if ch not in files
        ]
        problems += [f"channel {ch}: several files {v.split('|')}" for ch, v in files.items() if "|" in v]
        sites.append(SiteRow(plate, well, site, files, images_dir, None, problems))
    return sites


def plate_dirs(listing: Collection[str]) -> list[str]:
    """Plate folders (relative paths) among the input's files: those with ``load_data.csv[.gz]``, or with an
    ``images/`` folder and no table."""
    tables = {posixpath.dirname(f) for f in listing if posixpath.basename(f) in LOAD_DATA}
    with_images = set()
    for f in listing:
        parts = f.split("/")
        if "images" in parts[:-1]:
            with_images.add("/".join(parts[: parts.index("images")]))
    return sorted(tables | {d for d in with_images if d not in tables})


def plate_table(plate_dir: str, listing: Collection[str]) -> str | None:
    """The plate's ``load_data.csv`` (or ``.csv.gz``), None when it has none."""
    for name in LOAD_DATA:
        cand = _join(plate_dir, name)
        if cand in listing:
            return cand
    return None


def find_platemaps(plate_dir: str, listing: Collection[str]) -> str | None:
    """The nearest ``platemaps/`` folder holding ``barcode_platemap.csv``, from the plate folder up to the
    input root (relative paths; ``listing``: every file of the input); for a Gallery plate its batch's
    ``metadata/platemaps/<batch>/``."""
    gallery = gallery_plate(plate_dir)
    if gallery is not None:
        cand = _join(gallery[0], f"metadata/platemaps/{gallery[1]}/barcode_platemap.csv")
        if cand in listing:
            return posixpath.dirname(cand)
    here = plate_dir.strip("/")
    while True:
        cand = _join(here, "platemaps/barcode_platemap.csv")
        if cand in listing:
            return posixpath.dirname(cand)
        if not here:
            return None
        here = posixpath.dirname(here)


@dataclass
class WellInfo:
    """What the platemap says about one well."""

    broad_sample: str
    mmoles_per_liter: float | None
    solvent: str
    label: str


def read_platemap(raw: Any, platemaps: str, plate: str) -> tuple[dict[str, WellInfo], str]:
    """{well: WellInfo} for ``plate`` via ``barcode_platemap.csv`` -> ``<Plate_Map_Name>.txt`` in the folder
    ``platemaps`` of the input ``raw``; also the map file (relative to the root)."""
    barcode_file = _join(platemaps, "barcode_platemap.csv")
    bc = raw.table(barcode_file, dtype=str, keep_default_na=False)
    for col in ("Assay_Plate_Barcode", "Plate_Map_Name"):
        if col not in bc.columns:
            raise LayoutError(f"{raw.path(barcode_file)}: missing column {col!r}")
    hit = bc[bc["Assay_Plate_Barcode"].str.strip() == plate]
    if hit.empty:
        raise LayoutError(f"{raw.path(barcode_file)}: plate {plate!r} not listed in Assay_Plate_Barcode")
    map_name = hit["Plate_Map_Name"].iloc[0].strip()
    map_file = _join(platemaps, f"{map_name}.txt")
    if not raw.is_file(map_file) and raw.is_file(_join(platemaps, f"platemap/{map_name}.txt")):
        map_file = _join(platemaps, f"platemap/{map_name}.txt")  # the Gallery's metadata/platemaps/<batch>/
    if not raw.is_file(map_file):
        raise LayoutError(
            f"{raw.path(barcode_file)}: platemap {map_name}.txt for plate {plate!r} does not exist"
        )
    pm = raw.table(map_file, sep="\t", dtype=str, keep_default_na=False)
    for col in ("well_position", "broad_sample"):
        if col not in pm.columns:
            raise LayoutError(f"{raw.path(map_file)}: missing column {col!r}")
    wells: dict[str, WellInfo] = {}
    for rec in pm.to_dict("records"):
        mm = rec.get("mmoles_per_liter", "")
        try:
            conc = float(mm) if mm.strip() else None
        except ValueError:
            conc = None
        wells[normalise_well(rec["well_position"])] = WellInfo(
            rec["broad_sample"].strip(),
            conc,
            rec.get("solvent", "").strip(),
            label_from_broad_sample(rec["broad_sample"]),
        )
    return wells, map_file


def plate_dataset(raw: Any, pm_dir: str, gallery: tuple[str, str, str] | None, option: str | None) -> str:
    """The plates' dataset name: ``option`` (``cp.dataset``), else a Gallery project's
    (:data:`GALLERY_DATASETS`, or the project folder's name), else the folder holding ``platemaps/``."""
    if option:
        return str(option)
    if gallery is not None:
        parts = raw.path(gallery[0]).rstrip("/").split("/")
        project = parts[-3] if len(parts) >= 3 and parts[-1] == "workspace" else parts[-1]
        return GALLERY_DATASETS.get(project, project)
    holder = posixpath.dirname(pm_dir)
    return posixpath.basename(holder) if holder else raw.name(raw.url)


def gallery_images_root(raw: Any, gallery: tuple[str, str, str] | None, option: str | None) -> str | None:
    """Where a Gallery plate's images are: ``option`` (``cp.images_root``), else ``<project>/<source>/images``
    beside the workspace; None for a plate of the other layout."""
    if gallery is None:
        return None
    if option:
        return str(option)
    return posixpath.dirname(raw.path(gallery[0]).rstrip("/")) + "/images"


def gallery_extras(raw: Any, gallery: tuple[str, str, str] | None, images_root: str | None) -> dict[str, Any]:
    """For a Gallery plate: ``{"also": the folders of its CellProfiler output, "illum": {channel: URL}}`` of
    the illumination functions under ``images_root`` (asked once per plate: they lie outside the listed
    workspace; ``images_root`` None: none looked for)."""
    if gallery is None:
        return {}
    ws, batch, plate = gallery
    also = tuple(
        posixpath.join(ws, f"{kind}/{batch}/{plate}").lstrip("/") for kind in ("analysis", "backend")
    )
    illum = {}
    for ch in RAW_CHANNELS if images_root else ():
        url = f"{images_root}/{batch}/illum/{plate}/{plate}_Illum{ch}.npy"
        if raw.is_file(url):
            illum[ch] = url
    return {"also": also, "illum": illum}


def gallery_listing(raw: Any, plates: set[str] | None = None) -> set[str] | None:
    """The files discovery needs from a Gallery workspace (``raw`` holds ``load_data_csv/``), listed by
    prefix instead of the whole workspace (whose ``analysis/`` holds millions of files): ``load_data_csv/``,
    ``metadata/``, and ``analysis/<batch>/<plate>/`` and ``backend/<batch>/<plate>/`` of each plate (of
    ``plates`` only, when given). None for an input of the other layout."""
    if not raw.can_list or not raw.is_dir("load_data_csv"):
        return None
    listing = set(raw.list_files("load_data_csv")) | set(raw.list_files("metadata"))
    for pdir in plate_dirs(listing):
        gallery = gallery_plate(pdir)
        if gallery is None or (plates is not None and gallery[2] not in plates):
            continue
        for kind in ("analysis", "backend"):
            listing |= set(raw.list_files(f"{kind}/{gallery[1]}/{gallery[2]}"))
    return listing
