"""``chammi demo``: the whole system end to end on the embedded sample data, with a report a person can open.

Steps (each with a progress bar): write sample raw data of all three sources in their real layouts ->
``chammi-build --source all`` -> train the tiny channel-adaptive config -> embed it and an untrained
ChannelReplication baseline -> evaluate both with the official protocol -> report folder (results CSV/JSON,
radar plot, montage of cells per source and class, index.html).

It belongs to the application layer (``chammi_models/cli/``), the only part of ``chammi_models`` that may
import ``pipelines``: it builds the sample release with them (lazily, so ``chammi --help`` does not load
them).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: The demo's steps, in order (the names of its progress bar and of ``DemoResult.timings``).
DEMO_STEPS = ("sample data", "build release", "train", "embed", "evaluate", "report")


class StepClock:
    """The demo's step bar: ``done(name, t0)`` records the step's seconds in ``timings`` and moves the bar."""

    def __init__(self, steps: Sequence[str], desc: str) -> None:
        from chammi_data.progress import progress as progress_bar

        self.timings: dict[str, float] = {}
        self.bar: Any = progress_bar(total=len(steps), desc=desc, unit="step")

    def done(self, name: str, t0: float) -> None:
        self.timings[name] = time.perf_counter() - t0
        self.bar.set_postfix(done=f"{name} in {self.timings[name]:.0f} s")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class DemoResult:
    out: Path
    report: Path
    scores: dict[str, float | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def trained_beats_baseline(self) -> bool:
        t, b = self.scores.get("trained"), self.scores.get("baseline")
        return t is not None and b is not None and t > b


def _baseline_features(release: Path, backbone: str, image_size: int, seed: int) -> dict[str, np.ndarray]:
    """Features of an untrained ChannelReplication model (random trunk: no weights are downloaded here)."""
    import torch

    from chammi_models import create_model
    from chammi_models.embed import extract_features

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model("channel_replication", backbone=backbone).to(device)
    return extract_features(
        model, release, image_size=image_size, batch_size=64, workers=0, device=device, progress=True
    )


def _examples(release: Path, per_class: int = 3) -> dict[str, dict[str, list[np.ndarray]]]:
    """Up to ``per_class`` training cells per (source, label), first in manifest order."""
    from chammi_data.format.manifest import read_manifest
    from chammi_data.format.shards import ShardReader
    from chammi_data.store.storage import open_store

    manifest = read_manifest(release)
    reader = ShardReader(open_store(release))
    out: dict[str, dict[str, list[np.ndarray]]] = {}
    for (source, label), rows in manifest.groupby(["source", "label"], sort=True):
        picked = rows.head(per_class)
        out.setdefault(source, {})[label] = [
            np.asarray(reader.read(row)) for row in picked.to_dict("records")
        ]
    return out


def _write_index(
    report: Path,
    scores: dict[str, float | None],
    tables: dict[str, Any],
    timings: dict[str, float],
    metric: str,
) -> Path:
    rows = []
    trained, baseline = tables["trained"], tables["baseline"]
    for (_, t), (_, b) in zip(trained.iterrows(), baseline.iterrows(), strict=True):
        rows.append(
            f"<tr><td>{html.escape(str(t.dataset))}</td><td>{html.escape(str(t.task))}</td>"
            f"<td>{int(t.n_test)}</td><td>{t.f1_score_macro:.3f}</td><td>{b.f1_score_macro:.3f}</td>"
            f"<td>{t.accuracy:.3f}</td><td>{b.accuracy:.3f}</td></tr>"
        )
    fmt = {k: ("n/a" if v is None else f"{v:.3f}") for k, v in scores.items()}
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CHAMMI demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>CHAMMI demo report</h1>
<p>Embedded sample data of all three sources, built with <code>chammi-build --source all</code>, scored with
the official 1-NN protocol (metric: <b>{metric}</b>). CPS = W2/3 + (H2+H3)/6 + (C2+C3+C4)/9 over macro-F1.</p>
<h2>CHAMMI Performance Score</h2>
<table><tr><th>model</th><th>CPS</th></tr>
<tr><td>trained (configs/tiny_cpu.yaml)</td><td>{fmt["trained"]}</td></tr>
<tr><td>untrained ChannelReplication baseline</td><td>{fmt["baseline"]}</td></tr></table>
<h2>Per task (macro-F1 / accuracy)</h2>
<table><tr><th>dataset</th><th>task</th><th>n test</th><th>F1 trained</th><th>F1 baseline</th>
<th>acc trained</th><th>acc baseline</th></tr>{"".join(rows)}</table>
<h2>Radar</h2><img src="radar.png" alt="radar plot of per-task macro-F1">
<h2>Sample cells per source and class</h2><img src="montage.png" alt="montage of cells">
<p>Step times: {html.escape(timing)}. Files: <a href="results_trained.csv">results_trained.csv</a>,
<a href="results_baseline.csv">results_baseline.csv</a>, <a href="results.json">results.json</a>.</p>
</body></html>
"""
    path = report / "index.html"
    path.write_text(page)
    return path


