"""Where each pipeline of a build reads from: ``--input`` itself, ``--input/<name>``, or the generated sample.

``--input`` is a location: a folder, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` or any fsspec URL,
read with ``input_options`` (passed to fsspec as they are: ``{"anon": True}`` for a public bucket; otherwise
credentials come from the standard chains of each machine). Each pipeline gets a
:class:`~pipelines.steps.rawinput.RawInput`; its ``discover`` reads the tables on the client and the dask
workers fetch each unit's objects themselves, so nothing of the raw data is copied to one machine.

Without ``--input`` the embedded sample raw data is generated: into ``OUTPUT/.work/sample_raw`` for a local
output, and for an object-store output generated in a temp folder and uploaded to ``.work/sample_raw/`` in
the store (so that workers without a shared disk read it from there).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.sources.base import SourcePipeline
from pipelines.steps.rawinput import RawInput

#: where the generated sample lives in an output
SAMPLE = "sample_raw"


def input_dirs(
    pipelines: Mapping[str, SourcePipeline],
    options: Mapping[str, dict[str, Any]],
    input_location: Any,
    output: Any,
    seed: int = 0,
    progress: bool = False,
    input_options: Mapping[str, Any] | None = None,
) -> dict[str, RawInput]:
    """``{name: RawInput}`` for every pipeline of a build.

    No ``input_location``: the sample (see the module docstring) in ``output`` (a ``FolderOutput`` /
    ``StoreOutput``, or a folder path); a pipeline that reads a ready-made release cannot run without input.
    Several pipelines: ``input/<name>`` each. One pipeline: ``input/<name>`` when that folder exists and
    ``input`` itself holds none of the pipeline's top-level tables, else ``input``.
    """
    names = list(pipelines)
    if input_location is None:
        need = [n for n, p in pipelines.items() if p.reads_release]
        if need:
            raise ValueError(
                f"--source {need[0]} needs --input DIR: it converts a ready-made release (a downloaded "
                "official CHAMMI folder); there is no sample to generate"
            )
        sample = sample_input(output, names, seed, progress)
        return {n: sample.child(n) for n in names}  # type: ignore[misc]
    raw = RawInput(input_location, input_options)
    if len(names) == 1:
        name, pipeline = next(iter(pipelines.items()))
        own = (
            pipeline.reads_release
            or holds_tables(raw, pipeline.tables(options[name]))
            or not raw.is_dir(name)
        )
        return {name: raw if own else raw.child(name)}  # type: ignore[dict-item]
    return {n: raw.child(n) for n in names}  # type: ignore[misc]


def holds_tables(folder: RawInput, tables: tuple[str, ...]) -> bool:
    """True when ``folder`` itself holds one of the named tables (then it is a source folder, not a
    parent)."""
    return any(folder.is_file(t) for t in tables)


def sample_input(output: Any, names: list[str], seed: int, progress: bool) -> RawInput:
    """The generated sample of ``names`` in ``output``'s work area (generated or uploaded when missing)."""
    from pipelines.sources.synthetic import MARKER, ensure_sample, write_source_sample

    if isinstance(output, str | Path):
        return RawInput(ensure_sample(Path(output) / ".work" / SAMPLE, names, seed=seed, progress=progress))
    if output.is_local:
        folder = output.path / output.work / SAMPLE
        return RawInput(ensure_sample(folder, names, seed=seed, progress=progress))
    store = output.store.child(f"{output.work}/{SAMPLE}")
    for name in names:
        marker = f"{name}/{MARKER}"
        done = store.info(marker) is not None and store.read_object(marker).decode().strip() == f"seed={seed}"
        if done:
            continue
        with tempfile.TemporaryDirectory(prefix="chammi-sample-") as tmp:
            folder = write_source_sample(Path(tmp), name, seed)
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
            for path in files:  # the marker last: a complete sample or none
                store.put_file(f"{name}/{path.relative_to(folder).as_posix()}", path)
            store.put_file(marker, folder / MARKER)
    return RawInput(store.url, store.storage_options)
