"""The six CHAMMI-75 benchmarks as data: name -> :class:`Benchmark` (title, headline metric, required table
columns, scorer, default options, the build source its adapter uses).

Unknown names raise ``KeyError`` listing the valid ones; unknown options raise :class:`BenchmarkInputError`
listing the scorer's options (checked against its signature, the one place defaults are written).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Each scorer module by its full name: importing them through the package would be a cycle with __init__.
import chammi_data.evaluation.benchmarks.cellphie as cellphie
import chammi_data.evaluation.benchmarks.chammi as chammi
import chammi_data.evaluation.benchmarks.hpav23 as hpav23
import chammi_data.evaluation.benchmarks.idr0017 as idr0017
import chammi_data.evaluation.benchmarks.jumpcp as jumpcp
import chammi_data.evaluation.benchmarks.rbc_mc as rbc_mc
from chammi_data.evaluation.benchmarks.base import BenchmarkInputError, BenchmarkResult
from chammi_data.evaluation.options import BENCHMARK_NAMES


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``scorer(features, table, **options) -> BenchmarkResult``; ``defaults`` are its keyword
    options with their defaults; ``source`` names the build source (adapter) that makes its release;
    ``columns`` are the table columns the scorer requires (each release row's ``meta`` carries them)."""

    name: str
    title: str
    headline: str
    columns: tuple[str, ...]
    scorer: Callable[..., BenchmarkResult]
    source: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def score(self, features: Any, table: Any, **options: Any) -> BenchmarkResult:
        """Run the scorer after checking the option names."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise BenchmarkInputError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(self.defaults))}"
            )
        return self.scorer(features, table, **options)


def _entry(module: Any, title: str, headline: str, source: str, description: str) -> Benchmark:
    params = inspect.signature(module.score).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return Benchmark(
        module.NAME, title, headline, tuple(module.COLUMNS), module.score, source, description, defaults
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        _entry(
            chammi,
            "CHAMMI (WTC-11, HPA, Cell Painting)",
            "cps",
            "chammi",
            "1-NN per task, macro-F1, CHAMMI Performance Score",
        ),
        _entry(
            rbc_mc,
            "RBC-MC red blood cell morphology, cross-site",
            "mean_accuracy",
            "rbc_mc",
            "logistic regression trained on one site, tested on the other; mean accuracy",
        ),
        _entry(
            idr0017,
            "IDR0017 compound hits on HCT116 isogenic lines",
            "auc_roc",
            "idr0017",
            "Wasserstein effect size of each compound vs controls, ranked against ground truth",
        ),
        _entry(
            cellphie,
            "CellPHIE pooled genetic screen",
            "lr_f1",
            "cellphie",
            "per-gene knock-out vs non-target, logistic regression and random forest",
        ),
        _entry(
            jumpcp,
            "JUMP-CP CPJUMP1 compound plates",
            "active_fraction",
            "jumpcp",
            "copairs mAP: phenotypic activity vs DMSO and consistency of shared targets",
        ),
        _entry(
            hpav23,
            "HPAv23 single-cell protein localisation",
            "micro_ap",
            "hpav23",
            "multi-label MLP on the antibody split; AP, AUC, ranking metrics",
        ),
    )
}


def list_benchmarks() -> list[str]:
    """Registered benchmark names, in the registry's order."""
    return list(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    """The :class:`Benchmark` called ``name``; ``KeyError`` listing the valid names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}") from None


if tuple(BENCHMARKS) != BENCHMARK_NAMES:  # the parsers offer BENCHMARK_NAMES without importing the scorers
    raise ImportError(
        f"chammi_data.evaluation.options.BENCHMARK_NAMES {BENCHMARK_NAMES} != {tuple(BENCHMARKS)}"
    )
