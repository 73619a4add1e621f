"""Streaming benchmark: the training loader's workers, remote releases, the codec ceiling, verified reads.

    python benchmarks/stream.py --n 192

On a release of synthetic microscopy-like cells at the REAL tile sizes (``loader.synthetic_cell``; ``--n``
cells per source) it measures, each against a baseline from the same run:

1. **workers**: the training loader (``chammi_models.training.train_data``: ``stream(output="uint8")`` +
   ``group_by_channels_uint8``, persistent workers, device-ready integer batches per channel set) with 0, 1
   and 2 DataLoader workers: worker start-up (first batch of the first epoch) and steady state (whole later
   epochs), plus the main process's CPU time per sample (it only hands batches over). For reference, the
   previous trainer path (float samples augmented in the workers, ``collate_fn=list``) is timed too.
2. **remote**: ``stream`` in ``shards`` order from moto's S3 server on 127.0.0.1 against the same release on
   local disk, then with 20 ms added to every request (a delaying proxy), with and without read-ahead; the
   server's CPU time; and the rate of plain whole-object downloads of the same shards from the same server
   (the ceiling a reader of that server can reach on this machine).
3. **codec ceiling**: our read of a member (decode + checks) against a bare zstd decompress of the same bytes
   into a preallocated buffer.
4. **verified reads**: decoding members with zstd content checksums against the same members without, and
   the manifest digest check when a release is opened, at the real CHAMMI manifest size (220,284 rows).

Results: ``benchmarks/results/stream.json`` and the section between the ``stream.py`` markers of
``benchmarks/results/loader.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pandas as pd
import torch
import zstandard
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loader import synthetic_cell, write_script_section  # noqa: E402

from chammi_data.augment.transforms import train_transform  # noqa: E402
from chammi_data.format.manifest import read_manifest, write_manifest  # noqa: E402
from chammi_data.format.shards import ShardReader, decode_image_fast  # noqa: E402
from chammi_data.format.writer import ReleaseWriter  # noqa: E402
from chammi_data.loading.collate import group_by_channels_uint8  # noqa: E402
from chammi_data.loading.streaming import stream  # noqa: E402
from chammi_data.store.storage import (
    ReleaseStore,  # noqa: E402
    open_store,
)
from tests.servers import DelayProxy, S3Server, environ_restored  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 32


def build_release(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    writer = ReleaseWriter(root, cells_per_shard=32, config={"benchmark": "stream"}, progress=False)
    for src in ("wtc11", "hpa", "cp"):
        writer.add_source(src, [synthetic_cell(rng, src, i) for i in range(n)])
    writer.close()
    return root


def _epochs(loader: DataLoader, st, epochs: int) -> tuple[float, list[float], float, int]:
    """(seconds to the first batch, seconds of each later epoch, main CPU s per sample, samples per epoch)."""
    times, cpu, count = [], 0.0, 0
    first = 0.0
    for e in range(epochs):
        st.set_epoch(e)
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for k, groups in enumerate(loader):
            if e == 0 and k == 0:
                first = time.perf_counter() - t0
            n += sum(len(g["cell_id"]) if isinstance(g["cell_id"], list) else 1 for g in groups)
        if e > 0:
            times.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
        count = n
    return first, times, cpu / max(1, count * (epochs - 1)), count


def uint8_loader(st: Any, workers: int) -> DataLoader:
    """The trainer's loader over a ``stream(output="uint8")``: integer batches per channel set, persistent
    workers."""
    kw = {"collate_fn": group_by_channels_uint8, "persistent_workers": workers > 0}
    return DataLoader(st, batch_size=BATCH, num_workers=workers, **kw)


def bench_workers(release: Path, epochs: int) -> dict:
    out = {}
    for workers in (0, 1, 2):
        st = stream(release, split="all", seed=0, output="uint8", worker_block=BATCH, workers=workers)
        loader = uint8_loader(st, workers)
        first, times, cpu, n = _epochs(loader, st, epochs)
        out[f"uint8/{workers}"] = {
            "startup_s": first,
            "samples_per_s": n / statistics.median(times),
            "main_cpu_ms_per_sample": 1000 * cpu,
            "samples": n,
        }
        del loader
        transform = train_transform(224, hflip=0.5)
        st = stream(release, split="all", seed=0, transform=transform, worker_block=BATCH)
        loader = DataLoader(st, batch_size=BATCH, collate_fn=list, num_workers=workers)
        first, times, cpu, n = _epochs(loader, st, min(epochs, 3))
        out[f"float-previous/{workers}"] = {
            "startup_s": first,
            "samples_per_s": n / statistics.median(times),
            "main_cpu_ms_per_sample": 1000 * cpu,
            "samples": n,
        }
        print(
            f"workers {workers}: uint8 {out[f'uint8/{workers}']['samples_per_s']:.0f}/s, previous float path "
            f"{out[f'float-previous/{workers}']['samples_per_s']:.0f}/s",
            flush=True,
        )
    return out


def _stream_rate(root, epochs: int, readahead: int, workers: int) -> float:
    st = stream(
        root,
        split="all",
        seed=0,
        order="shards",
        output="uint8",
        worker_block=BATCH,
        workers=workers,
        readahead=readahead,
        buffer=256,
    )
    _, times, _, n = _epochs(uint8_loader(st, workers), st, epochs)
    return n / statistics.median(times)


def _cpu_per_sample(root, readahead: int) -> float:
    """CPU ms per sample of one pass in a single reader process (its threads included), measured in a forked
    child: obstore's runtime must not start in this process, or the DataLoader workers it forks later would
    read through fsspec (see chammi_data.store.obstore_client)."""
    import multiprocessing

    def child(conn) -> None:
        st = stream(
            root, split="all", seed=0, order="shards", output="uint8", readahead=readahead, buffer=256
        )
        list(st)  # warm
        c0 = time.process_time()
        n = sum(1 for _ in st)
        conn.send(1000 * (time.process_time() - c0) / n)

    parent, child_end = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=child, args=(child_end,))
    proc.start()
    value = parent.recv()
    proc.join()
    return value


def _readahead_alone(store: ReleaseStore, release: Path, shards: list[str], work_s: float = 0.02) -> dict:
    """Seconds to fetch 12 whole shards through the delaying proxy while 'working' ``work_s`` on each, with
    read-ahead depth 0, 2 and 4: what read-ahead hides, without the CPU of decoding competing."""
    from chammi_data.loading.readahead import ByteRange, RangeReadahead

    ranges = [ByteRange(s, 0, (release / s).stat().st_size) for s in shards[:12]]
    out = {}
    for depth in (0, 2, 4):
        t0 = time.perf_counter()
        for _ in RangeReadahead(store, ranges, depth):
            time.sleep(work_s)
        out[str(depth)] = time.perf_counter() - t0
    out["runs"], out["work_s"] = len(ranges), work_s
    return out


def _client(name: str | None) -> None:
    """Select the S3 client of the next streams (``obstore``: the default where installed; ``fsspec``)."""
    if name is None:
        os.environ.pop("CHAMMI_REMOTE_CLIENT", None)
    else:
        os.environ["CHAMMI_REMOTE_CLIENT"] = name


def _spread(values: list[float]) -> dict:
    return {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_remote(release: Path, epochs: int, workers: int, runs: int = 3) -> dict:
    """Remote stream vs local disk. The rates and the reader's CPU per sample are measured ``runs`` times,
    local and S3 interleaved (the machine is shared: the spread shows how much one run can be trusted), with
    the S3 client the store picks (obstore where installed) and with fsspec (s3fs + aiohttp)."""
    out: dict = {}
    shards = sorted(json.loads((release / "release.json").read_text())["shards"])
    total = sum((release / s).stat().st_size for s in shards)
    n_cells = len(read_manifest(release))
    with S3Server() as server:
        url = server.upload(release, "bench", "release")
        with environ_restored(*server.env(), "CHAMMI_REMOTE_CLIENT"):
            os.environ.update(server.env())
            rates: dict[str, list[float]] = {"local": [], "s3": [], "s3_fsspec": []}
            cpu: dict[str, list[float]] = {"local": [], "s3": [], "s3_fsspec": []}
            server_cpu: list[float] = []
            wall: list[float] = []
            for _ in range(runs):
                rates["local"].append(_stream_rate(release, epochs, 2, workers))
                cpu["local"].append(_cpu_per_sample(release, 2))
                for key, client in (("s3", None), ("s3_fsspec", "fsspec")):
                    _client(client)
                    c0, t0 = server.cpu_seconds(), time.perf_counter()
                    rates[key].append(_stream_rate(url, epochs, 2, workers))
                    if key == "s3":
                        server_cpu.append((server.cpu_seconds() - c0) / epochs)
                        wall.append((time.perf_counter() - t0) / epochs)
                    c0 = server.cpu_seconds()
                    cpu[key].append(_cpu_per_sample(url, 2))
                    if key == "s3":
                        out.setdefault("_server_ms", []).append(
                            1000 * (server.cpu_seconds() - c0) / (2 * n_cells)
                        )
                _client(None)
            ratios = [s / loc for s, loc in zip(rates["s3"], rates["local"], strict=True)]
            ratios_fsspec = [s / loc for s, loc in zip(rates["s3_fsspec"], rates["local"], strict=True)]
            cpu_ratios = [s / loc for s, loc in zip(cpu["s3"], cpu["local"], strict=True)]
            cpu_ratios_fsspec = [s / loc for s, loc in zip(cpu["s3_fsspec"], cpu["local"], strict=True)]
            out["spread"] = {
                "s3_vs_local": _spread(ratios),
                "s3_fsspec_vs_local": _spread(ratios_fsspec),
                "cpu_s3_vs_local": _spread(cpu_ratios),
                "cpu_s3_fsspec_vs_local": _spread(cpu_ratios_fsspec),
            }
            out["local"] = statistics.median(rates["local"])
            out["s3"] = statistics.median(rates["s3"])
            out["s3_fsspec"] = statistics.median(rates["s3_fsspec"])
            out["local_cpu_ms"] = statistics.median(cpu["local"])
            out["s3_client_cpu_ms"] = statistics.median(cpu["s3"])
            out["s3_fsspec_client_cpu_ms"] = statistics.median(cpu["s3_fsspec"])
            out["s3_server_cpu_ms"] = statistics.median(out.pop("_server_ms"))
            out["s3_server_cpu_s_per_epoch"] = statistics.median(server_cpu)
            out["s3_wall_s_per_epoch"] = statistics.median(wall)
            out["s3_no_readahead"] = _stream_rate(url, epochs, 0, workers)
            store = ReleaseStore(url)
            t0 = time.perf_counter()
            for _ in range(epochs):
                for s in shards:
                    store.read_bytes(s)
            out["s3_download_mb_per_s"] = total * epochs / (time.perf_counter() - t0) / 1e6
            with DelayProxy(server.port, 20.0) as proxy:
                os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
                p0, c0 = proxy.cpu_seconds(), server.cpu_seconds()
                out["s3_20ms"] = _stream_rate(url, epochs, 2, workers)
                out["proxy_cpu_ms"] = 1000 * (proxy.cpu_seconds() - p0) / (epochs * n_cells)
                out["s3_20ms_no_readahead"] = _stream_rate(url, epochs, 0, workers)
                out["readahead_alone"] = _readahead_alone(ReleaseStore(url), release, shards)
    out["stream_mb_per_s_s3"] = out["s3"] * total / n_cells / 1e6
    for k in ("s3", "s3_fsspec", "s3_no_readahead", "s3_20ms", "s3_20ms_no_readahead"):
        out[f"{k}_vs_local"] = out[k] / out["local"]
    return out


def _best(fn, repeat: int, count: int) -> float:
    """Best-of-``repeat`` seconds per item of ``fn()`` over ``count`` items."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs) / count


