"""The CHAMMI-75 benchmarks' sample data, built and embedded once per test session (shared by the adapter
tests in ``tests/pipelines`` and the command tests in ``tests/chammi_cli``).

``release(name, factory)``: the benchmark's sample layout (its ``synth``) built into a release through the
``chammi-build`` command line; ``embedded(name, factory)``: that release scored through ``chammi eval
--benchmark`` with a tiny untrained zoo model (seeded), returning the results folder (with ``features/``).
Sizes and scorer options are the smallest the protocols allow, so the whole suite runs in about a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import chammi_cli
import chammi_cli.build as build_cli
from pipelines.sources.registry import get_pipeline

#: benchmark name -> build source
SOURCES = {
    "rbc-mc": "rbc_mc",
    "idr0017": "idr0017",
    "cellphie": "cellphie",
    "jumpcp": "jumpcp",
    "hpav23": "hpav23",
}
#: a tiny channel-adaptive model: untrained, seeded, 32 x 32 inputs
TINY_MODEL = [
    "--checkpoint",
    "channel_vit",
    *("--model-option", "embed_dim=32", "--model-option", "depth=1", "--model-option", "num_heads=2"),
    *("--model-option", "img_size=32", "--image-size", "32", "--quiet"),
]
#: per benchmark: the embedding mode and scorer options that keep the run small (never the protocol's steps)
EVAL_ARGS = {
    "rbc-mc": [],
    "idr0017": [],
    "cellphie": ["--bag-of-channels", "--option", "slice_components=5", "--option", "n_jobs=1"],
    "jumpcp": ["--option", "null_size=2000", "--option", "consistency_null_size=2000"],
    "hpav23": ["--option", "seeds=[0]", "--option", "epochs=40"],
}
_RAW: dict[str, Path] = {}
_RELEASES: dict[str, Path] = {}
_RESULTS: dict[str, Path] = {}


def raw(name: str, factory: pytest.TempPathFactory) -> Path:
    """The benchmark's sample test layout (written once per session)."""
    if name not in _RAW:
        folder = factory.mktemp(f"raw-{SOURCES[name]}") / SOURCES[name]
        get_pipeline(SOURCES[name]).synth(folder, seed=0)
        _RAW[name] = folder
    return _RAW[name]


def release(name: str, factory: pytest.TempPathFactory) -> Path:
    """The sample built into a release by ``chammi-build --source <source> --input <raw>`` (once)."""
    if name not in _RELEASES:
        out = factory.mktemp(f"release-{SOURCES[name]}") / "release"
        argv = ["--source", SOURCES[name], "--input", str(raw(name, factory)), "--output", str(out)]
        assert build_cli.main([*argv, "--workers", "1", "--quiet", "--set", "cells_per_shard=16"]) == 0
        _RELEASES[name] = out
    return _RELEASES[name]


def embedded(name: str, factory: pytest.TempPathFactory) -> Path:
    """``chammi eval --benchmark NAME`` of the release with the tiny model; the results folder (once)."""
    if name not in _RESULTS:
        out = factory.mktemp(f"eval-{SOURCES[name]}") / "results"
        argv = ["eval", "--benchmark", name, "--release", str(release(name, factory)), "--out", str(out)]
        assert chammi_cli.main([*argv, *TINY_MODEL, *EVAL_ARGS[name]]) == 0
        _RESULTS[name] = out
    return _RESULTS[name]
