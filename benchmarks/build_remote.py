"""`chammi-build` from an object store into an object store against the same build local-to-local (run by
``python benchmarks/build.py --remote``; the rows go into ``benchmarks/results/build.md``).

Per source (and ``all``), in one run and alternating, ``--repeat`` times each (the median is reported):

- **local**: 2 local dask workers, raw data in a folder, the release into a folder;
- **S3**: the same 2 workers, raw data in moto's S3 server on 127.0.0.1, the release written into it;
- **S3 + 20 ms**: the same through a TCP proxy that holds every request 20 ms (``tests.servers.DelayProxy``
  in per-request mode: an upload is held once, not once per 64 KiB chunk).

Reported: wall seconds of the build (discovery to the committed release), the ratio local / S3 (the
issue's target: >= 0.8x, and >= 0.7x with 20 ms per request), the same ratio of the units and
shard-writing phases alone (without the cluster start and the S3 clients' set-up, a fixed cost per
build), the CPU seconds of the build's own processes (client and workers: this process and its reaped
children) and - apart - of the S3 server and of the proxy, which run on the same cores here. ``cpu bound``
= local CPU / (S3 build CPU + server CPU [+ proxy CPU]): what the ratio can be at most when the build keeps
every core busy, as it does here.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the servers the tests start

HEADER = "## Object store vs local disk (`python benchmarks/build.py --remote`)"


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the local cluster's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_build(
    source: str, inp: str, out: str, input_options: dict[str, Any] | None = None
) -> dict[str, float]:
    from pipelines.engine.build import build

    c0, t0 = _cpu(), time.perf_counter()
    res = build(source, input_dir=inp, output=out, workers=2, progress=False, input_options=input_options)
    wall = time.perf_counter() - t0
    assert res.ok, res.failed
    names = ["wtc11", "hpa", "cp"] if source == "all" else [source]
    units = max(res.timings[f"{n}.process_s"] for n in names)
    return {
        "wall": wall,
        "cpu": _cpu() - c0,
        "cells": len(res.cells),
        "units": units,
        "write": res.timings["write_s"],
    }


def measure(sample: Path, sources: list[str], repeat: int) -> dict[str, dict[str, Any]]:
    """{source: {"local"|"s3"|"s3_20ms": [run dicts]}} (see the module docstring)."""
    from tests.servers import DelayProxy, S3Server, environ_restored

    results: dict[str, dict[str, Any]] = {}
    with environ_restored(
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"
    ):
        with S3Server() as server:
            os.environ.update(server.env())
            server.upload(sample, "raw", "sample")
            server.upload(Path(__file__).parent / "results", "out", "seed")  # creates the bucket
            with (
                DelayProxy(server.port, 20.0, per_request=True) as proxy,
                tempfile.TemporaryDirectory() as tmp,
            ):
                for source in sources:
                    runs: dict[str, Any] = {"local": [], "s3": [], "s3_20ms": []}
                    inp = str(sample) if source == "all" else str(sample / source)
                    url = "s3://raw/sample" if source == "all" else f"s3://raw/sample/{source}"
                    for i in range(repeat):
                        runs["local"].append(_timed_build(source, inp, f"{tmp}/{source}-{i}"))
                        s0 = server.cpu_seconds()
                        run = _timed_build(source, url, f"s3://out/{source}-{i}")
                        runs["s3"].append({**run, "server": server.cpu_seconds() - s0})
                        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
                        s0, p0 = server.cpu_seconds(), proxy.cpu_seconds()
                        try:
                            run = _timed_build(source, url, f"s3://out/{source}-20ms-{i}")
                        finally:
                            os.environ["AWS_ENDPOINT_URL"] = server.endpoint
                        runs["s3_20ms"].append(
                            {**run, "server": server.cpu_seconds() - s0, "proxy": proxy.cpu_seconds() - p0}
                        )
                        print(source, i, {k: v[-1] for k, v in runs.items()}, flush=True)
                    results[source] = runs
    return results


def _med(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(r.get(key, 0.0) for r in runs))


def section(results: dict[str, dict[str, Any]], repeat: int) -> list[str]:
    """The markdown section for build.md."""
    lines = [
        HEADER,
        "",
        f"2 local dask workers, median of {repeat} alternating runs; moto's S3 server and the delaying proxy "
        "on the same 2 cores. Wall = discovery to committed release; CPU = the build's client and workers; "
        "server and proxy CPU apart.",
        "",
        "| source | cells | local wall s (CPU s) | S3 wall s (CPU s + server s) | S3 / local "
        "| units+write: S3 / local | cpu bound | S3 + 20 ms wall s (CPU s + server s + proxy s) "
        "| (20 ms) / local | units+write | cpu bound | spread of S3 / local |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = []
    for source, runs in results.items():
        loc, s3, slow = runs["local"], runs["s3"], runs["s3_20ms"]
        lw, sw, dw = _med(loc, "wall"), _med(s3, "wall"), _med(slow, "wall")
        lc, sc, dc = _med(loc, "cpu"), _med(s3, "cpu"), _med(slow, "cpu")
        srv, srv20, prx = _med(s3, "server"), _med(slow, "server"), _med(slow, "proxy")
        ratios = sorted(a["wall"] / b["wall"] for a, b in zip(loc, s3, strict=True))
        r, r20 = lw / sw, lw / dw
        phase = [_med(x, "units") + _med(x, "write") for x in (loc, s3, slow)]
        p, p20 = phase[0] / phase[1], phase[0] / phase[2]
        lines.append(
            f"| {source} | {int(loc[0]['cells'])} | {lw:.2f} ({lc:.1f}) | {sw:.2f} ({sc:.1f} + {srv:.1f}) "
            f"| {r:.2f}x | {p:.2f}x | {lc / (sc + srv):.2f}x "
            f"| {dw:.2f} ({dc:.1f} + {srv20:.1f} + {prx:.1f}) | {r20:.2f}x | {p20:.2f}x "
            f"| {lc / (dc + srv20 + prx):.2f}x | {ratios[0]:.2f}-{ratios[-1]:.2f}x |"
        )
        targets.append(
            f"- {source}: S3 / local {r:.2f}x (target >= 0.8x: {'met' if r >= 0.8 else 'NOT met'}); with 20 "
            f"ms per request {r20:.2f}x (target >= 0.7x: {'met' if r20 >= 0.7 else 'NOT met'}); the units "
            f"and shard writing alone (cluster start and the clients' set-up left out): {p:.2f}x and "
            f"{p20:.2f}x"
        )
    load = f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (2 cores)."
    return [*lines, "", *targets, "", load, "", NOTES]


NOTES = """Reading the numbers:

