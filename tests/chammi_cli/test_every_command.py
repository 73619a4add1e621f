"""Every command, given bad input as a new user would type it: one line on stderr, exit status 2, no
traceback.

The commands run as subprocesses (``python -m chammi_cli ...``, ``python -m chammi_cli.build ...``), the way a
user starts them, so the dispatcher, argument parsing and the error answer are all on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import S3Server, free_port

CHAMMI = [sys.executable, "-m", "chammi_cli"]
BUILD = [sys.executable, "-m", "chammi_cli.build"]


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TQDM_DISABLE": "1", "CHAMMI_SCHEDULER_TIMEOUT_S": "2", **(env or {})}
    full_env.pop("CHAMMI_DEBUG", None)
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess[str], prog: str, *needles: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad_input")
    (d / "malformed.yaml").write_text("a: [b\n")
    (d / "a_list.yaml").write_text("- a\n- b\n")
    (d / "unknown_key.yaml").write_text("no_such_section: 1\n")
    (d / "a_file").write_text("x\n")
    return d


@pytest.fixture(scope="module")
def wtc_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.sources.synthetic import write_sample

    return write_sample(tmp_path_factory.mktemp("raw"), seed=0, sources=["wtc11"]) / "wtc11"


CASES = [
    # (id, argv after the program, prog, needles)
    ("validate-missing", CHAMMI + ["validate", "{d}/nothing"], "chammi validate", ["no release at"]),
    ("export-missing", CHAMMI + ["export", "{d}/nothing", "{d}/o"], "chammi export", ["no release at"]),
    (
        "eval-missing-features",
        CHAMMI + ["eval", "--features", "{d}/nothing", "--release", "{rel}", "--out", "{d}/o"],
        "chammi eval",
        ["nothing"],
    ),
    ("report-missing", CHAMMI + ["report", "{d}/nothing", "--out", "{d}/o"], "chammi report", ["nothing"]),
    (
        "train-missing-release",
        CHAMMI + ["train", "--config", "tiny_cpu", "--release", "{d}/nothing", "--out", "{d}/r"],
        "chammi train",
        ["no release at"],
    ),
    ("train-malformed-yaml", CHAMMI + ["train", "--config", "{d}/malformed.yaml"], "chammi train", ["YAML"]),
    ("train-yaml-list", CHAMMI + ["train", "--config", "{d}/a_list.yaml"], "chammi train", ["mapping"]),
    ("train-unknown-config", CHAMMI + ["train", "--config", "no_such_config"], "chammi train", ["tiny_cpu"]),
    (
        "train-unknown-override",
        CHAMMI + ["train", "--config", "tiny_cpu", "optim.nope=1"],
        "chammi train",
        ["optim.nope"],
    ),
    (
        "train-pretrained-weights-missing",
        CHAMMI
        + ["train", "--config", "hypernet_tps", "--release", "{rel}", "--out", "{d}/r2", "data.batch_size=8"],
        "chammi train",
        ["convnext_tiny.fb_in22k"],
    ),
    (
        "embed-missing-checkpoint",
        CHAMMI + ["embed", "--checkpoint", "{d}/nothing", "--release", "{rel}", "--out", "{d}/f"],
        "chammi embed",
        ["chammi train"],
    ),
    ("demo-out-is-a-file", CHAMMI + ["demo", "--out", "{d}/a_file"], "chammi demo", ["a_file"]),
    ("chammi-unknown-command", CHAMMI + ["trian"], "chammi", ["invalid choice"]),
    ("build-unknown-source", BUILD + ["--source", "allen"], "chammi-build", ["invalid choice"]),
    (
        "build-malformed-config",
        BUILD + ["--source", "wtc11", "--config", "{d}/malformed.yaml", "--output", "{d}/b1"],
        "chammi-build",
        ["YAML"],
    ),
    (
        "build-unknown-config-key",
        BUILD + ["--source", "wtc11", "--config", "{d}/unknown_key.yaml", "--output", "{d}/b2"],
        "chammi-build",
        ["no_such_section"],
    ),
    (
        "build-output-is-a-file",
        BUILD + ["--source", "wtc11", "--output", "{d}/a_file"],
        "chammi-build",
        ["a_file", "not a folder"],
    ),
    (
        "build-missing-input",
        BUILD + ["--source", "wtc11", "--input", "{d}/nothing", "--output", "{d}/b3"],
        "chammi-build",
        ["metadata.csv"],
    ),
    (
        "build-unreachable-scheduler",
        BUILD + ["--source", "wtc11", "--input", "{wtc}", "--output", "{d}/b4", "--scheduler", "{sched}"],
        "chammi-build",
        ["cannot reach the dask scheduler"],
    ),
    ("synth-output-is-a-file", BUILD + ["synth", "--output", "{d}/a_file"], "chammi-build synth", ["a_file"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, bad_files: Path, tiny_release: Path, wtc_raw: Path) -> None:
    _, argv, prog, needles = case
    fields = {"d": bad_files, "rel": tiny_release, "wtc": wtc_raw, "sched": f"tcp://127.0.0.1:{free_port()}"}
    proc = run([a.format(**fields) for a in argv], cwd=bad_files)
    assert_one_line(proc, prog, *needles)


#: overrides that make a tiny_cpu run fit the tiny release and run in-process
SMALL_RUN = ["data.workers=0", "data.batch_size=8"]


@pytest.fixture(scope="module")
def one_step_run(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A `chammi train` run stopped after one step (a checkpoint to resume), and its command line."""
    out = tmp_path_factory.mktemp("one_step") / "run"
    common = ["train", "--config", "tiny_cpu", "--release", str(tiny_release), "--out", str(out)]
    first = run(CHAMMI + [*common, "--stop-after", "1", *SMALL_RUN], cwd=out.parent)
    assert first.returncode == 0, first.stderr[-2000:]
    return out, common


