"""`chammi-build --codec` through its command line: the default stays byte-identical, lz4 / none releases
hold the same pixels, record their codec and pass `chammi validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import chammi_cli.build as cli
import pipelines.sources.wtc11.synth as wtc11_synth
from chammi_data.format.manifest import read_manifest
from pipelines.sources.wtc11.pipeline import STAGES


def _files(root: Path) -> dict[str, bytes]:
    skip = {"build_report.json"}  # timings
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _build(raw: Path, out: Path, *extra: str) -> int:
    args = ["--source", "wtc11", "--input", str(raw), "--output", str(out), "--workers", "1", "--quiet"]
    return cli.main([*args, *extra])


@pytest.mark.slow
def test_codec_flag_default_lz4_and_none(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    wtc11_synth.write_sample(raw, 0, cells_per_structure=2, z=1, stages=STAGES)
    assert _build(raw, tmp_path / "default") == 0
    assert _build(raw, tmp_path / "zstd", "--codec", "zstd") == 0
    assert _files(tmp_path / "default") == _files(tmp_path / "zstd")
    for codec, suffix in (("lz4", ".npy.lz4"), ("none", ".npy.zst")):
        out = tmp_path / codec
        assert _build(raw, out, "--codec", codec) == 0
        rel = json.loads((out / "release.json").read_text())
        assert rel["codec"] == codec and rel["config"]["codec"] == codec
        assert read_manifest(out)["sha256"].tolist() == read_manifest(tmp_path / "zstd")["sha256"].tolist()
        tar = next((out / "shards" / "wtc11").glob("*.tar")).read_bytes()
        assert suffix.encode() in tar
        run = subprocess.run(
            [sys.executable, "-m", "chammi_cli", "validate", str(out)], capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr
    size = {
        c: sum(p.stat().st_size for p in (tmp_path / c / "shards").rglob("*.tar")) for c in ("zstd", "none")
    }
    assert size["none"] > size["zstd"]


def test_a_bad_codec_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--source", "wtc11", "--codec", "gzip"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("codec: brotli\n")
    assert cli.main(["--source", "wtc11", "--config", str(config), "--output", str(tmp_path / "o")]) == 2
    assert "codec must be one of zstd, lz4, none, got 'brotli'" in capsys.readouterr().err
