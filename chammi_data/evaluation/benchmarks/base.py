"""What every CHAMMI-75 benchmark scorer shares: the input error, the result, the strict input checks, and
writing a result to a folder (``results.json``, ``results.csv``, one PNG plot).

A scorer is a pure function ``score(features, table, **options) -> BenchmarkResult``: ``features`` is an
(N, D) float array, ``table`` a DataFrame of N rows (row i describes ``features[i]``). It checks its input
first (:func:`check_features`, :func:`require_columns`, ...) and raises :class:`BenchmarkInputError` with one
line naming the column, row, plate or class and what is wrong; only then does it compute.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chammi_data.format.release_format import parse_bool_column
from chammi_data.store.paths import manifests_dir

#: Columns of ``results.csv``: one row per (table, group, metric); overall metrics have table ``overall``.
CSV_COLUMNS = ("benchmark", "table", "group", "metric", "value")
#: Libraries whose versions every result records (those the scorers compute with).
LIBRARIES = ("numpy", "pandas", "scipy", "scikit-learn", "torch", "copairs", "chammi")


class BenchmarkInputError(ValueError):
    """Features or table do not satisfy a benchmark's contract; the one-line message names the column, row,
    plate or class and the problem."""


@dataclass
class BenchmarkResult:
    """The scores of one feature set on one benchmark.

    Attributes:
        benchmark: registry name (``rbc-mc``, ``jumpcp``, ...).
        headline: name of the headline metric (a key of ``metrics``); ``value`` is its value.
        metrics: flat {name: float} of every scalar score (NaN where undefined, never missing).
        groups: {table name: DataFrame} per-group results (per site, cell line, gene, class, condition...).
        options: the options the scorer ran with, seeds included (defaults filled in).
        n: number of input rows (samples) and of rows/units actually scored, e.g. ``{"rows": N, "wells": W}``.
        versions: library versions and the platform.
        provenance: reference tables read (path, sha256) and notes on what was excluded and why.
        plot: (group table, label column, value column) drawn by :func:`write_result`; None for a bar chart of
            ``metrics``.
    """

    benchmark: str
    headline: str
    metrics: dict[str, float]
    groups: dict[str, pd.DataFrame] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    plot: tuple[str, str, str] | None = None

    @property
    def value(self) -> float:
        """The headline metric's value."""
        return self.metrics[self.headline]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None)."""
        return to_jsonable(
            {
                "benchmark": self.benchmark,
                "headline": {"metric": self.headline, "value": self.value},
                "metrics": self.metrics,
                "n": self.n,
                "options": self.options,
                "versions": self.versions,
                "provenance": self.provenance,
                "groups": {k: v.to_dict(orient="records") for k, v in self.groups.items()},
            }
        )

    def to_frame(self) -> pd.DataFrame:
        """The long table of ``results.csv`` (:data:`CSV_COLUMNS`): overall metrics, then every numeric
        cell of every group table, its group named by the table's first column."""
        rows = [(self.benchmark, "overall", "", k, v) for k, v in self.metrics.items()]
        for name, frame in self.groups.items():
            if frame.empty:
                continue
            key = frame.columns[0]
            for rec in frame.to_dict(orient="records"):
                for col, val in rec.items():
                    if col != key and _is_number(val):
                        rows.append((self.benchmark, name, str(rec[key]), col, float(val)))
        return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def to_jsonable(value: Any) -> Any:
    """Nested dicts/lists with numpy scalars as Python numbers and NaN/inf as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    """Versions of :data:`LIBRARIES` (``absent`` where not installed) plus Python and the platform."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    out["python"] = platform.python_version()
    out["platform"] = platform.platform()
    return out


def reference_table(benchmark: str, name: str) -> Path:
    """Path of a committed reference table ``manifests/benchmarks/<benchmark>/<name>``."""
    path = manifests_dir() / "benchmarks" / benchmark / name
    if not path.is_file():
        raise FileNotFoundError(
            f"reference table {path} of benchmark {benchmark} is missing; reinstall chammi"
        )
    return path


def table_record(path: Path) -> dict[str, str]:
    """{path, sha256} of a reference table, for a result's provenance."""
    return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


# ----------------------------------------------------------------------------------------------- checks
def check_features(features: Any, table: pd.DataFrame, benchmark: str, allow_nan: bool = False) -> np.ndarray:
    """``features`` as a 2-D float array row-aligned with ``table``.

    Integer input becomes float64; float32/float64 are kept (no copy). With ``allow_nan`` NaN passes (the
    caller replaces it, RBC-MC's protocol); +-inf never does. Raises :class:`BenchmarkInputError` naming the
    first bad rows.
    """
    if not isinstance(table, pd.DataFrame):
        raise BenchmarkInputError(
            f"{benchmark}: table must be a pandas DataFrame, got {type(table).__name__}"
        )
    try:
        x = np.asarray(features)
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"{benchmark}: features are not an array: {exc}") from None
    if x.ndim != 2:
        raise BenchmarkInputError(f"{benchmark}: features must be 2-D (N, D), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise BenchmarkInputError(f"{benchmark}: features must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.float16:
        x = x.astype(np.float64)
    if len(x) != len(table):
        raise BenchmarkInputError(
            f"{benchmark}: features have {len(x)} rows but the table has {len(table)}; row i of the table "
            "describes features[i]"
        )
    if len(x) == 0 or x.shape[1] == 0:
        raise BenchmarkInputError(f"{benchmark}: features are empty, shape {x.shape}")
    bad = np.isinf(x) if allow_nan else ~np.isfinite(x)
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows):
        what = "inf" if allow_nan else "NaN or inf"
        shown = ", ".join(str(int(r)) for r in rows[:5])
        raise BenchmarkInputError(
            f"{benchmark}: features hold {what} values in {len(rows)} row(s): {shown}"
            f"{', ...' if len(rows) > 5 else ''}"
        )
    return x


