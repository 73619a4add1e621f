"""User errors of export / eval / validate / report: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import chammi_cli.errors as errors
import chammi_cli.evaluate as eval_cli
import chammi_cli.export as export_cli
import chammi_cli.report as report_cli
import chammi_cli.validate as validate_cli
from chammi_data.evaluation.features import save_features
from chammi_data.format.manifest import read_manifest, source_rows
from chammi_data.format.vocab import SOURCES


def run_cli(module, argv: list[str]) -> int:
    """Run the subcommand that ``module`` implements through the ``chammi`` dispatcher, as a user would."""
    from chammi_cli import SUBCOMMANDS, main

    name = next(n for n, (m, _) in SUBCOMMANDS.items() if m == module.__name__)
    return main([name, *argv])


def one_error_line(capsys: pytest.CaptureFixture[str], prog: str, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def broken_manifest(tiny_release: Path, tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(tiny_release, root)
    (root / "manifest.parquet").write_bytes(b"not a parquet file")
    return root


@pytest.fixture
def good_features(tiny_release: Path, tmp_path: Path) -> Path:
    manifest = read_manifest(tiny_release)
    rng = np.random.default_rng(0)
    feats = {k: rng.normal(size=(len(source_rows(manifest, k)), 4)).astype(np.float32) for k in SOURCES}
    save_features(tmp_path / "feats", feats, "f")
    return tmp_path / "feats"


def test_export_user_errors(tiny_release: Path, broken_manifest: Path, tmp_path: Path, capsys):
    assert run_cli(export_cli, [str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    one_error_line(capsys, "chammi export", "no release at", "chammi-build")
    assert run_cli(export_cli, [str(broken_manifest), str(tmp_path / "o")]) == 2
    one_error_line(capsys, "chammi export", "manifest.parquet")
    (tmp_path / "o" / "HPA").mkdir(parents=True)
    assert run_cli(export_cli, [str(tiny_release), str(tmp_path / "o"), "--quiet"]) == 2
    one_error_line(capsys, "chammi export", "already exist", "--overwrite")
    assert (
        run_cli(
            export_cli, [str(tiny_release), str(tmp_path / "o"), "--quiet", "--overwrite", "--sources", "hpa"]
        )
        == 0
    )


def test_eval_user_errors(
    tiny_release: Path, broken_manifest: Path, good_features: Path, tmp_path: Path, capsys
):
    out = str(tmp_path / "run")
    assert (
        run_cli(
            eval_cli, ["--features", str(tmp_path / "nope"), "--release", str(tiny_release), "--out", out]
        )
        == 2
    )
    one_error_line(capsys, "chammi eval", "features folder", "does not exist")
    assert (
        run_cli(
            eval_cli, ["--features", str(good_features), "--release", str(tmp_path / "none"), "--out", out]
        )
        == 2
    )
    one_error_line(capsys, "chammi eval")
    assert (
        run_cli(eval_cli, ["--features", str(good_features), "--release", str(broken_manifest), "--out", out])
        == 2
    )
    one_error_line(capsys, "chammi eval", "manifest.parquet")
    bad = tmp_path / "bad"
    save_features(bad, {"hpa": np.zeros((3, 4), np.float32)}, "f")
    assert run_cli(eval_cli, ["--features", str(bad), "--release", str(tiny_release), "--out", out]) == 2
    one_error_line(capsys, "chammi eval", "hpa")


def test_validate_user_error_vs_problems(tiny_release: Path, broken_manifest: Path, tmp_path: Path, capsys):
    assert run_cli(validate_cli, [str(tmp_path / "missing")]) == 2
    one_error_line(capsys, "chammi validate", "no release at", "missing")
    (tmp_path / "empty").mkdir()
    assert run_cli(validate_cli, [str(tmp_path / "empty")]) == 2
    one_error_line(capsys, "chammi validate", "release.json")
    # a damaged release
    assert run_cli(validate_cli, [str(broken_manifest), "--quiet"]) == errors.EXIT_PROBLEMS
    assert "manifest.parquet" in capsys.readouterr().out


def test_report_user_errors(tmp_path: Path, capsys):
    assert run_cli(report_cli, [str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "chammi report", "chammi eval")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{not json", encoding="utf-8")
    assert run_cli(report_cli, [str(tmp_path / "run"), "--out", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "chammi report", "not valid JSON")
    assert (
        run_cli(report_cli, [str(tmp_path / "run"), "--names", "a", "b", "--out", str(tmp_path / "r")]) == 2
    )
    one_error_line(capsys, "chammi report", "--names")


def test_unexpected_errors_keep_their_traceback(tiny_release: Path, tmp_path: Path, monkeypatch, capsys):
    import chammi_data.interop.official_export

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(chammi_data.interop.official_export, "export_official", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(export_cli, [str(tiny_release), str(tmp_path / "o")])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")  # user errors with their traceback, for debugging
    with pytest.raises(FileNotFoundError):
        run_cli(validate_cli, [str(tmp_path / "missing")])


def test_one_line_messages():
    assert errors.one_line(ValueError("first\n  second\n")) == "first; second"
    assert (
        errors.one_line(FileNotFoundError(2, "No such file or directory", "/x/y"))
        == "No such file or directory: /x/y"
    )
    assert errors.one_line(errors.UserError()) == "UserError"
