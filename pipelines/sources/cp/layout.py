"""Cell Painting raw layout: the tables and file names of a plate, read without pixels.

The layout follows the Cell Painting Gallery closely enough that a Gallery download can be arranged into it
by moving folders, never by rewriting files::

    <root>/<dataset>/                       dataset folder: LINCS | CDRP | BBBC022 (its name ->
    groups["dataset"])
      platemaps/barcode_platemap.csv        Assay_Plate_Barcode, Plate_Map_Name platemaps/<Plate_Map_Name>.txt
      tab-separated: well_position, broad_sample, mmoles_per_liter, solvent <plate>/load_data.csv
      one row per site (optional for ImageXpress names, see below) <plate>/images/*.tif[f]
      16-bit TIFF, one per channel per site <plate>/illum/<plate>_Illum<Ch>.npy   optional illumination
      functions (divide), Ch in DNA ER RNA AGP Mito <plate>/analysis/<plate>-<well>-<site>/Nuclei.csv
      per-site CellProfiler nuclei, or <plate>/Nuclei.csv (+ <plate>/Image.csv)            per-plate nuclei,
      or <plate>/<plate>.sqlite                              CellProfiler SQLite backend (tables Image,
      Nuclei)

A channel file that is not where the table says (absolute paths of another machine, ``s3://`` URLs) is
taken from ``<plate>/images/`` when a file of the same name is there; nothing is ever downloaded.
``platemaps/`` is looked up from the plate folder upwards, so a plate may sit deeper (``<dataset>/<batch>/
<plate>``); the folder holding ``platemaps/`` names the dataset. Paths in ``load_data.csv`` (``PathName_``
or ``URL_`` columns) that are relative are taken relative to the folder of ``load_data.csv``.
A plate folder without ``load_data.csv`` is read from its ImageXpress file names (``<prefix>_<Well>_s<site>_
w<1-5><GUID>.tif``, w1 DNA .. w5 Mito), or from Phenix names (``r01c01f01p01-ch1sk1fk1fl1.tiff``) when the
build config gives the Phenix channel numbers (they differ between projects). The nucleus position files
are read by :mod:`pipelines.sources.cp.positions`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
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
_REMOTE_SCHEMES = ("http", "https", "s3", "gs", "ftp", "az")


class LayoutError(ValueError):
    """A plate table is unusable as a whole; the message names the file (and row) and the problem."""


@dataclass
class SiteRow:
    """One site of a plate as its table describes it: where each channel's file is."""

    plate: str
    well: str
    site: int
    files: dict[str, str]  #: raw channel (DNA, ER, ...) -> absolute path
    table: str  #: file the row came from (load_data.csv, or the images folder)
    row: int | None  #: line number in ``table`` (header = line 1), None for file-name discovery
    problems: list[str] = field(
        default_factory=list
    )  #: reasons the site cannot be used (missing/remote files)


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


def _resolve_url(url: str, base: Path) -> tuple[str, str | None]:
    """(path, problem) for a ``URL_Orig`` value: file:// or relative paths resolve, remote ones never
    download."""
    parsed = urlparse(url)
    if parsed.scheme.lower() in _REMOTE_SCHEMES:
        return url, f"remote URL {url!r} is not downloaded; fetch the plate and use local paths"
    if parsed.scheme.lower() == "file":
        return unquote(parsed.path), None
    if parsed.scheme and len(parsed.scheme) > 1:
        return url, f"unsupported URL scheme {parsed.scheme!r} in {url!r}"
    path = Path(url)
    return str(path if path.is_absolute() else base / path), None