def require_columns(table: pd.DataFrame, columns: Sequence[str], benchmark: str) -> None:
    """Every column in ``columns`` is in ``table`` and has no empty cell (NaN/None)."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BenchmarkInputError(
            f"{benchmark}: table lacks column(s) {', '.join(missing)}; required: {', '.join(columns)}"
        )
    for c in columns:
        empty = np.flatnonzero(table[c].isna().to_numpy())
        if len(empty):
            raise BenchmarkInputError(
                f"{benchmark}: column {c} is empty in {len(empty)} row(s), first row {int(empty[0])}"
            )


def text_column(table: pd.DataFrame, column: str) -> np.ndarray:
    """(N,) str array of a column (numbers become their text, e.g. a numeric ``well`` id)."""
    return table[column].astype(str).to_numpy()


def bool_column(table: pd.DataFrame, column: str, benchmark: str) -> np.ndarray:
    """(N,) bool array of a column of bools or their spellings (true/false, 1/0, yes/no)."""
    try:
        return parse_bool_column(table[column], f"{benchmark}: column {column}")
    except ValueError as exc:
        raise BenchmarkInputError(str(exc)) from None


def check_values(values: np.ndarray, allowed: Iterable[str], column: str, benchmark: str) -> None:
    """Every value of ``values`` is in ``allowed``; the error names the first bad row and value."""
    allowed = set(allowed)
    bad = np.flatnonzero(~np.isin(values, list(allowed)))
    if len(bad):
        raise BenchmarkInputError(
            f"{benchmark}: column {column} row {int(bad[0])} has {values[bad[0]]!r}; allowed: "
            f"{', '.join(sorted(allowed))}"
        )


def group_codes(table: pd.DataFrame, keys: Sequence[str]) -> np.ndarray:
    """(N,) int64 group number of every row (groups of equal ``keys`` values numbered in first-seen order)."""
    return table.groupby(list(keys), sort=False, dropna=False).ngroup().to_numpy(np.int64)


def check_constant_within(
    table: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], benchmark: str
) -> None:
    """Rows sharing ``keys`` (e.g. one well) agree on ``columns`` (its treatment); errors name the group.

    Vectorised: each column's value codes are compared with the code of its group's first row.
    """
    codes = group_codes(table, keys)
    first = np.full(codes.max() + 1 if len(codes) else 0, -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # the first row of every group
    for col in columns:
        values = pd.factorize(table[col], use_na_sentinel=False)[0]
        bad = np.flatnonzero(values != values[first[codes]])
        if len(bad):
            row = table.iloc[bad[0]]
            key = tuple(row[k] for k in keys) if len(keys) > 1 else row[keys[0]]
            raise BenchmarkInputError(
                f"{benchmark}: rows of {'/'.join(keys)} {key} disagree on {col}; one unit has one value"
            )


def group_mean(
    features: np.ndarray, table: pd.DataFrame, keys: Sequence[str]
) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Mean feature vector of each group of rows sharing ``keys`` (first-seen order).

    Returns (G, D) float64 means, the first row of ``table`` of each group (index reset) and the (G,) row
    counts. One stable sort plus ``np.add.reduceat``: linear in N, no Python loop over groups.
    """
    codes = group_codes(table, keys)
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sums = np.add.reduceat(features[order], starts, axis=0, dtype=np.float64)
    counts = np.diff(np.r_[starts, len(order)])
    first = table.iloc[order[starts]].reset_index(drop=True)
    return sums / counts[:, None], first, counts


# ---------------------------------------------------------------------------------------------- writing
def write_result(result: BenchmarkResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``<benchmark>.png`` into ``out_dir`` (created if missing).

    Returns {"json": path, "csv": path, "plot": path}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "plot": out / f"{result.benchmark}.png",
    }
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    result.to_frame().to_csv(paths["csv"], index=False)
    plot_result(result, paths["plot"])
    return paths


def plot_result(result: BenchmarkResult, path: Path, dpi: int = 110) -> Path:
    """Horizontal bars of the result's plot table (one bar per group) or of its overall metrics; the headline
    in the title. Agg canvas: no display needed."""
    if (
        result.plot is not None
        and result.plot[0] in result.groups
        and not result.groups[result.plot[0]].empty
    ):
        name, label, column = result.plot
        frame = result.groups[name]
        labels, values, xlabel = frame[label].astype(str).tolist(), frame[column].astype(float), column
    else:
        labels, values, xlabel = list(result.metrics), pd.Series(result.metrics, dtype=float), "value"
    fig = Figure(figsize=(7.5, 1.2 + 0.28 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(np.arange(len(labels)), np.nan_to_num(np.asarray(values, dtype=float)), color="#4477aa")
    ax.set_yticks(np.arange(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(f"{result.benchmark}: {result.headline} = {result.value:.4f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
