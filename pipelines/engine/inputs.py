"""Where each pipeline of a build reads from: ``--input DIR`` itself, ``DIR/<name>``, or the generated
sample. An input URL (``s3://...``) is passed to the pipelines as it is: a pipeline that reads its input
through ``chammi_data.store`` (CHAMMI-75) reads it remotely; the others need a folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.sources.base import SourcePipeline


def is_url(location: str | Path) -> bool:
    """True for a location with a scheme other than ``file://`` (``s3://``, ``gs://``, ``https://``...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def input_dirs(
    pipelines: Mapping[str, SourcePipeline],
    options: Mapping[str, dict[str, Any]],
    input_dir: Path | str | None,
    work: Path,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Path | str]:
    """``{name: folder}`` for every pipeline of a build.

    No ``input_dir``: the embedded sample raw data is generated into ``work/sample_raw`` (or reused there) and
    each raw source reads its subfolder; a pipeline that reads a ready-made release cannot run without input.
    Several pipelines: ``input_dir/<name>`` each. One pipeline: ``input_dir/<name>`` when that folder exists
    and ``input_dir`` itself holds none of the pipeline's top-level tables, else ``input_dir``.
    """
    names = list(pipelines)
    if input_dir is None:
        need = [n for n, p in pipelines.items() if p.reads_release]
        if need:
            raise ValueError(
                f"--source {need[0]} needs --input DIR: it converts a ready-made release (a downloaded "
                "official CHAMMI folder); there is no sample to generate"
            )
        from pipelines.sources.synthetic import ensure_sample

        sample = ensure_sample(work / "sample_raw", names, seed=seed, progress=progress)
        return {n: sample / n for n in names}
    if is_url(input_dir):
        url = str(input_dir).rstrip("/")
        return {n: url for n in names} if len(names) == 1 else {n: f"{url}/{n}" for n in names}
    input_dir = Path(input_dir)
    if len(names) == 1:
        name, pipeline = next(iter(pipelines.items()))
        sub = input_dir / name
        own = (
            pipeline.reads_release
            or not sub.is_dir()
            or holds_tables(input_dir, pipeline.tables(options[name]))
        )
        return {name: input_dir if own else sub}
    return {n: input_dir / n for n in names}


def holds_tables(folder: Path, tables: tuple[str, ...]) -> bool:
    """True when ``folder`` itself holds one of the named tables (then it is a source folder, not a
    parent)."""
    return any((folder / t).exists() for t in tables)
