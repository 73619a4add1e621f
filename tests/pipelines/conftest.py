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
