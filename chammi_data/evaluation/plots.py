"""Radar plot of the nine CHAMMI tasks (like the paper's Figure 5), one polygon per model; :func:`draw_radar`
draws any axes (the benchmark suite's report uses it).

Uses matplotlib's object API with the Agg canvas (no pyplot, no display), so it works headless and never
touches global backend state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chammi_data.format.vocab import SOURCE_KEYS, SOURCES, source_info

_SHORT = {"wtc11": "WTC", "hpa": "HPA", "cp": "CP"}
_TASK_NUMBER = {"Task_one": 1, "Task_two": 2, "Task_three": 3, "Task_four": 4}

#: The nine axes in order: (source key, task).
RADAR_AXES: tuple[tuple[str, str], ...] = tuple((k, t) for k in SOURCE_KEYS for t in SOURCES[k].tasks)


def axis_label(source: str, task: str) -> str:
    """``WTC-1 (IID)``-style label; task one is the in-distribution task of every source."""
    key = source_info(source).key
    n = _TASK_NUMBER[task]
    return f"{_SHORT[key]}-{n} ({'IID' if n == 1 else 'OOD'})"


def task_scores(
    table: pd.DataFrame | Sequence[Mapping[str, Any]], column: str = "f1_score_macro"
) -> np.ndarray:
    """(9,) scores in :data:`RADAR_AXES` order from a results table (``dataset`` as folder or key); NaN if
    absent."""
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    lookup = {
        (source_info(str(r["dataset"])).key, str(r["task"])): float(r[column]) for _, r in frame.iterrows()
    }
    return np.array([lookup.get(axis, np.nan) for axis in RADAR_AXES], dtype=np.float64)


def radar_plot(
    results: Mapping[str, pd.DataFrame | Sequence[Mapping[str, Any]]],
    path: str | Path,
    title: str | None = None,
    column: str = "f1_score_macro",
    dpi: int = 120,
) -> Path:
    """Draw one radar with nine axes (W1 W2 | H1 H2 H3 | C1 C2 C3 C4) and one polygon per named table.

    Args:
        results: {model name: results table}; a missing task is drawn at 0 and marked "n/a" in the legend.
        path: output image (PNG by extension; any format matplotlib writes).
        title: figure title (default: the score column).
        column: which score to draw (``f1_score_macro`` or ``accuracy``), radial range 0..1.

    Returns:
        The written path.
    """
    if not results:
        raise ValueError("radar_plot needs at least one results table")
    labels = [axis_label(*a) for a in RADAR_AXES]
    series = {name: task_scores(table, column) for name, table in results.items()}
    return draw_radar(labels, series, path, title or column, "task(s)", dpi)


def draw_radar(
    labels: Sequence[str],
    series: Mapping[str, np.ndarray],
    path: str | Path,
    title: str,
    missing_what: str = "axes",
    dpi: int = 120,
) -> Path:
    """A radar with one axis per label (radial range 0..1) and one polygon per named (len(labels),) score
    array; a NaN score is drawn at 0 and counted as "n/a" in the legend. Returns the written path."""
    n = len(labels)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    closed = np.append(angles, angles[0])
    fig = Figure(figsize=(7.5, 7.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_yticklabels(["0.2", "0.4", "0.6", "0.8", "1.0"], fontsize=7, color="0.4")
    ax.set_xticks(angles)
    ax.set_xticklabels(list(labels), fontsize=9)
    for name, scores in series.items():
        scores = np.asarray(scores, dtype=np.float64)
        missing = np.isnan(scores)
        values = np.where(missing, 0.0, scores)
        label = f"{name} (n/a: {int(missing.sum())} {missing_what})" if missing.any() else name
        line = ax.plot(closed, np.append(values, values[0]), linewidth=1.6, label=label)[0]
        ax.fill(closed, np.append(values, values[0]), alpha=0.08, color=line.get_color())
    ax.set_title(title, pad=24)
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(3, len(series)), fontsize=8, frameon=False
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
