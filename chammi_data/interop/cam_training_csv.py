"""The combined metadata CSV that the paper's own training code reads (``morphem70k_v2.csv``).

The CHAMMI paper's code (CAM: github.com/chaudatascience/channel_adaptive_models, ``datasets/morphem70k.py``)
does not read the three ``enriched_meta.csv``: it reads ONE CSV at its ``root_dir`` (config
``dataset.file_name: morphem70k_v2.csv``) and joins ``file_path`` to that root. ``chammi export`` writes it
beside ``Allen/``, ``HPA/`` and ``CP/``, so the export folder is both the official layout (for the official
evaluator, which CAM also calls on ``<root>/<chunk>/enriched_meta.csv``) and CAM's ``root_dir``.

The contract, as CAM's code uses it:

- ``chunk``: ``Allen`` | ``HPA`` | ``CP`` (CAM's name for a source; WTC-11 is ``Allen``). CAM filters a
  source's rows with ``chunk == name``.
- ``file_path``: the tape PNG, relative to the export root (as in ``enriched_meta.csv``).
- ``channel_width``: W of the tape; CAM folds the (H, W*C) tape with a column-major reshape to (H, W, C).
- ``train_test_split``: ``Train`` selects training rows (``is_train``); everything else is only embedded.
- ``label``: the class name as CAM's class maps spell it. CAM looks up ``label`` of every training row in
  a hard-coded map, and its HPA map is lowercase: HPA labels are lowercased (``Golgi apparatus`` ->
  ``golgi apparatus``); WTC-11 stages (``M0`` ... ``M6M7_single``) and CP compounds (``BRD-...``,
  ``DMSO``) keep their spelling. ``Label`` keeps the original spelling (the official evaluator's column).
- Class indices in CAM: per chunk the training classes in sorted order; for all chunks together
  ("morphem70k") the sorted union: ``BRD-A29260609, BRD-K04185004, BRD-K21680192, DMSO, M0, M1M2, M3, M4M5,
  M6M7_complete, M6M7_single, golgi apparatus, microtubules, mitochondria, nuclear speckles``
  (:func:`cam_classes` computes them from a CSV).
- Rows: chunk by chunk (Allen, HPA, CP); within a chunk exactly the rows of its ``enriched_meta.csv`` in
  that order. CAM embeds a chunk's rows in CSV order and scores them against that chunk's
  ``enriched_meta.csv``: the two orders must agree.

Columns: ``file_path, channel_width, chunk, label, Label, train_test_split, Task_one .. Task_four``, then
every other column of the three ``enriched_meta.csv`` (first-seen order). A cell of a column that a chunk does
not have is empty (an empty task column reads as False). This is also the "merged CSV" some copies of the
official release carry, which :func:`chammi_data.interop.official_layout.read_official_metadata` understands.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from chammi_data.format.release_format import TRAIN, parse_bool_column
from chammi_data.format.vocab import SOURCES, TASK_COLUMNS, source_info
from chammi_data.interop.official_layout import META_FILE
from chammi_data.store.paths import safe_join

#: File name CAM's config expects (``configs/morphem70k/dataset/morphem70k_v2.yaml``: ``file_name``).
CAM_CSV = "morphem70k_v2.csv"
#: Leading columns of the CAM CSV, in order.
CAM_COLUMNS: tuple[str, ...] = (
    "file_path",
    "channel_width",
    "chunk",
    "label",
    "Label",
    "train_test_split",
    *TASK_COLUMNS,
)
#: CAM's name for all three chunks together.
ALL_CHUNKS = "morphem70k"
#: Sources whose labels CAM spells in lower case.
LOWERCASE_LABELS = frozenset({"hpa"})


def cam_label(source: str, label: str) -> str:
    """``label`` as CAM's class map spells it: lower case for HPA, unchanged for WTC-11 and CP."""
    return label.lower() if source_info(source).key in LOWERCASE_LABELS else label


def cam_frame(outdir: str | Path, sources: Iterable[str] | None = None) -> pd.DataFrame:
    """The CAM table of the ``enriched_meta.csv`` files under ``outdir`` (``sources``: default all present).

    Values are the CSV text (so nothing is reformatted); ``channel_width`` is an int, task columns booleans.
    Raises ``FileNotFoundError`` when no source folder has an ``enriched_meta.csv``.
    """
    outdir = Path(outdir)
    keys = list(SOURCES) if sources is None else [source_info(s).key for s in sources]
    parts = []
    for key in keys:
        info = SOURCES[key]
        csv = safe_join(outdir, f"{info.folder}/{META_FILE}")
        if not csv.is_file():
            continue
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        df["chunk"] = info.folder  # replaces a chunk/label column an official download may have carried
        df["label"] = [cam_label(key, v) for v in df["Label"]]
        parts.append(df)
    if not parts:
        raise FileNotFoundError(f"no {'/'.join(SOURCES[k].folder for k in keys)}/{META_FILE} under {outdir}")
    frame = pd.concat(parts, ignore_index=True, sort=False)
    for t in TASK_COLUMNS:  # a task a chunk does not have: not a member (False)
        column = frame[t].fillna("") if t in frame else pd.Series([""] * len(frame), dtype=object)
        frame[t] = parse_bool_column(column, f"{CAM_CSV} column {t}", empty=False)
    frame["channel_width"] = frame["channel_width"].astype(int)
    rest = [c for c in frame.columns if c not in CAM_COLUMNS]
    return frame[list(CAM_COLUMNS) + rest].fillna("")


def write_cam_csv(outdir: str | Path, sources: Iterable[str] | None = None) -> Path:
    """Write ``outdir/morphem70k_v2.csv`` from the ``enriched_meta.csv`` files there; returns its path."""
    path = safe_join(outdir, CAM_CSV)
    cam_frame(outdir, sources).to_csv(path, index=False, lineterminator="\n")
    return path


def cam_classes(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    """CAM's class maps for a CAM table: ``{chunk: {label: index}}`` over the training rows (sorted labels)
    plus ``"morphem70k"`` for all chunks together."""
    train = frame[frame["train_test_split"].astype(str).str.strip() == TRAIN]
    out = {
        chunk: {lab: i for i, lab in enumerate(sorted(set(part["label"])))}
        for chunk, part in train.groupby("chunk", sort=False)
    }
    out[ALL_CHUNKS] = {lab: i for i, lab in enumerate(sorted(set(train["label"])))}
    return out