def _codec_one(reader: ShardReader, mine: list[dict], repeat: int, ds) -> dict:
    blobs = [reader.read_bytes(r) for r in mine]
    plain = [
        zstandard.ZstdCompressor(level=3, write_content_size=True).compress(
            zstandard.ZstdDecompressor().decompress(b)
        )
        for b in blobs
    ]
    bufs = [np.empty(zstandard.frame_content_size(b), np.uint8) for b in blobs]
    n = len(mine)
    bare = _best(
        lambda: [imagecodecs.zstd_decode(b, out=buf) for b, buf in zip(blobs, bufs, strict=True)], repeat, n
    )
    ours = _best(
        lambda: [decode_image_fast(b, "bench", expected=r) for b, r in zip(blobs, mine, strict=True)],
        repeat,
        n,
    )
    read = _best(lambda: [reader.read(r) for r in mine], repeat, n)
    no_sum = _best(
        lambda: [decode_image_fast(b, "bench", expected=r) for b, r in zip(plain, mine, strict=True)],
        repeat,
        n,
    )
    index = {c: i for i, c in enumerate(ds.rows["cell_id"])}
    items = [index[r["cell_id"]] for r in mine]
    item = _best(lambda: [ds[i] for i in items], repeat, n)
    cost = max(0.0, ours - no_sum)
    return {
        "bare_zstd_ms": 1000 * bare,
        "decode_ms": 1000 * ours,
        "read_ms": 1000 * read,
        "decode_without_checksum_ms": 1000 * no_sum,
        "decode_vs_bare": ours / bare,
        "read_vs_bare": read / bare,
        "load_item_ms": 1000 * item,
        "checksum_cost": ours / no_sum - 1,
        "checksum_of_read": cost / read,
        "checksum_of_load_item": cost / item,
    }


