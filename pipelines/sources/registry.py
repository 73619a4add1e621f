"""The source pipelines by build name: names as data, resolved lazily (importing one never imports all)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence

from pipelines.sources.base import SourcePipeline

#: build name (``chammi-build --source NAME``) -> "module:Class"
PIPELINES: dict[str, str] = {
    "wtc11": "pipelines.sources.wtc11.pipeline:WTC11Pipeline",
    "hpa": "pipelines.sources.hpa.pipeline:HPAPipeline",
    "cp": "pipelines.sources.cp.pipeline:CPPipeline",
    "chammi": "pipelines.sources.official.pipeline:OfficialPipeline",
    "chammi75": "pipelines.sources.chammi75.pipeline:Chammi75Pipeline",
    # the adapters of the CHAMMI-75 benchmark suite: a benchmark's test layout -> a release
    "rbc_mc": "pipelines.sources.benchmarks.rbc_mc.pipeline:RBCMCPipeline",
    "idr0017": "pipelines.sources.benchmarks.idr0017.pipeline:IDR0017Pipeline",
    "cellphie": "pipelines.sources.benchmarks.cellphie.pipeline:CellPHIEPipeline",
    "jumpcp": "pipelines.sources.benchmarks.jumpcp.pipeline:JUMPCPPipeline",
    "hpav23": "pipelines.sources.benchmarks.hpav23.pipeline:HPAv23Pipeline",
}

#: the raw sources that ``--source all`` builds into one release, in canonical order
RAW_SOURCES: tuple[str, ...] = ("wtc11", "hpa", "cp")
#: the benchmark adapters (``chammi_data.evaluation.benchmarks``: each benchmark names its build source)
BENCHMARK_SOURCES: tuple[str, ...] = ("rbc_mc", "idr0017", "cellphie", "jumpcp", "hpav23")
#: the pipelines with embedded sample raw data (``chammi-build synth --source NAME``)
SAMPLE_SOURCES: tuple[str, ...] = (*RAW_SOURCES, "chammi75", *BENCHMARK_SOURCES)


def list_pipelines() -> list[str]:
    """Registered build names, in registry order."""
    return list(PIPELINES)


def get_pipeline(name: str) -> SourcePipeline:
    """A fresh pipeline instance for a build name; unknown names raise ``KeyError`` listing the valid ones."""
    if name not in PIPELINES:
        raise KeyError(f"unknown source pipeline {name!r}; valid: {', '.join(PIPELINES)}")
    module_name, _, class_name = PIPELINES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ImportError(f"pipeline {name!r}: module {module_name} is not available ({exc})") from exc
        raise
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"pipeline {name!r}: {module_name} defines no {class_name}")
    pipeline = cls()
    if not isinstance(pipeline, SourcePipeline):
        raise TypeError(f"pipeline {name!r}: {PIPELINES[name]} is not a SourcePipeline")
    return pipeline


@functools.cache
def shared_pipeline(name: str) -> SourcePipeline:
    """The pipeline of a build name, created once per process (pipelines hold no state): what a build and its
    dask workers use."""
    return get_pipeline(name)


def resolve_sources(source: str | Sequence[str]) -> dict[str, SourcePipeline]:
    """``all`` -> the three raw sources; otherwise registered build names (checked), as {name: pipeline}.

    A pipeline that reads a ready-made release builds on its own: combined with another one it is an error.
    """
    names = [source] if isinstance(source, str) else list(source)
    out: dict[str, SourcePipeline] = {}
    for n in names:
        for m in RAW_SOURCES if n == "all" else (n,):
            out.setdefault(m, shared_pipeline(m))  # unknown name -> KeyError listing the valid ones
    alone = [n for n, p in out.items() if p.reads_release]
    if alone and len(out) > 1:
        raise ValueError(
            f"--source {alone[0]} converts a ready-made release on its own; do not combine it with "
            "other sources"
        )
    return out
