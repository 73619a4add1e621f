"""The cache of generated sample raw data: a second generation is a verified copy of the first, a damaged
entry is noticed and regenerated, the key follows the code and the seed, and ``off`` writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import pipelines.sources.sample_cache as sample_cache
import pipelines.sources.wtc11.synth as wtc11_synth
from pipelines.sources.synthetic import write_source_sample
from pipelines.sources.wtc11.pipeline import WTC11Pipeline

sample_cache_real_synth = WTC11Pipeline.synth


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small_synth(self, out_dir: Path, seed: int = 0) -> None:
    """A stand-in generator (the real one takes 9 s): a few deterministic files in nested folders."""
    for k in range(3):
        path = Path(out_dir) / f"plate{k}" / f"img{k}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes((seed * 31 + k * 7 + i) % 256 for i in range(4096)))
    (Path(out_dir) / "metadata.csv").write_text(f"seed,{seed}\n")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(sample_cache.CACHE_ENV, str(folder))
    monkeypatch.setattr(WTC11Pipeline, "synth", _small_synth)
    return folder


def _no_generation(*_args, **_kwargs):
    raise AssertionError("generated although the cache holds this sample")


@pytest.mark.slow  # one real generation (9 s)
def test_the_second_sample_is_the_cached_copy_of_the_first(cache: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(WTC11Pipeline, "synth", sample_cache_real_synth)
    first = write_source_sample(tmp_path / "a", "wtc11", seed=3)  # the real generator, once
    assert len(list(cache.iterdir())) == 1
    monkeypatch.setattr(wtc11_synth, "write_sample", _no_generation)  # what the real generator calls
    second = write_source_sample(tmp_path / "b", "wtc11", seed=3)
    assert _tree(first) == _tree(second)


def test_a_damaged_entry_is_removed_and_the_sample_generated_again(cache: Path, tmp_path: Path, caplog):
    fresh = _tree(write_source_sample(tmp_path / "a", "wtc11", seed=4))
    (entry,) = cache.iterdir()
    victim = sorted(p for p in (entry / "files").rglob("*.tif*"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    again = write_source_sample(tmp_path / "b", "wtc11", seed=4)
    assert _tree(again) == fresh  # regenerated, not the flipped copy
    assert "damaged" in caplog.text and victim.name in caplog.text
    (entry,) = cache.iterdir()  # stored again, whole
    assert _tree(entry / "files") == {k: v for k, v in fresh.items() if k != ".sample-complete"}


def test_an_extra_file_in_an_entry_is_damage_too(cache: Path, tmp_path: Path):
    fresh = _tree(write_source_sample(tmp_path / "a", "wtc11", seed=5))
    (entry,) = cache.iterdir()
    (entry / "files" / "planted.txt").write_text("not generated")
    assert _tree(write_source_sample(tmp_path / "b", "wtc11", seed=5)) == fresh


def test_the_key_follows_the_seed_and_every_module(tmp_path: Path):
    code = tmp_path / "code"
    (code / "sources").mkdir(parents=True)
    (code / "sources" / "synth.py").write_text("X = 1\n")
    key = sample_cache.cache_key("hpa", 0, root=code)
    assert sample_cache.cache_key("hpa", 1, root=code) != key
    assert sample_cache.cache_key("cp", 0, root=code) != key
    assert sample_cache.cache_key("hpa", 0, _small_synth, root=code) != key  # a replaced generator
    assert sample_cache.cache_key("hpa", 0, lambda out, seed: None, root=code) != key
    sample_cache._code_digest.cache_clear()
    (code / "sources" / "synth.py").write_text("X = 2\n")
    assert sample_cache.cache_key("hpa", 0, root=code) != key
    sample_cache._code_digest.cache_clear()


def test_off_writes_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(sample_cache.CACHE_ENV, "off")
    monkeypatch.setattr(WTC11Pipeline, "synth", _small_synth)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write_source_sample(tmp_path / "a", "wtc11", seed=6)
    assert not (tmp_path / "xdg").exists()


@pytest.mark.slow  # two sample builds of the CP source (about 20 s)
def test_chammi_build_without_input_fills_and_checks_the_cache(tmp_path: Path, monkeypatch, caplog):
    """Through the build command: a build without --input stores its generated sample in the cache; the
    next one takes it from there, notices a flipped byte, regenerates, and builds the same release."""
    import chammi_cli.build as build_cli
    from tests.pipelines.conftest import tree_hashes

    cache = tmp_path / "cache"
    monkeypatch.setenv(sample_cache.CACHE_ENV, str(cache))
    argv = ["--source", "cp", "--workers", "1", "--quiet", "--output"]
    assert build_cli.main([*argv, str(tmp_path / "a")]) == 0
    (entry,) = cache.iterdir()
    assert entry.name.startswith("cp-0-") and (entry / sample_cache.LISTING).is_file()
    victim = sorted((entry / "files").rglob("*.tif*"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    victim.write_bytes(bytes(data))
    assert build_cli.main([*argv, str(tmp_path / "b")]) == 0
    assert "damaged" in caplog.text and victim.name in caplog.text
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
