"""`chammi-build`: argument handling, the synth subcommand, exit codes, default output and sample input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import chammi_cli.build as cli
import pipelines.sources.wtc11.pipeline as wtc11
import pipelines.sources.wtc11.synth as wtc11_synth
from pipelines.sources.wtc11.pipeline import STAGES


@pytest.fixture()
def tiny_wtc_synth(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the WTC sample generator tiny (the real sample takes ~20 s to write here)."""
    monkeypatch.setattr(
        wtc11.WTC11Pipeline,
        "synth",
        lambda self, out, seed=0: wtc11_synth.write_sample(
            out, seed, cells_per_structure=2, z=1, stages=STAGES
        ),
    )


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--source", "allen"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert cli.main(["--source", "chammi", "--output", str(tmp_path / "o"), "--quiet"]) == 2
    assert "needs --input" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "--source",
                "wtc11",
                "--input",
                str(tmp_path / "none"),
                "--output",
                str(tmp_path / "o"),
                "--quiet",
                "--workers",
                "1",
            ]
        )
        == 2
    )
    assert "metadata.csv" in capsys.readouterr().err


def test_synth_subcommand(tmp_path: Path, tiny_wtc_synth: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["synth", "--output", str(tmp_path), "--seed", "3", "--source", "wtc11"]) == 0
    meta = pd.read_csv(tmp_path / "wtc11" / "metadata.csv")
    assert len(meta) == 14 and (tmp_path / "wtc11" / meta.crop_raw[0]).is_file()
    assert "seed 3" in capsys.readouterr().out


@pytest.mark.slow
def test_build_from_sample_to_default_output(
    tmp_path: Path, tiny_wtc_synth: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHAMMI_RELEASE", str(tmp_path / "release"))
    assert cli.main(["--source", "wtc11", "--workers", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "cells in 14 = used 14 + skipped 0" in out and "Task_two" in out
    assert (tmp_path / "release" / "release.json").is_file()
    # the generated sample raw data is work data: gone after a successful build without --keep-work
    assert not (tmp_path / "release" / ".work").exists()
    # --strict with a skipped row: exit 1, the failed report beside the untouched release
    raw = tmp_path / "raw"
    wtc11_synth.write_sample(raw, 0, cells_per_structure=2, z=1, stages=STAGES)
    table = pd.read_csv(raw / "metadata.csv")
    table.loc[0, "cell_stage"] = "M8"
    table.to_csv(raw / "metadata.csv", index=False)
    assert (
        cli.main(
            [
                "--source",
                "wtc11",
                "--input",
                str(raw),
                "--output",
                str(tmp_path / "s"),
                "--strict",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 1
    )
    rep = json.loads((tmp_path / "s" / "build_report.failed.json").read_text())
    assert rep["status"] == "failed" and rep["skipped"][0]["row"] == 0
    out = capsys.readouterr().out
    assert "FAILED" in out and str(tmp_path / "s" / "build_report.failed.json") in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import chammi_data

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"chammi-build {chammi_data.__version__}"


def test_python_dash_m_pipelines_runs_chammi_build() -> None:
    import chammi_data

    run = subprocess.run(
        [sys.executable, "-m", "pipelines", "--version"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == f"chammi-build {chammi_data.__version__}"
    run = subprocess.run(
        [sys.executable, "-m", "pipelines", "--source", "nope"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "invalid choice" in run.stderr


def test_a_foreign_pipelines_package_is_named(tmp_path: Path) -> None:
    """Another project's ``pipelines`` first on sys.path: chammi-build refuses it, naming it and the fix."""
    fake = tmp_path / "site" / "pipelines"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""Some other project\'s pipelines."""\n')
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
        "from chammi_cli.build import main\n"
        "sys.exit(main(['--source', 'wtc11']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith(
        "chammi-build: error: 'import pipelines' resolves to"
    )
    assert (
        str(fake / "__init__.py") in run.stderr and "not the CHAMMI toolkit's pipelines package" in run.stderr
    )
    assert "pip uninstall pipelines" in run.stderr and "fresh virtual environment" in run.stderr
