"""The `chammi` dispatcher: every subcommand loads and parses through the real entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chammi_cli import SUBCOMMANDS, main


def test_every_subcommand_is_a_module_of_the_command_line_layer():
    assert {"export", "validate", "eval", "report", "train", "embed", "demo"} == set(SUBCOMMANDS)
    assert all(module.startswith("chammi_cli.") for module, _ in SUBCOMMANDS.values())


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: chammi " + command in capsys.readouterr().out


def test_validate_and_export_through_the_dispatcher(tiny_release, tmp_path, capsys):
    assert main(["validate", str(tiny_release), "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out
    assert (
        main(["export", "--format", "chammi", str(tiny_release), str(tmp_path / "official"), "--quiet"]) == 0
    )
    for folder in ("Allen", "HPA", "CP"):
        assert (tmp_path / "official" / folder / "enriched_meta.csv").is_file()


def test_unknown_subcommand_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "train" in err


def test_console_scripts_are_installed():
    # the scripts pip installs beside this interpreter (CI runs .venv/bin/python without activating the venv)
    bindir = Path(sys.executable).parent
    out = subprocess.run(
        [str(bindir / "chammi"), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert all(name in out for name in SUBCOMMANDS)
    out = subprocess.run(
        [str(bindir / "chammi-build"), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "--source" in out


def test_python_dash_m_chammi_models_is_the_chammi_command(tmp_path):
    run = [sys.executable, "-m", "chammi_models"]
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    assert all(name in out for name in SUBCOMMANDS)
    proc = subprocess.run(
        [
            *run,
            "embed",
            "--checkpoint",
            str(tmp_path / "missing"),
            "--release",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("chammi embed: ") and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["validate", "/no/such/release"],
        ["export", "/no/such/release", "--out", "/no/such/out"],
        ["report", "--runs", "/no/such/run", "--out", "/no/such/out"],
        ["eval", "--help"],
    ],
)
def test_a_command_imports_only_what_it_uses(argv):
    """The parser registers only the named subcommand, and its choices come without the scorers: `chammi
    validate` of a missing release took 9 s (torch, torchvision and scikit-learn imported for `chammi eval`'s
    options), now about 1 s."""
    code = (
        "import sys\n"
        "from chammi_cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'sklearn', 'timm') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
