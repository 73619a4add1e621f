"""The source pipelines by build name: names as data, resolved lazily (importing one never imports all)."""

from __future__ import annotations

import importlib

from pipelines.base import SourcePipeline

#: build name (``chammi-build --source NAME``) -> "module:Class"
PIPELINES: dict[str, str] = {
    "wtc11": "pipelines.wtc11:WTC11Pipeline",
    "hpa": "pipelines.hpa:HPAPipeline",
    "cp": "pipelines.cp:CPPipeline",
    "chammi": "pipelines.chammi:OfficialPipeline",
}

#: the raw sources that ``--source all`` builds into one release, in canonical order
RAW_SOURCES: tuple[str, ...] = ("wtc11", "hpa", "cp")


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
