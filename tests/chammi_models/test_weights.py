"""save_model / load_model: safetensors + card.json, identical outputs after reload, never unpickles."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from chammi_data.vocab import SOURCES
from chammi_models import list_models
from chammi_models.weights import load_model, read_card, save_model
from tests.chammi_models.zoo_helpers import SIZE, small_model


@pytest.mark.parametrize("name", list_models())
def test_reload_gives_identical_outputs(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = small_model(name).eval()
    with torch.no_grad():  # make trained-looking weights: perturb every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    x = torch.randn(2, 4, SIZE, SIZE)
    chans = SOURCES["hpa"].channels
    with torch.no_grad():
        before = model(x, chans)
    save_model(model, tmp_path / "m", {"training_data": {"release": "tiny"}, "scores": {"cps": 0.5}})

    def refuse(*args, **kwargs):
        raise AssertionError("load_model must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    torch.manual_seed(123)  # a different random init, overwritten by the load
    loaded = load_model(tmp_path / "m")
    with torch.no_grad():
        after = loaded(x, chans)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert loaded.card["scores"] == {"cps": 0.5}


def test_card_contents(tmp_path):
    model = small_model("template_mixing", num_templates=16, num_classes=5)
    save_model(model, tmp_path, {"normalisation": {"hpa": [[0.1], [0.2]]}})
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["model"] == "template_mixing"
    assert card["options"] == {"num_templates": 16}
    assert card["backbone"] == "convnext_atto"
    assert card["num_classes"] == 5 and card["num_features"] == 320
    assert card["channels"] == card["vocabulary"]
    assert card["normalisation"] == {"hpa": [[0.1], [0.2]]}
    assert (tmp_path / "model.safetensors").is_file()
    assert load_model(tmp_path).first_layer.templates.shape[1] == 16


def test_card_may_not_contradict_the_model(tmp_path):
    model = small_model("hypernet")
    with pytest.raises(ValueError, match="contradicts the model"):
        save_model(model, tmp_path, {"backbone": "convnext_tiny"})


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder written by save_model"):
        load_model(tmp_path)
    save_model(small_model("slice_param"), tmp_path)
    card = read_card(tmp_path)
    card["options"] = {"source_offsets": False}  # the weights have offsets the card now denies
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(RuntimeError, match="does not match the model its card describes"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "card.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path)
