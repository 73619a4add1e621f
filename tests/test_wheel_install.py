"""The wheel works outside the checkout: build it, install it into a fresh virtual environment, run the CLI.

The fresh environment gets the chammi wheel with ``pip install --no-deps`` and borrows the third-party
dependencies (torch, zarr, ...) from the environment running the tests through a ``.pth`` line, so the
test needs no network and installs nothing heavy. Every command runs from a temporary folder without
``PYTHONPATH``, so nothing of the checkout can be imported: only what the wheel ships.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.ome_zarr_helpers import check_release_ome_zarr

REPO = Path(__file__).resolve().parents[1]
#: Files the wheel must carry besides the modules (data that used to live only in the checkout).
REQUIRED_IN_WHEEL = (
    "chammi_data/_manifests/tasks/wtc11.yaml",
    "chammi_data/_manifests/tasks/hpa.yaml",
    "chammi_data/_manifests/tasks/cp.yaml",
    "chammi_data/_manifests/vocabulary.yaml",
    "chammi_data/_manifests/chammi75_crops.yaml",
    "chammi_models/_configs/tiny_cpu.yaml",
    "chammi_models/_configs/chammi75_tiny_cpu.yaml",
    "chammi_data/py.typed",
    "chammi_models/py.typed",
    "pipelines/py.typed",
)


def test_pyproject_lists_every_package_and_data_folder():
    """``[tool.setuptools] packages`` is an explicit list: a new subpackage or manifests folder must be
    added."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    mapped = {folder: pkg for pkg, folder in config["package-dir"].items()}
    expected = set()
    for top in ("chammi_cli", "chammi_data", "chammi_models", "pipelines"):
        expected |= {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / top).rglob("__init__.py")}
    for folder, pkg in mapped.items():
        for d in [REPO / folder, *(p for p in (REPO / folder).rglob("*") if p.is_dir())]:
            if any(f.is_file() for f in d.iterdir()):
                expected.add(".".join([pkg, *d.relative_to(REPO / folder).parts]))
    assert sorted(config["packages"]) == sorted(expected)
    assert set(mapped) == {"manifests", "configs"}


def _source_files() -> list[str]:
    """Tracked + untracked-not-ignored files of the checkout (what a clone or an sdist would hold)."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
            f"--- stderr\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_checkout(tmp_path: Path):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools (dev extra)")
    # 1. Build from a copy of the source files, so the build writes nothing into the checkout.
    src = tmp_path / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CHAMMI_")}
    env["CHAMMI_SAMPLE_CACHE"] = "off"  # the installed code generates the sample itself, nothing cached
    _run(
        [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", dist],
        tmp_path,
        env,
    )
    (wheel,) = dist.glob("chammi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [f for f in REQUIRED_IN_WHEEL if f not in names], sorted(names)

    # 2. A fresh environment: the wheel alone, third-party packages borrowed through a .pth line.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    vpy = venv / "bin" / "python"
    site = Path(
        _run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip()
    )
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_chammi_test_deps.pth").write_text("\n".join(borrowed) + "\n", encoding="utf-8")
    _run(
        [sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index", "-q", wheel],
        tmp_path,
        env,
    )

    # 3. From another folder, nothing of the checkout importable: the installed code and data are used.
    work = tmp_path / "work"
    work.mkdir()
    env.update(CHAMMI_RELEASE=str(work / "default_release"), MPLBACKEND="Agg", TQDM_DISABLE="1")
    where = _run(
        [
            vpy,
            "-c",
            "import chammi_data, chammi_models, pipelines\n"
            "from chammi_data.store.paths import manifests_dir, configs_dir\n"
            "for x in (chammi_data.__file__, chammi_models.__file__, pipelines.__file__, manifests_dir(), "
            "configs_dir()): print(x)",
        ],
        work,
        env,
    ).split()
    for path in where:
        assert Path(path).resolve().is_relative_to(venv.resolve()), (path, where)

    bin_ = venv / "bin"
    rel, run, feats, ev = work / "release", work / "run", work / "features", work / "eval"
    _run([bin_ / "chammi-build", "--source", "all", "--output", rel, "--quiet"], work, env)
    assert check_release_ome_zarr(rel) == ["wtc11", "hpa", "cp"]  # a pipeline-built sample is OME-Zarr
    assert "OK" in _run([bin_ / "chammi", "validate", rel, "--quiet"], work, env)
    proc = subprocess.run(
        [
            str(bin_ / "chammi"),
            "train",
            "--config",
            "tiny_cpu",
            "--release",
            str(rel),
            "--out",
            str(run),
            "optim.max_steps=2",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        "chammi train --config tiny_cpu failed from the installed wheel"
        + (
            " (chammi_models/training/config.py must take CONFIGS_DIR from "
            "chammi_data.store.paths.configs_dir())"
            if "bundled configs" in proc.stderr
            else ""
        )
        + f"\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    _run(
        [
            bin_ / "chammi",
            "embed",
            "--checkpoint",
            run,
            "--release",
            rel,
            "--out",
            feats,
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        work,
        env,
    )
    out = _run(
        [bin_ / "chammi", "eval", "--features", feats, "--release", rel, "--out", ev, "--device", "cpu"],
        work,
        env,
    )
    assert "CPS=" in out and (ev / "results.csv").is_file()
