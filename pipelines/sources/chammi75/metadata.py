"""Read a CHAMMI-75 metadata table and plan its build: columns by name, strings, images, skips, units.

Built for the full table (about 8 M rows): the CSV is parsed by Arrow in blocks, only the columns the build
uses are kept, every value stays a string, and the planning works on whole columns (dictionary codes, sorts,
segment reductions): no Python object per row. ``benchmarks/chammi75.py plan`` measures it on a synthetic
8 M-row table (``benchmarks/results/chammi75.md``).

Planning, in order:

1. the study filter (``studies``): other studies' rows are not selected (an unknown study is an error);
2. rows without ``imaging.multi_channel_id`` (empty or ``unknown``) are skipped, one entry per row (kind
   ``rows``); the others form images (rows sharing the id);
3. an image is skipped (kind ``images``, naming its first file) when its channel count disagrees with
   ``geometry.channels``, its channel numbers are not 1..C, a number is not an integer, its rows disagree on
   the study, a channel type is not one of CHAMMI-75's 25 or a ``storage.path`` is not
   ``CHAMMI-75_train/<study>/<file>.png``;
4. ``cap_per_study``: images of a study past the first N (in ``multi_channel_id`` order) are skipped, one
   entry per study with the count;
5. the remaining images, by study then ``multi_channel_id``, are cut into units of ``images_per_unit``.

Accounting (checked by the engine): rows: in = selected rows, used = rows with an image id, skipped = rows
without; images: in = distinct ids, used = images written, skipped = the skips above plus those of
``process`` (missing or unreadable files, channels that disagree in size).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from chammi_data.format.vocab import CHAMMI75_CHANNELS
from chammi_data.store.storage import ReleaseStore, open_store
from pipelines.sources.base import Discovery, Skipped, Unit, safe_id
from pipelines.sources.chammi75.layout import (
    CHANNEL,
    CHANNEL_TYPE,
    FIELD,
    FILE_SEP,
    GUIDANCE_PREFIX,
    IMAGE_SEP,
    MCID,
    META_COLUMNS,
    METADATA_TABLES,
    MISSING,
    N_CHANNELS,
    PART_SEP,
    PATH,
    REQUIRED_COLUMNS,
    SEPARATORS_RE,
    STUDY,
    TRAIN_PREFIX,
)

SOURCE = "chammi75"
_HEADER_BYTES = 1 << 16


def table_location(root: str, metadata: str) -> tuple[str, str]:
    """(folder or URL, file name) of the metadata table: ``full`` / ``small`` under ``root``, or a path."""
    if metadata in METADATA_TABLES:
        return root, METADATA_TABLES[metadata]
    parent, _, name = str(metadata).replace("\\", "/").rpartition("/")
    return parent or ".", name


def read_header(store: ReleaseStore, name: str) -> list[str]:
    """The column names of a CSV table (its first line)."""
    head = store.read_range(name, 0, _HEADER_BYTES)
    line = head.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")
    return next(csv.reader(io.StringIO(line)))


def read_table(store: ReleaseStore, name: str) -> tuple[pa.Table, list[str]]:
    """The table's required and meta columns (those it has), every value a string; and the meta columns it
    has. ``ValueError`` naming the table and what it has when a required column is missing."""
    header = read_header(store, name)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"CHAMMI-75 metadata {store.path(name)} lacks column(s) {missing}; it has {header[:40]}"
        )
    meta = [c for c in META_COLUMNS if c in header]
    wanted = list(dict.fromkeys([*REQUIRED_COLUMNS, *meta]))
    convert = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types={c: pa.string() for c in wanted},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with store.open(name) as fh:
        table = pacsv.read_csv(
            fh, read_options=pacsv.ReadOptions(block_size=64 << 20), convert_options=convert
        )
    return table, meta


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(int codes per row, dictionary of distinct values) of a string column."""
    enc = pc.dictionary_encode(column)
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary


def _integers(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, valid mask) of a string column of integers (an invalid entry reads as 0)."""
    text = pc.utf8_trim_whitespace(column)
    ok = pc.match_substring_regex(text, r"^[0-9]{1,9}$")
    values = pc.cast(pc.if_else(ok, text, "0"), pa.int64())
    return values.to_numpy(), ok.to_numpy(zero_copy_only=False)


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def _text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A string column as one large_string array (the joined texts of 2.8 M images pass 2 GiB, the limit of
    32-bit string offsets), without the characters that separate a unit's text (replaced by spaces; the
    column is copied only when it holds one)."""
    if pc.any(pc.match_substring_regex(column, SEPARATORS_RE)).as_py():
        column = pc.replace_substring_regex(column, SEPARATORS_RE, " ")
    out = column.cast(pa.large_string())
    return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out


def _release_memory() -> None:
    """Give Arrow's freed buffers back to the system (its allocator keeps them otherwise)."""
    pa.default_memory_pool().release_unused()


