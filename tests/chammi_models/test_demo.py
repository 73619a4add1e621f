"""`chammi demo` end to end in its quick form (few training steps): every stage runs and the report exists."""

from __future__ import annotations

import json

import pytest

from chammi_cli import main


@pytest.mark.slow
def test_demo_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    assert f"report: {(report / 'index.html').resolve()}" in printed
    for name in (
        "index.html",
        "radar.png",
        "montage.png",
        "results.json",
        "results_trained.csv",
        "results_baseline.csv",
    ):
        assert (report / name).stat().st_size > 0, name
    results = json.loads((report / "results.json").read_text())
    assert set(results["cps"]) == {"trained", "baseline"}
    assert all(0.0 <= v <= 1.0 for v in results["cps"].values())
    assert len(results["tables"]["trained"]) == 9  # all nine tasks scored
    page = (report / "index.html").read_text()
    assert 'src="radar.png"' in page and 'src="montage.png"' in page and "CPS" in page
    # the release the demo built is valid
    from chammi_data.format.validate import validate_release

    assert validate_release(out / "release").ok


@pytest.mark.slow
def test_chammi75_demo_quick_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo75"
    assert main(["demo", "--dataset", "chammi75", "--out", str(out), "--quick", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    assert f"report: {(report / 'index.html').resolve()}" in printed and "4 training steps" in printed
    results = json.loads((report / "results.json").read_text())
    assert results["accounting"]["kinds"]["images"] == {"in": 18, "used": 18, "skipped": 0}
    assert (report / "crops.png").stat().st_size > 0 and 'src="crops.png"' in (
        report / "index.html"
    ).read_text()
    from chammi_data.format.validate import validate_release

    assert validate_release(out / "release").ok
