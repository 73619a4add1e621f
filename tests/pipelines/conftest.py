"""Shared fixtures for the pipeline tests: small generated raw data in the real layouts, tree hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import pipelines.sources.wtc11.synth as wtc11_synth
from pipelines.sources.wtc11.pipeline import STAGES

#: the release files that must be byte-identical between builds (build_report.json holds paths/timings)
RELEASE_EXCLUDE = ("build_report.json",)


def tree_hashes(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a release, without the work folder and the build report."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(".work") and path.name not in RELEASE_EXCLUDE:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def wtc_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small WTC-11 raw folder: 7 structures x 6 cells (42 cells), 2 z-planes."""
    root = tmp_path_factory.mktemp("wtc_raw")
    wtc11_synth.write_sample(root, seed=0, cells_per_structure=6, z=2, stages=STAGES)
    return root


@pytest.fixture()
def wtc_copy(wtc_raw: Path, tmp_path: Path) -> Path:
    """A private, editable copy of :func:`wtc_raw` (for tests that break files)."""
    import shutil

    dst = tmp_path / "wtc_raw"
    shutil.copytree(wtc_raw, dst)
    return dst


@pytest.fixture()
def hash_tree():
    """:func:`tree_hashes` as a fixture (test modules do not import conftest)."""
    return tree_hashes


@pytest.fixture()
def small_config() -> dict:
    """Build settings for tests: small shards so that several tar and zarr shards are exercised."""
    return {"cells_per_shard": 8}


@pytest.fixture(scope="session")
def raw_tree(wtc_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small raw data of all three sources in their real layouts, for builds from other locations:
    ``wtc11/`` (the 42 cells of :func:`wtc_raw`), ``hpa/`` (3 fields in ``train/`` with both tables) and
    ``cp/`` (two plates, per-site Nuclei.csv, platemaps)."""
    import shutil

    from tests.pipelines.test_cp import write_plate
    from tests.pipelines.test_hpa import write_field, write_tables

    root = tmp_path_factory.mktemp("raw_tree")
    shutil.copytree(wtc_raw, root / "wtc11")
    (root / "hpa" / "train").mkdir(parents=True)
    fields = [("f16", 4, "U-2 OS", 16), ("f08", 14, "HEK 293", 8), ("g08", 10, "A549", 8)]
    for i, (fid, cls, line, bits) in enumerate(fields):
        write_field(root / "hpa" / "train", fid, cls, line, bits, seed=i + 1)
    write_tables(
        root / "hpa", [(fid, str(cls), line) for fid, cls, line, _ in fields] + [("multi", "4|14", "HeLa")]
    )
    write_plate(root / "cp", "P1", "LINCS")
    write_plate(root / "cp", "P2", "CDRP", wells={"B01": "BRD-K04185004-003-01-2", "B02": ""})
    return root
