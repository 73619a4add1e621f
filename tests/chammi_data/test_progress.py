"""progress(): a tqdm bar on a terminal, one start and one end line in logs, nothing when disabled."""

from __future__ import annotations

import io

import pytest

from chammi_data.progress import DISABLE_ENV, Progress, bars_wanted, progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def test_log_mode_prints_a_start_and_an_end_line(capsys: pytest.CaptureFixture[str]):
    assert list(progress(range(3), desc="export HPA", unit="cell")) == [0, 1, 2]
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 2
    assert lines[0] == "export HPA: 3 cells"
    assert lines[1].startswith("export HPA: done 3 cells in ") and lines[1].endswith(" s")


def test_terminal_gets_a_tqdm_bar_unless_tqdm_disable(monkeypatch: pytest.MonkeyPatch):
    term = FakeTerminal()
    assert bars_wanted(term) and not bars_wanted(io.StringIO())
    list(Progress(range(5), desc="bar", unit="cell", stream=term))
    assert "\r" in term.getvalue() and "5/5" in term.getvalue()
    for value in ("1", "true", "True"):
        monkeypatch.setenv(DISABLE_ENV, value)
        term = FakeTerminal()
        list(Progress(range(5), desc="lines", unit="cell", stream=term))
        assert "\r" not in term.getvalue() and term.getvalue().startswith(
            "lines: 5 cells\nlines: done 5 cells in"
        )
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert bars_wanted(FakeTerminal())


def test_disable_prints_nothing(capsys: pytest.CaptureFixture[str]):
    with progress(desc="quiet", total=4, disable=True) as bar:
        bar.update(4)
    assert list(progress([1, 2], desc="quiet", disable=True)) == [1, 2]
    assert capsys.readouterr().err == ""


def test_manual_updates_postfix_unknown_total_and_early_stop(capsys: pytest.CaptureFixture[str]):
    with progress(desc="train", total=10, unit="step") as bar:
        for _ in range(10):
            bar.update()
        bar.set_postfix(loss=0.5)
    first = capsys.readouterr().err.splitlines()
    assert first[0] == "train: 10 steps" and first[1].startswith("train: done 10 steps in")
    assert first[1].endswith(", loss=0.5")

    list(progress((i for i in range(2)), desc="gen", unit="shard"))
    assert capsys.readouterr().err.splitlines()[0] == "gen: started"

    with pytest.raises(RuntimeError):
        for i in progress(range(5), desc="stage", unit="cell"):
            if i == 2:
                raise RuntimeError("boom")
    assert "stage: stopped after 2 cells of 5 in" in capsys.readouterr().err


def test_resumed_stage_counts_what_was_already_done(capsys: pytest.CaptureFixture[str]):
    with progress(desc="units", total=5, unit="unit", initial=3) as bar:
        bar.update(2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "units: 5 units (3 already done)" and lines[1].startswith("units: done 5 units in")
