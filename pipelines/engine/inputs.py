"""Where each pipeline of a build reads from: ``--input`` itself, ``--input/<name>``, or the generated sample.

``--input`` is a location: a folder, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` or any fsspec URL,
read with ``input_options`` (passed to fsspec as they are: ``{"anon": True}`` for a public bucket; otherwise
credentials come from the standard chains of each machine). Each pipeline gets a
:class:`~pipelines.steps.rawinput.RawInput`; its ``discover`` reads the tables on the client and the dask
workers fetch each unit's objects themselves, so nothing of the raw data is copied to one machine.

Sources may also lie in different places, one or more locations each (``{"wtc11": "s3://allencell/...",
"cp": ["s3://cellpainting-gallery/cpg0004-lincs/broad/workspace", ".../cpg0012-.../workspace"]}``; the CLI's
``--input NAME=LOCATION``, repeatable): a source with several locations discovers each and builds them as
one. ``anon`` in the storage options applies to the locations that know it (S3; ``token: anon`` on Google
Cloud Storage) and is left out for the others (plain HTTP needs no credentials).

Without ``--input`` the embedded sample raw data is generated: into ``OUTPUT/.work/sample_raw`` for a local
output, and for an object-store output generated in a temp folder and uploaded to ``.work/sample_raw/`` in
the store (so that workers without a shared disk read it from there).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chammi_data.store.objects import ReadOnlyLocation
from chammi_data.store.paths import protocol_of
from chammi_data.store.storage import RemoteObjectError
from pipelines.sources.base import Discovery, SourcePipeline
from pipelines.steps.rawinput import RawInput

#: where the generated sample lives in an output
SAMPLE = "sample_raw"


def options_for(location: Any, options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The storage options for one input location: ``anon`` only where the protocol has it (S3), as
    ``token: anon`` on Google Cloud Storage, and not at all for plain HTTP or a folder."""
    if not options:
        return None
    opts = dict(options)
    anon = opts.pop("anon", None)
    proto = protocol_of(os.fspath(location))
    if anon and proto in ("s3", "s3a"):
        opts["anon"] = anon
    elif anon and proto in ("gs", "gcs"):
        opts.setdefault("token", "anon")
    return opts or None


def is_url(location: str | Path) -> bool:
    """True for a location with a scheme other than ``file://`` (``s3://``, ``gs://``, ``https://``...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def input_dirs(
    pipelines: Mapping[str, SourcePipeline],
    options: Mapping[str, dict[str, Any]],
    input_location: Any,
    output: Any,
    seed: int = 0,
    progress: bool = False,
    input_options: Mapping[str, Any] | None = None,
) -> dict[str, list[RawInput]]:
    """``{name: [RawInput, ...]}`` for every pipeline of a build (one location each, unless a mapping gives
    a source several).

    No ``input_location``: the sample (see the module docstring) in ``output`` (a ``FolderOutput`` /
    ``StoreOutput``, or a folder path); a pipeline that reads a ready-made release cannot run without input.
    A mapping ``{name: location or [locations]}``: each source's own locations (every source of the build
    needs one). Otherwise one location: for several pipelines ``input/<name>`` each; for one pipeline
    ``input/<name>`` when that folder exists and ``input`` itself holds none of the pipeline's top-level
    tables, else ``input``.
    """
    names = list(pipelines)
    if isinstance(input_location, Mapping):
        missing = [n for n in names if not input_location.get(n)]
        if missing:
            raise ValueError(
                f"--input names no location for {', '.join(missing)}: give one --input {missing[0]}=LOCATION "
                "per source (or one --input holding a folder per source)"
            )
        out = {}
        for n in names:
            locs = input_location[n]
            locs = [locs] if isinstance(locs, str | os.PathLike) else list(locs)
            out[n] = [RawInput(loc, options_for(loc, input_options)) for loc in locs]
        return out
    if input_location is not None:
        input_options = options_for(input_location, input_options)
    return {n: [raw] for n, raw in _one_location(pipelines, options, input_location, output, seed, progress,
                                                  input_options).items()}  # fmt: skip


def _one_location(
    pipelines: Mapping[str, SourcePipeline],
    options: Mapping[str, dict[str, Any]],
    input_location: Any,
    output: Any,
    seed: int,
    progress: bool,
    input_options: Mapping[str, Any] | None,
) -> dict[str, RawInput]:
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
        try:
            own = (
                pipeline.reads_release
                or holds_tables(raw, pipeline.tables(options[name]))
                or not raw.is_dir(name)
            )
        except (
            RemoteObjectError,
            ReadOnlyLocation,
        ):  # cannot look there with these options: the source's own
            own = True
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


def discover_all(pipeline: SourcePipeline, inputs: Sequence[RawInput], opts: dict[str, Any]) -> Discovery:
    """``pipeline.discover`` of each location of a source, as one discovery (units of all of them, sorted;
    skips and counts added up); two locations giving one unit id is an error naming it."""
    found = [pipeline.discover(raw, opts) for raw in inputs]
    if len(found) == 1:
        return found[0]
    units, seen = [], {}
    for raw, d in zip(inputs, found, strict=True):
        for u in d.units:
            if u.unit_id in seen:
                raise ValueError(
                    f"{pipeline.name}: unit {u.unit_id} is in two inputs ({seen[u.unit_id]} and {raw.url}); "
                    "give each plate, field or cell once"
                )
            seen[u.unit_id] = raw.url
            units.append(u)
    total: dict[str, dict[str, int]] = {"found": {}, "used": {}}
    for d in found:
        for what in total:
            for k, v in getattr(d, what).items():
                total[what][k] = total[what].get(k, 0) + v
    skipped = [s for d in found for s in d.skipped]
    return Discovery(sorted(units, key=lambda u: u.unit_id), skipped, total["found"], total["used"])