def bench_codec(release: Path, repeat: int) -> dict:
    rows = read_manifest(release).to_dict("records")
    reader = ShardReader(open_store(release))
    import chammi_data

    ds = chammi_data.load("all", root=release)
    return {
        src: _codec_one(reader, [r for r in rows if r["source"] == src][:64], repeat, ds)
        for src in ("wtc11", "hpa", "cp")
    }


def bench_manifest_digest(release: Path, rows: int = 220_284) -> dict:
    m = read_manifest(release)
    big = pd.concat([m] * (rows // len(m) + 1), ignore_index=True).iloc[:rows].copy()
    big["cell_id"] = [f"bench-{i:09d}" for i in range(rows)]
    big["key"] = big["cell_id"]
    with tempfile.TemporaryDirectory() as tmp:
        parquet, _ = write_manifest(tmp, big)
        digest = hashlib.sha256(parquet.read_bytes()).hexdigest()
        (Path(tmp) / "release.json").write_text(json.dumps({"manifest_sha256": digest}))
        t = {}
        for verify in (False, True):
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                read_manifest(tmp, verify=verify)
                runs.append(time.perf_counter() - t0)
            t[verify] = min(runs)
    return {
        "rows": rows,
        "open_s": t[False],
        "open_verified_s": t[True],
        "digest_cost": t[True] / t[False] - 1,
    }


def markdown(res: dict) -> str:
    w, r, c, v = res["workers"], res["remote"], res["codec"], res["manifest_digest"]
    a = r["readahead_alone"]
    lines = [
        f"`python benchmarks/stream.py --n {res['n']}` on {res['machine']} ({res['cells']} cells of real "
        "tile "
        f"sizes, batches of {BATCH}, page cache warm; medians of whole epochs; 2 cores shared by readers and "
        "servers).",
        "",
        "### Training loader workers (device-ready uint8 batches per channel set, persistent workers)",
        "",
        "| loader | workers | start-up s | samples/s (steady) | vs 1 worker | main-process CPU ms/sample |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("uint8", "float-previous"):
        one = w[f"{kind}/1"]["samples_per_s"]
        for k in (0, 1, 2):
            x = w[f"{kind}/{k}"]
            lines.append(
                f"| {kind} | {k} | {x['startup_s']:.2f} | {x['samples_per_s']:.0f} | "
                f"{x['samples_per_s'] / one:.2f}x | {x['main_cpu_ms_per_sample']:.3f} |"
            )
    lines += [
        "",
        "`uint8`: the training loader now (workers read, decode and stack; augmentation runs on the "
        "device). `float-previous`: float samples augmented in the workers, one shared-memory block per "
        "sample (the trainer's path before).",
        "",
        f"### Remote release (shards order, {r['workers']} workers)",
        "",
        "| source of the shards | samples/s | vs local disk |",
        "|---|---|---|",
        f"| local disk | {r['local']:.0f} | 1.00x |",
    ]
    for k, name in (
        ("s3", "S3 (moto, 127.0.0.1), read-ahead 2"),
        ("s3_fsspec", "S3 through fsspec (s3fs + aiohttp), read-ahead 2"),
        ("s3_no_readahead", "S3, no read-ahead"),
        ("s3_20ms", "S3 + 20 ms per request, read-ahead 2"),
        ("s3_20ms_no_readahead", "S3 + 20 ms per request, no read-ahead"),
    ):
        lines.append(f"| {name} | {r[k]:.0f} | {r[k + '_vs_local']:.2f}x |")
    bound = r["local_cpu_ms"] / (r["s3_client_cpu_ms"] + r["s3_server_cpu_ms"])
    sp = r.get("spread")
    if sp:
        lines += [
            "",
            f"Over {len(sp['s3_vs_local']['runs'])} runs, local and S3 interleaved (median, min-max): S3 "
            f"{sp['s3_vs_local']['median']:.2f}x local ({sp['s3_vs_local']['min']:.2f}-"
            f"{sp['s3_vs_local']['max']:.2f}x); through fsspec {sp['s3_fsspec_vs_local']['median']:.2f}x "
            f"({sp['s3_fsspec_vs_local']['min']:.2f}-{sp['s3_fsspec_vs_local']['max']:.2f}x). "
            "The reader's own "
            f"CPU per sample from S3: {sp['cpu_s3_vs_local']['median']:.2f}x local "
            f"({sp['cpu_s3_vs_local']['min']:.2f}-{sp['cpu_s3_vs_local']['max']:.2f}x) with obstore, "
            f"{sp['cpu_s3_fsspec_vs_local']['median']:.2f}x ({sp['cpu_s3_fsspec_vs_local']['min']:.2f}-"
            f"{sp['cpu_s3_fsspec_vs_local']['max']:.2f}x) through fsspec.",
        ]
    lines += [
        "",
        f"CPU per sample (one process): local {r['local_cpu_ms']:.3f} ms; from S3 "
        f"{r['s3_client_cpu_ms']:.3f} ms "
        + (
            f"({r['s3_fsspec_client_cpu_ms']:.3f} ms through fsspec) "
            if "s3_fsspec_client_cpu_ms" in r
            else ""
        )
        + f"in the reader plus {r['s3_server_cpu_ms']:.3f} ms in the server. "
        "Readers that keep both cores busy "
        f"can therefore reach at most {bound:.2f}x the local rate from this server on this machine (when "
        "other jobs share the cores, the CPU-bound local reads lose more than the remote ones and a measured "
        "ratio can pass that bound: the rates move between runs; the CPU ratios are the steadier figure).",
        "",
        f"The S3 server used {r['s3_server_cpu_s_per_epoch']:.2f} s of CPU per epoch of "
        f"{r['s3_wall_s_per_epoch']:.2f} s wall (on the same 2 cores as the readers). Plain whole-object "
        f"downloads of the same shards from it run at {r['s3_download_mb_per_s']:.0f} MB/s; the stream "
        f"moved {r['stream_mb_per_s_s3']:.0f} MB/s.",
        "",
        f"With the delaying proxy the proxy process itself used {r['proxy_cpu_ms']:.3f} ms of CPU per "
        "sample (it "
        f"copies every byte through Python on the same cores), which lowers the bound to "
        f"{r['local_cpu_ms'] / (r['s3_client_cpu_ms'] + r['s3_server_cpu_ms'] + r['proxy_cpu_ms']):.2f}x. "
        f"Read-ahead alone, without decoding competing for the cores: {a['runs']} whole shards through the "
        f"proxy with {1000 * a['work_s']:.0f} ms of work each take {a['0']:.2f} s without read-ahead, "
        f"{a['2']:.2f} s with 2 runs in flight and {a['4']:.2f} s with 4 (the work alone: "
        f"{a['runs'] * a['work_s']:.2f} s).",
        "",
        "### Codec ceiling and verified reads (per member, single core)",
        "",
        "| source | bare zstd into a buffer ms | our decode ms | our read (pread + decode) ms | decode / "
        "bare "
        "| read / bare | `load()` item ms | checksum: of the decode | of our read | of a `load()` item |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for src, x in c.items():
        lines.append(
            f"| {src} | {x['bare_zstd_ms']:.3f} | {x['decode_ms']:.3f} | {x['read_ms']:.3f} | "
            f"{x['decode_vs_bare']:.2f}x | {x['read_vs_bare']:.2f}x | {x['load_item_ms']:.3f} | "
            f"{100 * x['checksum_cost']:+.1f}% | {100 * x['checksum_of_read']:.1f}% | "
            f"{100 * x['checksum_of_load_item']:.1f}% |"
        )
    lines += [
        "",
        f"Manifest digest at open ({v['rows']:,} rows): {v['open_s'] * 1000:.0f} ms unverified, "
        f"{v['open_verified_s'] * 1000:.0f} ms verified ({100 * v['digest_cost']:+.1f}%).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=192, help="cells per source")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument(
        "--from-json", type=Path, default=None, help="only re-render the loader.md section from a stream.json"
    )
    p.add_argument("--runs", type=int, default=3, help="repeated remote-vs-local measurements (the spread)")
    p.add_argument(
        "--only-remote",
        action="store_true",
        help="measure only the remote rows; the other sections are kept from the existing stream.json",
    )
    a = p.parse_args()
    if a.from_json is not None:
        _write_section(json.loads(a.from_json.read_text()))
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        release = build_release(Path(tmp) / "release", a.n)
        if a.only_remote:
            res = json.loads((RESULTS / "stream.json").read_text())
            if res["n"] != a.n:
                raise SystemExit(f"stream.json was measured with --n {res['n']}; run with that --n")
        else:
            res = {
                "n": a.n,
                "cells": 3 * a.n,
                "machine": f"{platform.machine()} python {platform.python_version()}",
            }
            res["codec"] = bench_codec(release, a.repeat)
            res["manifest_digest"] = bench_manifest_digest(release)
            res["workers"] = bench_workers(release, a.epochs)
        res["remote"] = {"workers": 2, **bench_remote(release, a.epochs, 2, a.runs)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(res, indent=1) + "\n")
    _write_section(res)
    print(markdown(res))


def _write_section(res: dict) -> None:
    """Put the results into loader.md between the stream.py markers (loader.py keeps that section)."""
    write_script_section(
        RESULTS / "loader.md", "stream.py", "Streaming (benchmarks/stream.py)", markdown(res)
    )


if __name__ == "__main__":
    main()
