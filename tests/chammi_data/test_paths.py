"""Bundled data folders are found in an installed wheel (inside the package) and in a checkout (beside it)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import chammi_data.store.paths as paths


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    (root / "fakepkg").mkdir(parents=True)
    (root / "fakepkg" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    yield root
    sys.modules.pop("fakepkg", None)


def test_bundled_dir_prefers_the_installed_copy(fake_package: Path):
    (fake_package / "data").mkdir()  # a checkout-style folder beside the package
    with pytest.raises(FileNotFoundError, match="missing"):
        paths.bundled_dir("fakepkg", "_missing", "missing")
    assert paths.bundled_dir("fakepkg", "_data", "data") == (fake_package / "data").resolve()
    (fake_package / "fakepkg" / "_data").mkdir()
    assert paths.bundled_dir("fakepkg", "_data", "data") == (fake_package / "fakepkg" / "_data").resolve()
    assert "fakepkg" not in sys.modules  # located, never imported


def test_manifests_and_configs_of_this_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    assert (paths.manifests_dir() / "tasks" / "wtc11.yaml").is_file()
    assert (paths.configs_dir() / "tiny_cpu.yaml").is_file()
    monkeypatch.setenv(paths.MANIFESTS_ENV, str(tmp_path))
    assert paths.manifests_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="not installed"):
        paths.bundled_dir("no_such_package_chammi", "_x", "x")


def test_one_default_release_location_for_writers_and_readers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """The build's default output and the readers' default location are the same function's answer."""
    from chammi_data.store.storage import ReleaseStore

    monkeypatch.delenv(paths.RELEASE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.default_release_location() == str(tmp_path / "cache" / "chammi" / "release")
    assert ReleaseStore().url == paths.default_release_location()
    monkeypatch.setenv(paths.RELEASE_ENV, f"file://{tmp_path}/rel")
    assert paths.default_release_location() == f"{tmp_path}/rel" == ReleaseStore().url
    monkeypatch.setenv(paths.RELEASE_ENV, "s3://bucket/release/")
    assert paths.default_release_location() == "s3://bucket/release/"
    assert ReleaseStore().url == "s3://bucket/release"