def plan(
    table: pa.Table, meta_columns: list[str], opts: Mapping[str, Any], root: str, where: str
) -> Discovery:
    """The build of ``table`` (from :func:`read_table`): units, skips and counts (module docstring).

    ``root`` is the dataset root the units read from; ``where`` names the table in skips. The table is
    never copied (rows are index arrays) and is released before the units' texts are built, when the
    caller holds no other reference to it (``plan(*read_table(...), ...)``)."""
    studies = list(opts.get("studies") or [])
    if studies:
        have = set(pc.unique(table[STUDY]).to_pylist())
        unknown = sorted(set(studies) - have)
        if unknown:
            raise ValueError(f"studies {unknown} are not in {where}; it has {sorted(have)[:80]}")
        rows = np.flatnonzero(_mask(pc.is_in(table[STUDY], value_set=pa.array(studies))))
    else:
        rows = np.arange(table.num_rows)
    found = {"rows": len(rows)}
    no_id = _mask(pc.or_(pc.equal(table[MCID], ""), pc.equal(table[MCID], MISSING)))[rows]
    lost = rows[no_id]
    skipped = [
        Skipped(SOURCE, "metadata", f"no {MCID} (value {v!r})", f"{root}/{p}", int(r), kind="rows")
        for r, p, v in zip(
            lost.tolist(),
            table[PATH].take(pa.array(lost)).to_pylist(),
            table[MCID].take(pa.array(lost)).to_pylist(),
            strict=True,
        )
    ]
    rows = rows[~no_id]
    used = {"rows": len(rows)}
    code, dictionary = _codes(table[MCID])
    rank = np.empty(len(dictionary), np.int64)
    rank[pc.sort_indices(dictionary).to_numpy()] = np.arange(len(dictionary))
    del dictionary
    image = rank[code[rows]]  # image number in multi_channel_id order
    del code, rank
    found["images"] = int(len(np.unique(image)))
    if not len(rows):
        return Discovery([], skipped, found, used)
    channel, channel_ok = _integers(table[CHANNEL])
    declared, declared_ok = _integers(table[N_CHANNELS])
    order = rows[np.lexsort((channel[rows], image))]  # table rows by image, then channel
    image = np.sort(image, kind="stable")
    channel, declared, numbers_ok = channel[order], declared[order], (channel_ok & declared_ok)[order]
    starts = np.flatnonzero(np.r_[True, image[1:] != image[:-1]])
    del image
    counts = np.diff(np.r_[starts, len(order)])
    position = np.arange(len(order)) - np.repeat(starts, counts)
    study_code, study_names = _codes(table[STUDY])
    study_code = study_code[order]
    type_code, type_names = _codes(table[CHANNEL_TYPE])
    known_type = np.isin(np.asarray(type_names.to_pylist(), dtype=object), CHAMMI75_CHANNELS)[
        type_code[order]
    ]
    good_path = pc.and_(pc.starts_with(table[PATH], TRAIN_PREFIX + "/"), pc.ends_with(table[PATH], ".png"))
    good_path = _mask(pc.and_(good_path, pc.invert(pc.match_substring_regex(table[PATH], SEPARATORS_RE))))

    def any_in(mask: np.ndarray) -> np.ndarray:
        return np.logical_or.reduceat(mask, starts)

    problems = {
        "bad number": any_in(~numbers_ok),
        "study": np.minimum.reduceat(study_code, starts) != np.maximum.reduceat(study_code, starts),
        "count": (counts != declared[starts])
        | (np.minimum.reduceat(declared, starts) != np.maximum.reduceat(declared, starts)),
        "numbering": any_in(channel != position + 1),
        "type": any_in(~known_type),
        "path": any_in(~good_path[order]),
    }
    del channel, declared, position, known_type, good_path, type_code
    bad = np.logical_or.reduce(list(problems.values()))
    skipped += _image_skips(table, order, starts, counts, problems, bad, root)
    image_study = study_code[starts]
    keep = np.flatnonzero(~bad)
    cap = opts.get("cap_per_study")
    if cap is not None:
        keep, capped = _cap(keep, image_study, int(cap))
        for s, n in capped.items():
            reason = f"over cap_per_study={cap}: {n} image(s) of study {study_names[s].as_py()} not built"
            skipped.append(Skipped(SOURCE, "metadata", reason, where, None, n, kind="images"))
    name_rank = np.empty(len(study_names), np.int64)
    name_rank[pc.sort_indices(study_names).to_numpy()] = np.arange(len(study_names))
    keep = keep[np.argsort(name_rank[image_study[keep]], kind="stable")]  # by study name, then image
    lines = _image_lines(table, meta_columns, order, starts, keep)
    del table  # the caller's reference was the only other one (see the docstring)
    _release_memory()
    units = _units(lines, study_names.to_pylist(), image_study[keep], opts, root, meta_columns)
    return Discovery(units, skipped, found, used)