def read_load_data(path: Path) -> list[SiteRow]:
    """Sites of a plate's ``load_data.csv`` (FileName/PathName or URL columns).

    Rows whose files are remote or missing keep their problems in ``SiteRow.problems`` (the caller skips
    them with file and row). A table without the Metadata or channel columns raises :class:`LayoutError`.
    """
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LayoutError(f"{path}: cannot read load_data table ({type(exc).__name__}: {exc})") from None
    need = [c for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site") if c not in df.columns]
    if need:
        raise LayoutError(f"{path}: missing column(s) {need}")
    missing = [
        ch
        for ch in RAW_CHANNELS
        if f"FileName_Orig{ch}" not in df.columns and f"URL_Orig{ch}" not in df.columns
    ]
    if missing:
        raise LayoutError(f"{path}: no FileName_Orig<Ch> or URL_Orig<Ch> column for channel(s) {missing}")
    base = path.parent

    def local_copy(name: str) -> Path | None:
        # Gallery tables carry absolute paths of the machine that made them, or s3 URLs: a file of the same
        # name in <plate>/images/ is the same image downloaded by the user (we never download ourselves)
        cand = base / "images" / Path(urlparse(name).path).name
        return cand if cand.is_file() else None

    sites: list[SiteRow] = []
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        problems: list[str] = []
        try:
            well, site = normalise_well(rec["Metadata_Well"]), int(rec["Metadata_Site"])
        except ValueError as exc:
            raise LayoutError(f"{path} line {line}: bad Metadata_Well/Site ({exc})") from None
        files: dict[str, str] = {}
        for ch in RAW_CHANNELS:
            name = rec.get(f"FileName_Orig{ch}", "")
            if name:
                folder = rec.get(f"PathName_Orig{ch}", "")
                if folder.lower().startswith(tuple(s + "://" for s in _REMOTE_SCHEMES)):
                    files[ch] = f"{folder.rstrip('/')}/{name}"
                    local = local_copy(name)
                    if local is None:
                        problems.append(
                            f"channel {ch}: remote path {folder!r} is not downloaded (and no "
                            f"images/{name} next to the table)"
                        )
                    else:
                        files[ch] = str(local)
                    continue
                p = Path(folder) / name if folder else Path(name)
                p = p if p.is_absolute() else base / p
                files[ch] = str(p if p.is_file() else (local_copy(name) or p))
            elif rec.get(f"URL_Orig{ch}", ""):
                files[ch], problem = _resolve_url(rec[f"URL_Orig{ch}"], base)
                local = local_copy(files[ch]) if (problem or not Path(files[ch]).is_file()) else None
                if local is not None:
                    files[ch], problem = str(local), None
                if problem:
                    problems.append(f"channel {ch}: {problem}")
            else:
                problems.append(f"channel {ch}: no file name in this row")
        sites.append(SiteRow(rec["Metadata_Plate"], well, site, files, str(path), line, problems))
    return sites


def sites_from_filenames(
    images_dir: Path, plate: str, phenix_channels: dict[int, str] | None = None
) -> list[SiteRow]:
    """Sites of a plate without ``load_data.csv``: ImageXpress names, or Phenix names given the channel
    numbers.

    ``phenix_channels`` maps Phenix ``ch`` numbers to raw channels (``{1: "DNA", ...}``). A site missing a
    channel file gets a problem naming it.
    """
    groups: dict[tuple[str, int], dict[str, str]] = {}
    for p in sorted(images_dir.rglob("*")):
        if not p.is_file():
            continue
        m = IXM_RE.match(p.name)
        if m and int(m.group("w")) in IXM_WAVELENGTHS:
            key, ch = (
                (normalise_well(m.group("well")), int(m.group("site"))),
                IXM_WAVELENGTHS[int(m.group("w"))],
            )
        else:
            m = PHENIX_RE.match(p.name)
            if not m or not phenix_channels or int(m.group("ch")) not in phenix_channels:
                continue
            key = (well_from_row_col(int(m.group("row")), int(m.group("col"))), int(m.group("site")))
            ch = phenix_channels[int(m.group("ch"))]
        files = groups.setdefault(key, {})
        if ch in files:
            files[ch] = files[ch] + "|" + str(p)  # two files claim one channel: flagged below
        else:
            files[ch] = str(p)
    sites = []
    for (well, site), files in sorted(groups.items()):
        problems = [
            f"channel {ch}: no image file for well {well} site {site}"
            for ch in RAW_CHANNELS
            if ch not in files
        ]
        problems += [f"channel {ch}: several files {v.split('|')}" for ch, v in files.items() if "|" in v]
        sites.append(SiteRow(plate, well, site, files, str(images_dir), None, problems))
    return sites


def find_platemaps(plate_dir: Path, root: Path) -> Path | None:
    """The nearest ``platemaps/`` folder holding ``barcode_platemap.csv``, from the plate folder up to
    ``root``."""
    here = plate_dir.resolve()
    stop = root.resolve()
    while True:
        cand = here / "platemaps" / "barcode_platemap.csv"
        if cand.is_file():
            return cand.parent
        if here == stop or here.parent == here:
            return None
        here = here.parent


@dataclass
class WellInfo:
    """What the platemap says about one well."""

    broad_sample: str
    mmoles_per_liter: float | None
    solvent: str
    label: str


def read_platemap(platemaps: Path, plate: str) -> tuple[dict[str, WellInfo], str]:
    """{well: WellInfo} for ``plate`` via ``barcode_platemap.csv`` -> ``<Plate_Map_Name>.txt``; also the map
    file."""
    barcode_file = platemaps / "barcode_platemap.csv"
    bc = pd.read_csv(barcode_file, dtype=str, keep_default_na=False)
    for col in ("Assay_Plate_Barcode", "Plate_Map_Name"):
        if col not in bc.columns:
            raise LayoutError(f"{barcode_file}: missing column {col!r}")
    hit = bc[bc["Assay_Plate_Barcode"].str.strip() == plate]
    if hit.empty:
        raise LayoutError(f"{barcode_file}: plate {plate!r} not listed in Assay_Plate_Barcode")
    map_name = hit["Plate_Map_Name"].iloc[0].strip()
    map_file = platemaps / f"{map_name}.txt"
    if not map_file.is_file():
        raise LayoutError(f"{barcode_file}: platemap {map_file.name} for plate {plate!r} does not exist")
    pm = pd.read_csv(map_file, sep="\t", dtype=str, keep_default_na=False)
    for col in ("well_position", "broad_sample"):
        if col not in pm.columns:
            raise LayoutError(f"{map_file}: missing column {col!r}")
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
    return wells, str(map_file)
