"""Config loading, dotted overrides, validation, and every bundled YAML config parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from chammi_models.training.config import CONFIGS_DIR, config_from_dict, load_config, save_config, valid_keys
from chammi_models.training.schedule import lr_at, steps_for


def test_overrides_parse_yaml_values_and_dotted_keys() -> None:
    cfg = config_from_dict(
        {"optim": {"lr": "1e-3"}},
        [
            "data.batch_size=16",
            "model.pretrained=null",
            "loss.swad_start=5",
            "data.train_sources=[wtc11, hpa]",
        ],
    )
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.batch_size == 16
    assert cfg.model.pretrained is None
    assert cfg.loss.swad_start == 5
    assert cfg.data.train_sources == ["wtc11", "hpa"]


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(KeyError, match="optim.lrr.*valid keys:.*optim.lr"):
        config_from_dict({"optim": {"lrr": 1.0}})
    with pytest.raises(KeyError, match="valid keys"):
        config_from_dict({}, ["optim.nope=3"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.tps_p=1.5", "data.tps_p"),
        ("data.train_sources=[mars]", "data.train_sources"),
        ("run.eval_metric=manhattan", "run.eval_metric"),
        ("optim.min_lr=1.0", "optim.min_lr"),
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_from_dict({}, [override])


def test_type_errors() -> None:
    with pytest.raises(ValueError, match="data.batch_size: expected an integer"):
        config_from_dict({"data": {"batch_size": "many"}})
    with pytest.raises(ValueError, match="run.amp: expected true/false"):
        config_from_dict({"run": {"amp": "yes please"}})


def test_save_roundtrip(tmp_path: Path) -> None:
    cfg = config_from_dict({"name": "x"}, ["optim.lr=0.5", "data.scale=[0.5, 1.0]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert "loss.ssl_lambda" in valid_keys()


def test_bundled_configs_all_load() -> None:
    paths = sorted(CONFIGS_DIR.glob("*.yaml"))
    assert len(paths) >= 20, "expected one config per Table 1 row plus extras"
    names = set()
    for p in paths:
        cfg = load_config(p)
        names.add(cfg.name)
        if cfg.model.pretrained is not None:
            assert cfg.model.pretrained == "convnext_tiny.fb_in22k"
    assert "tiny_cpu" in names
    lo = load_config("tiny_cpu")  # bare names resolve to the bundled folder
    assert lo.model.backbone == "convnext_atto"


def test_schedule_warmup_and_cosine() -> None:
    kw = dict(lr=1e-3, total_steps=100, warmup_steps=10, warmup_start_lr=1e-5, min_lr=1e-6)
    assert lr_at(0, **kw) == pytest.approx(1e-5)
    assert lr_at(5, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(55, **kw) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert lr_at(100, **kw) == pytest.approx(1e-6)
    assert lr_at(500, **kw) == pytest.approx(1e-6)
    values = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_scheduler_steps_optimizer_and_resumes() -> None:
    import torch

    from chammi_models.training.schedule import WarmupCosine, build_optimizer

    def make():
        p = torch.nn.Parameter(torch.zeros(2))
        opt = build_optimizer([p], lr=1e-2, weight_decay=0.0)
        return opt, WarmupCosine(opt, total_steps=20, warmup_steps=4, warmup_start_lr=1e-5, min_lr=1e-6)

    opt, sched = make()
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-5) and seen[4] == pytest.approx(1e-2)
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    sched.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_steps_for() -> None:
    assert steps_for(
        num_samples=1000, batch_size=100, epochs=15, warmup_epochs=3, max_steps=None, warmup_steps=None
    ) == (10, 150, 30)
    assert steps_for(
        num_samples=1000, batch_size=100, epochs=15, warmup_epochs=3, max_steps=20, warmup_steps=None
    ) == (10, 20, 20)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        steps_for(
            num_samples=10, batch_size=100, epochs=1, warmup_epochs=0, max_steps=None, warmup_steps=None
        )
