"""Against the peers, at equal disk: our readers vs litdata and MosaicML streaming (MDS) on the same cells.

    python benchmarks/peers.py [--peers-python /work/venv-peers/bin/python] [--passes 5]

The embedded sample raw data (632 cells: 196 WTC, 176 HPA, 260 CP) is built three times with
``chammi-build --source all`` (member codecs zstd, lz4 and none). The cells' uint8 pixels are handed to
``peers_worker.py``, run by the interpreter of a separate virtual environment with the peers installed
(benchmark-only dependencies, never in CI; litdata and mosaicml-streaming pin numpy / botocore versions this
project does not use):

    python3.11 -m venv /work/venv-peers
    /work/venv-peers/bin/pip install 'numpy<2.2' litdata mosaicml-streaming

which converts them with the peers' own writers (litdata ``optimize`` with zstd and without compression,
``MDSWriter`` with zstd and without) and reads them back. Every reader runs in one process (no DataLoader
workers), reads every cell as a uint8 (C, H, W) array, once to warm the page cache, then ``--passes`` timed
passes (the median is reported, with the spread). Our rows: ``stream(split="all", output="uint8")`` in
both orders and ``load("all").read_array``, per codec. Results: ``benchmarks/results/peers.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chammi_data.format.codec import CODECS  # noqa: E402
from chammi_data.loading.dataset import load  # noqa: E402
from chammi_data.loading.streaming import stream  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def build_releases(work: Path) -> dict[str, Path]:
    """The sample raw data, built once per member codec."""
    from pipelines.engine.build import build
    from pipelines.sources.synthetic import write_sample

    raw = work / "raw"
    if not raw.is_dir():
        write_sample(raw, seed=0, progress=False)
    out = {}
    for codec in CODECS:
        out[codec] = work / f"release-{codec}"
        if (out[codec] / "release.json").is_file():
            continue
        result = build(
            "all", input_dir=raw, output=out[codec], workers=2, config={"codec": codec}, progress=False
        )
        assert result.ok, result.summary()
    return out


def dump_cells(release: Path, folder: Path) -> int:
    """Every cell's pixels for the peers' writers: ``cells.bin`` + ``cells.json``; returns the count."""
    ds = load("all", root=release)
    folder.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    with open(folder / "cells.bin", "wb") as fh:
        for i in range(len(ds)):
            image = np.ascontiguousarray(ds.read_array(i))
            fh.write(image.tobytes())
            index.append({"cell_id": ds.rows["cell_id"][i], "shape": list(image.shape), "offset": offset})
            offset += image.nbytes
    (folder / "cells.json").write_text(json.dumps(index))
    return len(index)


def _timed(read_all, n: int, passes: int) -> dict[str, Any]:
    """Median samples/s over ``passes`` after a warm-up pass: wall time, and per CPU second of this process
    (all its threads), which other processes on a shared machine disturb less."""
    assert read_all() == n
    rates, cpu_rates = [], []
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        read_all()
        rates.append(n / (time.perf_counter() - t0))
        cpu_rates.append(n / (time.process_time() - c0))
    return {
        "samples_per_s": statistics.median(rates),
        "passes": rates,
        "per_cpu_s": statistics.median(cpu_rates),
    }


def ours(release: Path, passes: int) -> dict[str, Any]:
    """Our rows for one release: stream (both orders) and load().read_array, samples/s and MB on disk."""
    disk = sum(p.stat().st_size for p in (release / "shards").rglob("*.tar")) / 1e6
    out: dict[str, Any] = {"disk_mb": disk}
    for order in ("exact", "shards"):
        st = stream(release, split="all", output="uint8", order=order)

        def read_stream(st=st) -> int:
            n = 0
            for sample in st:
                assert sample["image"].dtype == np.uint8
                n += 1
            return n

        out[f"stream-{order}"] = _timed(read_stream, len(st), passes)
    ds = load("all", root=release)

    def read_load() -> int:
        for i in range(len(ds)):
            ds.read_array(i)
        return len(ds)

    out["load"] = _timed(read_load, len(ds), passes)
    return out


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for codec in CODECS:
        r = res["ours"][codec]
        for name, key in (
            (f"ours `stream(split='all', output='uint8')` ({codec}, exact order)", "stream-exact"),
            (f"ours `stream` ({codec}, shards order)", "stream-shards"),
            (f"ours `load().read_array` ({codec})", "load"),
        ):
            rows.append((name, r[key], r["disk_mb"]))
    peers = res["peers"]
    for key, name in (
        ("litdata-zstd", "litdata `StreamingDataset`, zstd"),
        ("litdata-none", "litdata `StreamingDataset`, uncompressed"),
        ("mds-zstd", "MosaicML `StreamingDataset` (MDS), zstd"),
        ("mds-none", "MosaicML `StreamingDataset` (MDS), uncompressed"),
    ):
        rows.append((name, peers[key], peers[key]["disk_mb"]))
    lines = [
        "# Against the peers at equal disk (benchmarks/peers.py)",
        "",
        f"`python benchmarks/peers.py --passes {res['passes']}` on {res['machine']}; {res['cells']} sample "
        "cells (the embedded sample data built with `chammi-build --source all`), every reader in one "
        f"process, page cache warm, uint8 images; median of {res['passes']} passes (spread min-max). Peers: "
        + ", ".join(f"{k} {v}" for k, v in peers["versions"].items())
        + " (their own writers, in a separate virtual environment).",
        "",
        "| reader | samples/s | spread | samples per CPU second | MB on disk |",
        "|---|---|---|---|---|",
    ]
    for name, r, disk in rows:
        lines.append(
            f"| {name} | {r['samples_per_s']:.0f} | {min(r['passes']):.0f}-{max(r['passes']):.0f} | "
            f"{r['per_cpu_s']:.0f} | {disk:.0f} |"
        )
    o = res["ours"]
    fast = max(("lz4", "none"), key=lambda c: o[c]["stream-exact"]["samples_per_s"])

    def vs(ours: dict[str, Any], peer: str) -> str:
        p = peers[peer]
        wall = ours["samples_per_s"] / p["samples_per_s"]
        return f"**{wall:.2f}x** (per CPU second {ours['per_cpu_s'] / p['per_cpu_s']:.2f}x)"

    lines += [
        "",
        "## Targets on this run",
        "",
        f"- `stream` (zstd) / litdata zstd: {vs(o['zstd']['stream-exact'], 'litdata-zstd')} at "
        f"{o['zstd']['disk_mb']:.0f} vs {peers['litdata-zstd']['disk_mb']:.0f} MB (target >= 1.3x)",
        f"- `stream` ({fast}, the faster codec) / litdata uncompressed: "
        f"{vs(o[fast]['stream-exact'], 'litdata-none')} at {o[fast]['disk_mb']:.0f} vs "
        f"{peers['litdata-none']['disk_mb']:.0f} MB (target: match, >= 1.0x)",
        f"- `stream` (lz4) / litdata zstd: {vs(o['lz4']['stream-exact'], 'litdata-zstd')} at "
        f"{o['lz4']['disk_mb']:.0f} MB",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers-python", default="/work/venv-peers/bin/python")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None, help="keep the releases and peers' data here")
    a = ap.parse_args()
    res: dict[str, Any] = {
        "passes": a.passes,
        "machine": f"{platform.machine()} python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        releases = build_releases(work)
        res["cells"] = dump_cells(releases["zstd"], work / "cells")
        subprocess.run(
            [
                a.peers_python,
                str(Path(__file__).with_name("peers_worker.py")),
                "--cells",
                str(work / "cells"),
                "--work",
                str(work / "peers"),
                "--out",
                str(work / "peers.json"),
                "--passes",
                str(a.passes),
            ],
            check=True,
        )
        res["peers"] = json.loads((work / "peers.json").read_text())
        res["ours"] = {codec: ours(path, a.passes) for codec, path in releases.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "peers.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