def run_demo(
    out: str | Path = "demo_out",
    *,
    seed: int = 0,
    workers: int = 2,
    quick: bool = False,
    overrides: Sequence[str] = (),
    metric: str = "cosine",
) -> DemoResult:
    """Run every step of :data:`DEMO_STEPS` into ``out``; returns the report location and both CPS values.

    ``quick`` trains only a handful of steps (for tests: it checks that the path runs, not that it learns).
    """
    import chammi_data
    from chammi_cli.build import own_pipelines
    from chammi_data.evaluation.features import load_features, save_features
    from chammi_data.evaluation.montage import save_montage
    from chammi_data.evaluation.plots import radar_plot
    from chammi_models.embed import embed
    from chammi_models.training.config import load_config
    from chammi_models.training.train import train

    own_pipelines()
    from pipelines.engine.build import build
    from pipelines.sources.synthetic import write_sample

    out = Path(out)
    raw, release, run, feats, report = (
        out / "raw",
        out / "release",
        out / "run",
        out / "features",
        out / "report",
    )
    clock = StepClock(DEMO_STEPS, "chammi demo")
    timings, step_done = clock.timings, clock.done

    t0 = time.perf_counter()
    write_sample(raw, seed=seed, progress=True)
    step_done("sample data", t0)

    t0 = time.perf_counter()
    result = build("all", input_dir=raw, output=release, workers=workers, seed=seed, progress=True)
    if not result.ok:
        raise RuntimeError(f"the sample build failed:\n{result.summary()}")
    print(result.summary())
    step_done("build release", t0)

    t0 = time.perf_counter()
    extra = [f"run.seed={seed}"] + (["optim.max_steps=4", "optim.warmup_steps=1"] if quick else [])
    config = load_config("tiny_cpu", [*extra, *overrides])
    train(config, release, run)
    step_done("train", t0)

    t0 = time.perf_counter()
    embed(run, release, feats / "trained", batch_size=64, workers=0)  # GPU when present
    base = _baseline_features(release, config.model.backbone, config.data.image_size, seed)
    save_features(feats / "baseline", base, "features")
    step_done("embed", t0)

    t0 = time.perf_counter()
    report.mkdir(parents=True, exist_ok=True)
    results = {
        name: chammi_data.evaluate(load_features(feats / name), release, metric=metric)
        for name in ("trained", "baseline")
    }
    for name, res in results.items():
        res.official_table().to_csv(report / f"results_{name}.csv", index=False)
    step_done("evaluate", t0)

    t0 = time.perf_counter()
    scores = {name: res.cps for name, res in results.items()}
    tables = {name: res.table for name, res in results.items()}
    radar_plot(
        {"trained (tiny_cpu)": tables["trained"], "untrained ChannelReplication": tables["baseline"]},
        report / "radar.png",
        title=f"CHAMMI sample: macro-F1 per task ({metric})",
    )
    save_montage(_examples(release), report / "montage.png")
    (report / "results.json").write_text(
        json.dumps(
            {
                "metric": metric,
                "cps": scores,
                "timings_s": timings,
                "tables": {k: v.to_dict(orient="records") for k, v in tables.items()},
            },
            indent=2,
        )
    )
    index = _write_index(report, scores, tables, timings, metric)
    step_done("report", t0)
    clock.close()
    return DemoResult(out=out, report=index, scores=scores, timings=timings)
