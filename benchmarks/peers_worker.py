"""The peers' side of ``benchmarks/peers.py``: run by the interpreter of a SEPARATE virtual environment that
has litdata and mosaicml-streaming (they pin numpy / botocore versions this project does not use).

    PEERS_PYTHON benchmarks/peers_worker.py --cells DIR --work DIR --out RESULT.json [--passes 5]

``--cells`` holds ``cells.bin`` (every cell's uint8 (C, H, W) pixels, back to back) and ``cells.json``
(``[{"cell_id", "shape", "offset"}]``), written by ``peers.py`` from our release. Each peer converts the
same cells with its own writer (litdata ``optimize`` with zstd and without compression, MosaicML
``MDSWriter`` with zstd and without), then reads every cell back in this one process (no DataLoader workers)
as a uint8 array, once to warm the page cache and then ``--passes`` timed passes. Imports nothing of ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

CELLS: list[np.ndarray] = []
IDS: list[str] = []


def _load_cells(folder: Path) -> None:
    index = json.loads((folder / "cells.json").read_text())
    raw = np.fromfile(folder / "cells.bin", dtype=np.uint8)
    CELLS.clear()
    IDS.clear()
    for entry in index:
        n = int(np.prod(entry["shape"]))
        CELLS.append(raw[entry["offset"] : entry["offset"] + n].reshape(entry["shape"]).copy())
        IDS.append(entry["cell_id"])


class Item:
    """litdata's ``fn``: cell i as a dict. Picklable: its worker processes load the cells themselves."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, i: int) -> dict[str, Any]:
        if not CELLS:
            _load_cells(self.folder)
        return {"image": CELLS[i], "cell_id": IDS[i]}


def _disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _timed(read_all, passes: int) -> tuple[float, list[float], float]:
    """(median samples/s, every pass's samples/s, median samples per CPU second of this process) after one
    warm-up pass."""
    n = read_all()
    assert n == len(CELLS), f"read {n} of {len(CELLS)} cells"
    rates, cpu_rates = [], []
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        read_all()
        rates.append(len(CELLS) / (time.perf_counter() - t0))
        cpu_rates.append(len(CELLS) / (time.process_time() - c0))
    return statistics.median(rates), rates, statistics.median(cpu_rates)


def _read_all(ds: Any) -> int:
    """Iterate a peer's dataset once; every item's image must be a uint8 (C, H, W) array."""
    n = 0
    for item in ds:
        image = item["image"]
        assert image.dtype == np.uint8 and image.ndim == 3
        n += 1
    return n


def bench_litdata(work: Path, cells: Path, compression: str | None, passes: int) -> dict[str, Any]:
    from litdata import StreamingDataset, optimize

    out = work / f"litdata-{compression or 'none'}"
    shutil.rmtree(out, ignore_errors=True)
    optimize(
        fn=Item(cells),
        inputs=list(range(len(CELLS))),
        output_dir=str(out),
        chunk_bytes="64MB",
        compression=compression,
        num_workers=1,
        verbose=False,
    )
    ds = StreamingDataset(str(out), cache_dir=str(work / "litdata-cache"))
    first = ds[0]
    assert np.array_equal(np.asarray(first["image"]), CELLS[IDS.index(first["cell_id"])])

    rate, rates, cpu = _timed(lambda: _read_all(ds), passes)
    return {"samples_per_s": rate, "passes": rates, "per_cpu_s": cpu, "disk_mb": _disk_mb(out)}


def bench_mds(work: Path, compression: str | None, passes: int) -> dict[str, Any]:
    from streaming import MDSWriter, StreamingDataset

    out = work / f"mds-{compression or 'none'}"
    shutil.rmtree(out, ignore_errors=True)
    with MDSWriter(
        out=str(out),
        columns={"image": "ndarray:uint8", "cell_id": "str"},
        compression=compression,
        size_limit="64mb",
    ) as writer:
        for i in range(len(CELLS)):
            writer.write({"image": CELLS[i], "cell_id": IDS[i]})
    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)

    rate, rates, cpu = _timed(lambda: _read_all(ds), passes)
    return {"samples_per_s": rate, "passes": rates, "per_cpu_s": cpu, "disk_mb": _disk_mb(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--passes", type=int, default=5)
    a = ap.parse_args()
    _load_cells(a.cells)
    import litdata
    import streaming

    res: dict[str, Any] = {
        "versions": {"litdata": litdata.__version__, "mosaicml-streaming": streaming.__version__}
    }
    res["litdata-zstd"] = bench_litdata(a.work, a.cells, "zstd", a.passes)
    res["litdata-none"] = bench_litdata(a.work, a.cells, None, a.passes)
    res["mds-zstd"] = bench_mds(a.work, "zstd", a.passes)
    res["mds-none"] = bench_mds(a.work, None, a.passes)
    a.out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
