"""``chammi demo --dataset chammi75``: the CHAMMI-75 path end to end on its embedded sample.

Steps (each with a progress bar): write the CHAMMI-75 sample in its published layout (5 studies, 1 to 5
channels, sizes from 72 x 96 to 128 x 128, guidance files) -> ``chammi-build --source chammi75`` (study
idr0017 held out as Validation) -> train ``configs/chammi75_tiny_cpu.yaml`` (SimCLR on guided crops, no
labels) ->
report folder: the build's accounting, the training loss, and a montage of each study's whole image beside
the guided crops the stream cut from it in two epochs (``index.html``).

CHAMMI-75 has no labels and its benchmark suite is scored elsewhere, so the report shows what the data path
does, not a score.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The steps, in order (the names of its progress bar and of ``timings``).
STEPS = ("sample data", "build release", "train", "report")


def _strip(image: np.ndarray, height: int) -> np.ndarray:
    """(C, H, W) -> one grey strip (its channels side by side, each scaled to ``height`` rows and stretched
    for display)."""
    from PIL import Image

    tiles = []
    for plane in image:
        w = max(1, round(plane.shape[1] * height / plane.shape[0]))
        tile = np.asarray(
            Image.fromarray(plane).resize((w, height), Image.Resampling.BILINEAR), dtype=np.float32
        )
        tiles += [tile / max(float(np.percentile(tile, 99.5)), 1.0), np.ones((height, 3), np.float32)]
    return np.concatenate(tiles[:-1], axis=1)


def save_crop_montage(release: Path, path: Path, size: int, seed: int, height: int = 64) -> Path:
    """One row per study: its first training image whole, then the guided crops of two epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import chammi_data

    whole = chammi_data.load("train", root=release)
    crops = {e: chammi_data.stream(release, seed=seed, guided_crop=size, output="uint8") for e in (0, 1)}
    crops[1].set_epoch(1)
    by_epoch = {e: {s["cell_id"]: s for s in st} for e, st in crops.items()}
    first = whole.rows.drop_duplicates("dataset")
    fig, axes = plt.subplots(len(first), 1, figsize=(12, 1.6 * len(first)), squeeze=False)
    for ax, (i, row) in zip(axes[:, 0], first.iterrows(), strict=True):
        parts = [_strip(whole.read_array(int(i)), height)]
        for e in (0, 1):
            s = by_epoch[e][row["cell_id"]]
            parts += [np.ones((height, 12), np.float32), _strip(s["image"], height)]
        ax.imshow(np.concatenate(parts, axis=1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"{row['dataset']}: {row['channels']} - whole image | crop epoch 0 | crop epoch 1", fontsize=8
        )
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_chammi75_demo(
    out: str | Path = "demo_out",
    *,
    seed: int = 0,
    workers: int = 2,
    quick: bool = False,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run :data:`STEPS` into ``out``; returns {report, losses, accounting, timings}. ``quick`` trains a
    handful of steps (tests)."""
    from chammi_cli.build import own_pipelines
    from chammi_cli.demo_run import StepClock
    from chammi_models.training.config import load_config
    from chammi_models.training.train import train

    own_pipelines()
    from pipelines.engine.build import build
    from pipelines.sources.synthetic import write_sample

    out = Path(out)
    raw, release, run, report = out / "raw", out / "release", out / "run", out / "report"
    clock = StepClock(STEPS, "chammi demo (CHAMMI-75)")
    timings, step_done = clock.timings, clock.done

    t0 = time.perf_counter()
    write_sample(raw, seed=seed, sources=["chammi75"], progress=True)
    step_done("sample data", t0)
    t0 = time.perf_counter()
    config = {"chammi75": {"holdout_studies": ["idr0017"], "images_per_unit": 4}}
    result = build("chammi75", raw / "chammi75", release, workers=workers, config=config, seed=seed)
    if not result.ok:
        raise RuntimeError(f"the CHAMMI-75 sample build failed:\n{result.summary()}")
    print(result.summary())
    step_done("build release", t0)
    t0 = time.perf_counter()
    extra = [f"run.seed={seed}"] + (["optim.max_steps=4", "optim.warmup_steps=1"] if quick else [])
    trained = train(load_config("chammi75_tiny_cpu", [*extra, *overrides]), release, run)
    step_done("train", t0)
    t0 = time.perf_counter()
    report.mkdir(parents=True, exist_ok=True)
    size = load_config("chammi75_tiny_cpu", list(overrides)).data.image_size
    save_crop_montage(release, report / "crops.png", size, seed)
    summary = {
        "accounting": result.ledgers["chammi75"].accounting(),
        "losses": trained.losses,
        "timings_s": timings,
    }
    (report / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    index = _write_index(report, summary)
    step_done("report", t0)
    clock.close()
    return {"report": index, **summary}


def _write_index(report: Path, summary: dict[str, Any]) -> Path:
    kinds = summary["accounting"]["kinds"]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['in']}</td><td>{v['used']}</td><td>{v['skipped']}</td></tr>"
        for k, v in kinds.items()
    )
    losses = summary["losses"]
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>CHAMMI-75 demo report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>CHAMMI-75 demo report</h1>
<p>The embedded CHAMMI-75 sample in its published layout, built with <code>chammi-build --source
chammi75</code> (whole images, their cells stored with the pixels), trained with
<code>configs/chammi75_tiny_cpu.yaml</code>: SimCLR on guided crops cut in the stream (no labels).</p>
<h2>Build accounting</h2><table><tr><th>kind</th><th>in</th><th>used</th><th>skipped</th></tr>{rows}</table>
<h2>Training</h2><p>{len(losses)} steps; SimCLR loss {losses[0]:.3f} at the first step,
{losses[-1]:.3f} at the last.</p>
<h2>Guided crops</h2><img src="crops.png" alt="whole images and their guided crops in two epochs">
</body></html>
"""
    path = report / "index.html"
    path.write_text(page)
    return path
