"""save_model / load_model: safetensors + card.json, identical outputs after reload, never unpickles."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from chammi_data.format.vocab import SOURCES, VOCAB
from chammi_models import list_models
from chammi_models.zoo.weights import load_model, read_card, save_model
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
    assert card["channels"] == list(VOCAB) and card["vocabulary"] == "chammi"
    assert card["channel_registry"][:8] == list(VOCAB)
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


# -- the card is bound to its weights -------------------------------------------------------------------
def _saved(tmp_path, name="slice_param", **options):
    torch.manual_seed(0)
    folder = tmp_path / "m"
    save_model(small_model(name, **options), folder, {"img_size": SIZE})
    return folder


def _edit_card(folder, **fields):
    card = read_card(folder)
    card.update(fields)
    (folder / "card.json").write_text(json.dumps(card))
    return card


def _rewrite_weights(folder, change, keep_metadata=True):
    """Rewrite model.safetensors with ``change(tensors)`` applied; the card's hash is updated to match."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from chammi_data.store.paths import file_sha256

    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata if keep_metadata else None)
    _edit_card(folder, weights_sha256=file_sha256(path))


def test_card_records_the_weights_hash_and_the_weights_record_the_card(tmp_path):
    from safetensors import safe_open

    from chammi_data.store.paths import file_sha256

    folder = _saved(tmp_path)
    card = read_card(folder)
    assert card["weights_sha256"] == file_sha256(folder / "model.safetensors")
    with safe_open(str(folder / "model.safetensors"), "pt") as fh:
        stored = json.loads(fh.metadata()["chammi_architecture"])
    assert stored == {k: card[k] for k in ("model", "backbone", "options", "channels", "num_classes")}


def test_reordered_channels_in_the_card_are_refused(tmp_path):
    folder = _saved(tmp_path)
    _edit_card(folder, channels=list(reversed(read_card(folder)["channels"])))
    with pytest.raises(RuntimeError, match=r"model\.safetensors does not match.*field 'channels'"):
        load_model(folder)


def test_swapped_weights_are_refused(tmp_path):
    folder = _saved(tmp_path)
    torch.manual_seed(1)  # the same architecture with other weights
    save_model(small_model("slice_param"), tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(RuntimeError, match="weights_sha256"):
        load_model(folder)


@pytest.mark.parametrize("bound", [True, False], ids=["bound", "old-folder"])
def test_another_backbone_is_refused_before_building_it(tmp_path, monkeypatch, bound):
    import chammi_models.zoo.registry as registry

    folder = _saved(tmp_path)
    if not bound:  # a folder from before binding: no hash, no metadata copy; the header shapes decide
        _rewrite_weights(folder, lambda tensors: None, keep_metadata=False)
        card = read_card(folder)
        del card["weights_sha256"]
        (folder / "card.json").write_text(json.dumps(card))
    _edit_card(folder, backbone="convnext_femto")
    devices = []
    real = registry.create_model

    def recording(*args, **kwargs):
        devices.append(torch.empty(()).device.type)  # the default device the model would be built on
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "create_model", recording)
    with pytest.raises(RuntimeError, match="does not match the model its card describes.*convnext_femto"):
        if bound:
            load_model(folder)
        else:
            with pytest.warns(UserWarning, match="predates binding"):
                load_model(folder)
    assert set(devices) <= {"meta"}, "a real model was built before the architecture was checked"


def test_run_time_options_in_the_card_are_refused(tmp_path, monkeypatch):
    import chammi_models.zoo.pretrained as pretrained

    def refuse(*args, **kwargs):
        raise AssertionError("loading a card must not load pretrained files")

    monkeypatch.setattr(pretrained, "load_pretrained", refuse)
    folder = _saved(tmp_path)
    _edit_card(
        folder, options={**read_card(folder)["options"], "pretrained": str(folder / "model.safetensors")}
    )
    with pytest.raises(ValueError, match=r"'options' holds \['pretrained'\].*run-time options"):
        load_model(folder)


def test_non_finite_weights_are_refused(tmp_path):
    folder = _saved(tmp_path)

    def poison(tensors):
        tensors["first_layer.bank"][0, 0, 0, 0] = float("nan")

    _rewrite_weights(folder, poison)
    with pytest.raises(ValueError, match="tensor 'first_layer.bank' holds non-finite values"):
        load_model(folder)


def test_a_folder_without_hash_loads_with_a_warning(tmp_path):
    folder = _saved(tmp_path)
    card = read_card(folder)
    del card["weights_sha256"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.warns(UserWarning, match="predates binding"):
        model = load_model(folder)
    assert model.card["img_size"] == SIZE


@pytest.mark.parametrize(
    "field, value", [("channels", "dna"), ("num_classes", -1), ("options", []), ("model", 3)]
)
def test_malformed_card_fields_are_named(tmp_path, field, value):
    folder = _saved(tmp_path)
    _edit_card(folder, **{field: value})
    with pytest.raises(ValueError, match=f"field '{field}' must be"):
        load_model(folder)