- What a build asks of the server (the `all` build, counted in moto's request log): 588 GETs and 32 HEADs of
  raw objects, 270 spill PUTs, 53 shard and zarr PUTs, about 20 other requests (listing, lock, manifest,
  commit): about 980 requests and 790 MB through the server (289 MB of raw data read, about 250 MB of
  spills and 250 MB of release written).
- The build's object calls on `s3://` (whole reads, HEADs, single PUTs up to 64 MiB, the concurrent reads
  ahead of use) go through obstore (`chammi_data.store.obstore_client.shared_client`) rather than s3fs:
  0.75 ms of client CPU per small GET against 3.6 ms, 1.1 ms per 300 kB PUT against 2.4 ms, and a 32 MiB
  shard in one PUT takes half the time and server CPU of four multipart parts. In one run of the `all`
  build the build's own CPU was 23-26 s through obstore against 29-34 s through s3fs
  (`CHAMMI_REMOTE_CLIENT=fsspec`), the local build's 18-19 s.
- What remains is mostly the server, which is not ours on a real S3: moto is Python and costs 7-8 s of CPU
  for the `all` build (about 8 ms per request; py-spy: half of it per byte - an MD5 of each body, spooling
  to temp files, socket copies - half per request - Flask dispatch, logging), on the same 2 cores as the
  build. `cpu bound` - the local CPU over the S3 build's CPU plus the server's - is what the ratio can reach
  when both cores are busy; it stays near 0.6x, so the 0.8x target cannot be met on this machine by the
  client alone.
- An object-store build writes no shard before every unit is done (the generation prefix it writes into is
  named by the content of the whole release), while a local build writes each source's shards while the
  next source's units run: the shard writing of `all` is 3-4 s on S3 against 0.3 s locally (units+write
  column).
- The sample's units are small (a WTC cell is a 1 MB OME-TIFF, a CP site five 0.5 MB TIFFs): per-request
  and per-task costs are large next to the work. HPA fields (four 2-5 MB PNGs and a segmentation per unit)
  come closest but do not meet the targets either (see the table); a real WTC-11 crop is tens of MB and a
  real CP site five 9 MB TIFFs, where a request's cost is a small share of the unit.
- Latency is hidden, not paid: a task fetches its units' objects several at once ahead of use, keeps 4 spill
  uploads in flight, and the shard writers read the spills from the worker that made them (placed there by
  the scheduler) instead of the bucket.
- Levers left: one spill object per task instead of per unit (about 180 fewer PUTs of the 980 requests),
  handing each object fetched ahead to its unit as it arrives rather than per round, and a generation
  known before the content so that object-store builds can overlap shard writing with units.
"""


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) this benchmark's section of ``path``, leaving the rest of the file as it is."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if HEADER in text:
        head, rest = text.split(HEADER, 1)
        nxt = rest.find("\n## ", 1)
        text = head + "\n".join(lines) + (rest[nxt:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    path.write_text(text, encoding="utf-8")
