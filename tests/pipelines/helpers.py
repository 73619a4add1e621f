"""Helpers shared by the pipeline tests (imported; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.engine.build import build
from pipelines.engine.report import BuildResult


def quiet_build(
    source: str, input_dir: Path | None, output: Path, workers: int = 1, per: int | None = None, **kw: Any
) -> BuildResult:
    """``build`` as the tests run it: dask workers as threads, no progress output; ``per`` sets
    ``cells_per_shard`` (merged into ``config``)."""
    config = dict(kw.pop("config", None) or {})
    if per is not None:
        config["cells_per_shard"] = per
    options = {"workers": workers, "config": config, "progress": False, "processes": False}
    return build(source, input_dir=input_dir, output=output, **options, **kw)