@pytest.mark.slow
def test_resume_with_a_changed_config_is_one_line(one_step_run: tuple[Path, list[str]]) -> None:
    out, common = one_step_run
    again = run(CHAMMI + [*common, "--resume", *SMALL_RUN, "optim.lr=0.5"], cwd=out.parent)
    assert_one_line(again, "chammi train", "optim")


class _Payload:
    """Pickles to a call of os.system: what a hostile checkpoint would hold."""

    def __reduce__(self):
        return (os.system, ("echo PAYLOAD-RAN",))


@pytest.mark.slow
def test_a_pickled_checkpoint_is_refused_without_advice_to_unpickle_it(
    one_step_run: tuple[Path, list[str]], tmp_path: Path
) -> None:
    import shutil

    import torch

    src, common = one_step_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    (state,) = out.glob("checkpoints/step-*/state.pt")
    torch.save({"objective": _Payload()}, state)
    common = [str(out) if a == str(src) else a for a in common]
    proc = run(CHAMMI + [*common, "--resume", *SMALL_RUN], cwd=tmp_path)
    assert_one_line(proc, "chammi train", "not a safe checkpoint", str(state))
    assert "weights_only" not in proc.stderr and "PAYLOAD-RAN" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_bucket_without_credentials_is_one_line_at_once(tmp_path: Path) -> None:
    """No credentials is not a transient fault: no retries, one line naming where credentials were looked
    for."""
    with S3Server() as s3:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=s3.endpoint,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(tmp_path / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
            AWS_EC2_METADATA_DISABLED="true",
            HOME=str(tmp_path),
        )
        for argv, prog in [
            (CHAMMI + ["validate", "s3://bucket/release"], "chammi validate"),
            (
                CHAMMI
                + ["eval", "--features", str(tmp_path), "--release", "s3://b/r", "--out", str(tmp_path)],
                "chammi eval",
            ),
            (
                CHAMMI + ["embed", "--checkpoint", str(tmp_path), "--release", "s3://b/r", "--out", "f"],
                "chammi embed",
            ),
        ]:
            proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert_one_line(proc, prog)
            assert "retrying" not in proc.stderr
