"""CHAMMI-75 benchmarks: planning a build at full scale, opening a full-size release, the training loader.

    python benchmarks/chammi75.py plan --rows 8000000    # read + plan a synthetic 8 M-row metadata table
    python benchmarks/chammi75.py open --rows 2800000    # open a 2.8 M-row release for load / stream
    python benchmarks/chammi75.py loader                 # reference loader vs our stream

``plan``: a synthetic table in the published layout (every documented column plus two extra ones, columns
shuffled, 75 studies of 1-5 channels, ``unknown`` values, a few rows without an image id and a few images
whose channel count disagrees with ``geometry.channels``) is written once into ``--work``; then
``Chammi75Pipeline.discover`` (read the table by column name as strings, group by
``imaging.multi_channel_id``, order by ``imaging.channel``, skip, cut units) runs in a fresh process whose
wall time and peak RSS (``ru_maxrss``) are reported. Targets: <= 3 min, <= 8 GB.

``open``: a manifest of ``--rows`` CHAMMI-75 rows (real row layout: channel names, sizes, shard offsets, meta
with the image's metadata columns) and its release.json; then ``load()`` and ``stream()`` are opened in fresh
processes. Target: <= 10 s each.

Results go to ``benchmarks/results/chammi75.md`` (the section of each subcommand) and ``chammi75.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

#: (study, channel types) of the synthetic table: 75 studies cycling through these channel sets
CHANNEL_SETS = (
    ("nucleus", "er", "rna", "agp", "mitochondria"),
    ("nucleus", "membrane", "protein"),
    ("microtubules", "protein", "nucleus", "er"),
    ("nucleus",),
    ("bright-field", "nucleus"),
    ("r", "g", "b"),
)


def synthetic_table(rows: int, seed: int = 0) -> pa.Table:
    """About ``rows`` metadata rows in the published layout (module docstring), built column-wise."""
    rng = np.random.default_rng(seed)
    studies = [f"{p}{i:04d}" for i, p in enumerate(["jump", "wtc", "hpa", "idr", "cpg"] * 15)]
    c_of = np.array([len(CHANNEL_SETS[i % len(CHANNEL_SETS)]) for i in range(len(studies))])
    mean_c = c_of.mean()
    n_img = int(rows / mean_c)
    study = rng.integers(0, len(studies), n_img)
    counts = c_of[study]
    image = np.repeat(np.arange(n_img), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    channel = np.arange(len(image)) - start + 1
    s_row = study[image]
    # channel type per row: (study, channel) -> a code into the sorted type names
    names = sorted({t for cs in CHANNEL_SETS for t in cs})
    lookup = np.zeros((len(studies), 5), np.int32)
    for i in range(len(studies)):
        for k, t in enumerate(CHANNEL_SETS[i % len(CHANNEL_SETS)]):
            lookup[i, k] = names.index(t)
    type_codes = lookup[s_row, channel - 1]
    study_arr = pa.DictionaryArray.from_arrays(pa.array(s_row.astype(np.int32)), pa.array(studies))
    study_arr = study_arr.cast(pa.string())
    img_txt = pc.cast(pa.array(image), pa.string())
    stem = pc.binary_join_element_wise(study_arr, "img", img_txt, "[1]+x", "")
    mcid = pc.binary_join_element_wise(study_arr, img_txt, ":")
    n = len(image)
    mcid_np = np.asarray(mcid.to_numpy(zero_copy_only=False), dtype=object)
    lost = rng.random(n) < 1e-5  # rows without an image id
    mcid_np[lost] = "unknown"
    declared = counts[image].copy()
    odd = np.isin(image, rng.choice(n_img, max(1, n_img // 100000), replace=False))
    declared[odd] += 1  # images whose count disagrees with geometry.channels
    width = np.array([1080, 374, 2048, 696, 512])[s_row % 5]
    ch_txt = pc.cast(pa.array(channel - 1), pa.string())
    filename = pc.binary_join_element_wise(stem, "-ch", ch_txt, ".png", "")
    cols = {
        "experiment.study": study_arr,
        "experiment.plate": pc.binary_join_element_wise(
            "plate", pc.cast(pa.array(image // 3000), pa.string()), ""
        ),
        "experiment.well": _pick(["A01", "B07", "unknown", "P24"], image),
        "experiment.reagent": _pick(["DMSO", "unknown", "BRD-K04185004"], image),
        "experiment.control": _pick(["no", "yes", "no", "no"], image),
        "biology.organism": _pick(["human", "mouse", "unknown"], s_row),
        "biology.cell_line": _pick(["U2OS", "HeLa", "unknown", "WTC-11"], s_row),
        "biology.cell_type": _pick(["epithelial", "unknown"], s_row),
        "imaging.multi_channel_id": pa.array(mcid_np, pa.string()),
        "imaging.panel": _pick(["cellpainting", "unknown"], s_row),
        "imaging.channel": pc.cast(pa.array(channel), pa.string()),
        "imaging.channel_type": pa.DictionaryArray.from_arrays(pa.array(type_codes), pa.array(names)).cast(
            pa.string()
        ),
        "microscopy.type": _pick(["confocal", "widefield"], s_row),
        "microscopy.magnification": _pick(["20", "40", "63"], s_row),
        "microscopy.fov": pc.cast(pa.array(image % 9 + 1), pa.string()),
        "geometry.width": pc.cast(pa.array(width), pa.string()),
        "geometry.height": pc.cast(pa.array(width), pa.string()),
        "geometry.depth": _pick(["1", "unknown"], s_row),
        "geometry.channels": pc.cast(pa.array(declared), pa.string()),
        "geometry.z_slice": _pick(["0", "unknown"], s_row),
        "geometry.timepoint": _pick(["0", "unknown"], s_row),
        "storage.filename": filename,
        "storage.path": pc.binary_join_element_wise("CHAMMI-75_train", study_arr, filename, "/"),
        "storage.zip": pc.binary_join_element_wise(study_arr, ".zip", ""),
        "extra.notes": _pick(["", "re-imaged"], image),
        "extra.qc_score": pc.cast(pa.array(rng.random(n).round(3)), pa.string()),
    }
    order = list(cols)
    rng.shuffle(order)  # column order is not guaranteed
    return pa.table({k: cols[k] for k in order})


def _pick(values: list[str], index: np.ndarray) -> pa.Array:
    return pa.array(np.array(values, dtype=object)[index % len(values)], pa.string())


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def plan_child(root: str) -> dict:
    """In a fresh process: read + plan the table under ``root``; seconds and peak RSS."""
    from chammi_data.store.storage import open_store
    from pipelines.sources.chammi75.metadata import plan, read_table, table_location

    t0 = time.perf_counter()
    folder, name = table_location(root, "full")
    store = open_store(folder)
    read = list(read_table(store, name))
    shape = read[0].num_rows, read[0].num_columns
    t1 = time.perf_counter()
    # the list gives its reference up, so plan() can free the table once it is done with it
    disc = plan(read.pop(0), read.pop(0), {"images_per_unit": 64}, root, store.path(name))
    t2 = time.perf_counter()
    return {
        "rows": shape[0],
        "columns": shape[1],
        "images": disc.found.get("images", 0),
        "units": len(disc.units),
        "skipped_rows": sum(s.count for s in disc.skipped if s.kind == "rows"),
        "skipped_images": sum(s.count for s in disc.skipped if s.kind == "images"),
        "read_s": t1 - t0,
        "plan_s": t2 - t1,
        "total_s": t2 - t0,
        "peak_rss_gb": _peak_rss_gb(),
    }


def run_plan(rows: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    csv = work / "CHAMMI-75_train_metadata.csv"
    stamp = work / f".rows-{rows}"
    if not stamp.exists():
        t0 = time.perf_counter()
        table = synthetic_table(rows)
        pacsv.write_csv(table, csv)
        stamp.write_text(str(table.num_rows))
        print(
            f"wrote {table.num_rows:,} rows ({csv.stat().st_size / 1e9:.2f} GB) "
            f"in {time.perf_counter() - t0:.0f} s"
        )
    out = subprocess.run(
        [sys.executable, __file__, "_plan_child", str(work)], check=True, capture_output=True, text=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["csv_gb"] = csv.stat().st_size / 1e9
    return res


def synthetic_release(rows: int, root: Path, seed: int = 0) -> None:
    """A manifest of ``rows`` CHAMMI-75 rows in the real row layout and its release.json (no shards: opening
    a release reads neither shards nor zarr)."""
    import hashlib

    import pandas as pd

    from chammi_data.format.manifest import write_manifest
    from chammi_data.format.release_format import canonical_json, release_counts
    from chammi_data.store.paths import file_sha256

    rng = np.random.default_rng(seed)
    studies = [f"{p}{i:04d}" for i, p in enumerate(["jump", "wtc", "hpa", "idr", "cpg"] * 15)]
    study = np.sort(rng.integers(0, len(studies), rows))
    sets = [",".join(CHANNEL_SETS[i % len(CHANNEL_SETS)]) for i in range(len(studies))]
    sides = np.array([1080, 624, 2048, 696, 1024])[np.arange(len(studies)) % 5]
    ids = [f"chammi75-{k:016x}" for k in rng.permutation(rows * 4)[:rows]]
    plate = (np.arange(rows) // 3000).astype(str)
    meta = [
        f'{{"biology.cell_line":"U2OS","biology.cell_type":"unknown","biology.organism":"Homo sapiens",'
        f'"experiment.control":"no","experiment.plate":"plate{p}","experiment.reagent":"BRD-K04185004",'
        f'"experiment.study":"{studies[s]}","experiment.well":"B07","guidance_cells":{g},'
        f'"imaging.multi_channel_id":"{studies[s]}/BR00116991_{k:08d}","microscopy.fov":"007",'
        f'"microscopy.magnification":"20","microscopy.type":"confocal"}}'
        for k, (s, p, g) in enumerate(
            zip(study.tolist(), plate.tolist(), rng.integers(0, 200, rows).tolist(), strict=True)
        )
    ]
    per = 64
    df = pd.DataFrame(
        {
            "cell_id": ids,
            "source": "chammi75",
            "label": "",
            "train_test_split": "Train",
            **{t: False for t in ("Task_one", "Task_two", "Task_three", "Task_four")},
            "Structure": "",
            "cell_type": "U2OS",
            "Plate": np.char.add("plate", plate),
            "dataset": np.array(studies)[study],
            "channels": np.array(sets)[study],
            "height": sides[study],
            "width": sides[study],
            "dtype": "uint8",
            "shard": [f"shards/chammi75/chammi75-{k // per:06d}.tar" for k in range(rows)],
            "key": ids,
            "offset": (np.arange(rows) % per) * 1_500_000 + 1536,
            "nbytes": rng.integers(300_000, 1_400_000, rows),
            "zarr_row": np.arange(rows),
            "sha256": [hashlib.sha256(str(k).encode()).hexdigest() for k in range(rows)],
            "crc32c": rng.integers(0, 2**32, rows),
            "meta": meta,
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    parquet, csv = write_manifest(root, df)
    release = {
        "schema_version": 1,
        "counts": release_counts(df),
        "shards": {},
        "manifest_sha256": file_sha256(parquet),
        "manifest_csv_sha256": file_sha256(csv),
    }
    (root / "release.json").write_text(canonical_json(release) + "\n")


def open_child(root: str, what: str) -> dict:
    """In a fresh process: open the release for ``load`` or ``stream`` (the library imported first: the
    import is timed apart); seconds and peak RSS."""
    t0 = time.perf_counter()
    import chammi_data
    from chammi_data.loading import dataset, streaming  # noqa: F401 (imports torch: timed apart)

    t1 = time.perf_counter()
    if what == "load":
        n = len(chammi_data.load("train", root=root))
    else:
        n = len(chammi_data.stream(root, split="train", guided_crop=224, output="uint8"))
    t2 = time.perf_counter()
    return {"rows": n, "seconds": t2 - t1, "import_s": t1 - t0, "peak_rss_gb": _peak_rss_gb()}


def run_open(rows: int, work: Path) -> dict:
    root = work / f"release-{rows}"
    if not (root / "release.json").exists():  # in its own process: the measuring children start small
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "_make_release", str(root), str(rows)], check=True)
        print(f"wrote a {rows:,}-row manifest in {time.perf_counter() - t0:.0f} s")
    out: dict = {"rows": rows, "manifest_mb": (root / "manifest.parquet").stat().st_size / 1e6}
    out["load_average"] = os.getloadavg()[0]  # a shared machine: other processes' load, for the record
    for what in ("load", "stream"):
        runs = []
        for _ in range(3):
            proc = subprocess.run(
                [sys.executable, __file__, "_open_child", str(root), what],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[what] = min(runs, key=lambda r: r["seconds"])
    return out


def write_results(section: str, result: dict, lines: list[str]) -> None:
    """Update ``results/chammi75.json`` (key ``section``) and the section's block in ``chammi75.md``."""
    RESULTS.mkdir(exist_ok=True)
    js = RESULTS / "chammi75.json"
    data = json.loads(js.read_text()) if js.exists() else {}
    data[section] = {**result, "machine": f"{platform.machine()}, {platform.python_version()}"}
    js.write_text(json.dumps(data, indent=2) + "\n")
    md = RESULTS / "chammi75.md"
    text = md.read_text() if md.exists() else "# CHAMMI-75 benchmarks (`benchmarks/chammi75.py`)\n"
    begin, end = f"<!-- {section}: begin -->", f"<!-- {section}: end -->"
    block = "\n".join([begin, *lines, end])
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--rows", type=int, default=8_000_000)
    p.add_argument("--work", type=Path, default=Path("/tmp/chammi75-bench"))
    c = sub.add_parser("_plan_child")
    c.add_argument("root")
    o = sub.add_parser("open")
    o.add_argument("--rows", type=int, default=2_800_000)
    o.add_argument("--work", type=Path, default=Path("/tmp/chammi75-bench"))
    mk = sub.add_parser("_make_release")
    mk.add_argument("root", type=Path)
    mk.add_argument("rows", type=int)
    oc = sub.add_parser("_open_child")
    oc.add_argument("root")
    oc.add_argument("kind", choices=["load", "stream"])
    args = ap.parse_args(argv)
    if args.what == "_plan_child":
        print(json.dumps(plan_child(args.root)))
        return 0
    if args.what == "_make_release":
        synthetic_release(args.rows, args.root)
        return 0
    if args.what == "_open_child":
        print(json.dumps(open_child(args.root, args.kind)))
        return 0
    if args.what == "open":
        r = run_open(args.rows, args.work)
        lines = [
            "## Opening a full-size CHAMMI-75 release",
            "",
            f"A manifest of {r['rows']:,} CHAMMI-75 rows in the real row layout ({r['manifest_mb']:.0f} MB "
            "parquet; each row's `meta` holds the image's metadata columns, about 420 bytes of JSON), "
            "checked against its release.json sha256 when opened; each open in a fresh process, best of 3 "
            f"(load average {r['load_average']:.1f} on these 2 cores when it started):",
            "",
            "| open | seconds (target <= 10) | peak RSS |",
            "|---|---|---|",
            f"| `chammi_data.load('train', root)` | **{r['load']['seconds']:.1f}** | "
            f"{r['load']['peak_rss_gb']:.2f} GB |",
            "| `chammi_data.stream(root, guided_crop=224, output='uint8')` | "
            f"**{r['stream']['seconds']:.1f}** | {r['stream']['peak_rss_gb']:.2f} GB |",
            "",
            f"Importing the library (torch included) takes {r['load']['import_s']:.1f} s more, once per "
            "process, whatever the release.",
        ]
        write_results("open", r, lines)
        print("\n".join(lines))
        return 0
    if args.what == "plan":
        r = run_plan(args.rows, args.work / f"plan-{args.rows}")
        lines = [
            "## Planning a build from the metadata table",
            "",
            f"Synthetic table in the published layout: {r['rows']:,} rows ({r['csv_gb']:.2f} GB CSV, 26 "
            f"columns in shuffled order), {r['images']:,} images in 75 studies; {r['units']:,} units of 64 "
            f"images; {r['skipped_rows']} rows without an image id and {r['skipped_images']} images with a "
            "wrong channel count skipped. The pipeline's discovery (`metadata.discover_table`: read by "
            "column name as strings, group, order, skip, cut units) in a fresh process:",
            "",
            "| step | seconds |",
            "|---|---|",
            f"| read the table (Arrow CSV, {r['columns']} of 26 columns as strings) | {r['read_s']:.1f} |",
            f"| plan (images, skips, units as text) | {r['plan_s']:.1f} |",
            f"| **total** (target <= 180) | **{r['total_s']:.1f}** |",
            "",
            f"Peak RSS of the process: **{r['peak_rss_gb']:.2f} GB** (target <= 8 GB).",
        ]
        write_results("plan", r, lines)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
