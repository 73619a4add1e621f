"""The embedded sample raw data: each raw source's ``synth`` writes small data in its real layout.

``write_sample(out_dir, seed)`` writes ``out_dir/wtc11`` (Allen metadata.csv + OME-TIFF z-stacks),
``out_dir/hpa`` (4-PNG fields + train.csv + cell-line table) and ``out_dir/cp`` (plates with
load_data.csv, 16-bit TIFFs, platemaps, Nuclei.csv / SQLite), and on request ``out_dir/chammi75`` (a small
CHAMMI-75 in its published layout) - the layout ``chammi-build --input DIR
--source all`` reads. Every source folder is written to a temporary name and renamed when complete, with a
``.sample-complete`` marker holding the seed, so an interrupted generation is redone and a complete one is
reused (the build without ``--input`` is resumable end to end). Deterministic by ``seed``; generated once
per code version on a machine, then copied from a verified cache (:mod:`pipelines.sources.sample_cache`).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from pipelines.sources import sample_cache
from pipelines.sources.registry import RAW_SOURCES, SAMPLE_SOURCES, get_pipeline

MARKER = ".sample-complete"


def _complete(folder: Path, seed: int) -> bool:
    marker = folder / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == f"seed={seed}"


def write_source_sample(out_dir: Path, name: str, seed: int = 0) -> Path:
    """Write one source's sample into ``out_dir/<name>`` atomically (temp folder + rename); returns it."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if _complete(final, seed):
        return final
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{name}.tmp-*"):  # left by a generation that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f".{name}.tmp-{uuid.uuid4().hex}"
    try:
        synth = get_pipeline(name).synth
        if not sample_cache.fetch(name, seed, tmp, synth):  # generated once per code version on this machine
            synth(tmp, seed)
            sample_cache.store(name, seed, tmp, synth)
        (tmp / MARKER).write_text(f"seed={seed}\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_sample(
    out_dir: str | Path, seed: int = 0, sources: Sequence[str] = RAW_SOURCES, progress: bool = False
) -> Path:
    """Write the sample raw data of ``sources`` (default all three) into ``out_dir``; returns ``out_dir``."""
    from chammi_data.progress import progress as progress_bar

    out_dir = Path(out_dir)
    for name in progress_bar(list(sources), desc="sample raw data", unit="source", disable=not progress):
        if name not in SAMPLE_SOURCES:
            raise KeyError(f"no sample raw data for {name!r}; valid: {', '.join(SAMPLE_SOURCES)}")
        write_source_sample(out_dir, name, seed)
    return out_dir


def ensure_sample(out_dir: Path, sources: Sequence[str], seed: int = 0, progress: bool = False) -> Path:
    """The sample folder with every source of ``sources`` complete (generated when missing or stale)."""
    return write_sample(out_dir, seed, sources, progress)