def _image_skips(
    table: pa.Table,
    order: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    problems: dict[str, np.ndarray],
    bad: np.ndarray,
    root: str,
) -> list[Skipped]:
    """One skip per bad image (few): the reason, the image id and its first file and row."""
    out = []
    for i in np.flatnonzero(bad).tolist():
        idx = order[starts[i] : starts[i] + counts[i]]
        part = table.take(pa.array(idx)).to_pydict()
        mcid, paths = part[MCID][0], part[PATH]
        chans, declared, types = part[CHANNEL], part[N_CHANNELS], part[CHANNEL_TYPE]
        if problems["bad number"][i]:
            reason = f"{CHANNEL} {chans} / {N_CHANNELS} {declared} are not all integers"
        elif problems["study"][i]:
            reason = f"rows of one image disagree on {STUDY}: {sorted(set(part[STUDY]))}"
        elif problems["count"][i]:
            reason = f"channel count {counts[i]} disagrees with {N_CHANNELS} {sorted(set(declared))}"
        elif problems["numbering"][i]:
            reason = f"channel numbers {chans} are not 1..{counts[i]} ({CHANNEL} is 1-based)"
        elif problems["type"][i]:
            odd = sorted({t for t in types if t not in CHAMMI75_CHANNELS})
            reason = f"unknown channel type(s) {odd}; CHAMMI-75's types: {', '.join(CHAMMI75_CHANNELS)}"
        else:
            odd = [p for p in paths if not (p.startswith(TRAIN_PREFIX + "/") and p.endswith(".png"))] or paths
            reason = f"{PATH} {odd[0]!r} is not {TRAIN_PREFIX}/<study>/<file>.png"
        skip = Skipped(SOURCE, "metadata", f"{reason} (image {mcid})", f"{root}/{paths[0]}", int(idx[0]))
        skip.kind = "images"
        out.append(skip)
    return out


def _cap(keep: np.ndarray, image_study: np.ndarray, cap: int) -> tuple[np.ndarray, dict[int, int]]:
    """The first ``cap`` kept images of each study (``keep`` is in image order) and {study: images over}."""
    studies = image_study[keep]
    by_study = np.argsort(studies, kind="stable")
    s_sorted = studies[by_study]
    first = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    rank = np.arange(len(s_sorted)) - np.repeat(first, np.diff(np.r_[first, len(s_sorted)]))
    over = np.zeros(len(keep), bool)
    over[by_study] = rank >= cap
    capped = {int(s): int(n) for s, n in zip(*np.unique(studies[over], return_counts=True), strict=True)}
    return keep[~over], capped


def _sep(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.large_string())


def _image_lines(
    table: pa.Table, meta_columns: list[str], order: np.ndarray, starts: np.ndarray, keep: np.ndarray
) -> pa.Array:
    """One text line per kept image (in ``keep`` order): its meta fields, then its channel files."""
    taken = pa.array(order)
    files = pc.binary_join_element_wise(
        _text(table[PATH].take(taken)),
        _text(table[CHANNEL_TYPE].take(taken)),
        _sep(PART_SEP),
    )
    del taken
    offsets = pa.array(np.r_[starts, len(order)], type=pa.int32())
    blocks = pc.binary_join(pa.ListArray.from_arrays(offsets, files), _sep(FILE_SEP)).take(pa.array(keep))
    del files
    first_rows = pa.array(order[starts[keep]])
    meta = [_text(table[c].take(first_rows)) for c in meta_columns]
    return pc.binary_join_element_wise(*meta, blocks, _sep(FIELD))


def _units(
    lines: pa.Array,
    names: list[str],
    studies: np.ndarray,
    opts: Mapping[str, Any],
    root: str,
    meta_columns: list[str],
) -> list[Unit]:
    """Units of ``images_per_unit`` consecutive images of one study each (``studies``: each line's study
    code, in line order; ``names[code]``: the study's name), their images as text (see ``layout``)."""
    if not len(lines):
        return []
    per = max(1, int(opts.get("images_per_unit", 64)))
    cuts = [0]
    for boundary in [*np.flatnonzero(studies[1:] != studies[:-1]) + 1, len(studies)]:
        cuts += list(range(cuts[-1] + per, int(boundary), per)) + [int(boundary)]
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(cuts, type=pa.int32()), lines), _sep(IMAGE_SEP))
    del lines
    _release_memory()
    units, numbers = [], {}
    for k in range(len(joined)):
        study = names[int(studies[cuts[k]])]
        numbers[study] = numbers.get(study, -1) + 1
        unit_id = f"{safe_id(study, 48)}-{numbers[study]:06d}"
        payload = {"root": root, "study": study, "columns": meta_columns, "images": joined[k].as_py()}
        units.append(Unit(SOURCE, unit_id, payload, items=cuts[k + 1] - cuts[k]))
    return units


def discover_table(root: str, opts: Mapping[str, Any]) -> Discovery:
    """Read the table named by ``opts["metadata"]`` under ``root`` (a folder or URL) and plan the build."""
    folder, name = table_location(root, str(opts.get("metadata", "full")))
    store = open_store(folder, opts.get("storage_options") or None)
    where = store.path(name)
    if not store.exists(name):
        raise FileNotFoundError(
            f"CHAMMI-75: metadata table {where} not found (expected the CHAMMI-75 root with "
            f"{', '.join(METADATA_TABLES.values())}, {TRAIN_PREFIX}/ and {GUIDANCE_PREFIX}/)"
        )
    return plan(*read_table(store, name), opts, root, where)  # no name holds the table: plan frees it
