"""The choices the evaluation commands offer, importable without torch or scikit-learn: a command line parser
needs them before anything is scored (``chammi eval --help`` answered in 7 s when it imported the scorers
for their names)."""

from __future__ import annotations

#: Distances of the 1-NN protocol (:mod:`chammi_data.evaluation.knn`).
METRICS: tuple[str, ...] = ("cosine", "l2")
#: Default bound on the number of similarity entries held at once (queries per block x references).
DEFAULT_BLOCK_SIZE: int = 1 << 25
#: The CHAMMI-75 suite's benchmarks in the registry's order (:mod:`chammi_data.evaluation.benchmarks.registry`
#: checks it holds exactly these).
BENCHMARK_NAMES: tuple[str, ...] = ("chammi", "rbc-mc", "idr0017", "cellphie", "jumpcp", "hpav23")
