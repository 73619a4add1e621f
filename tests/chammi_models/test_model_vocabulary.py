"""The model vocabulary option: every strategy on channel sets drawn from the registry, the weights card,
and the opt-in that lets a model trained on one benchmark's names embed the other's."""

from __future__ import annotations

import json

import pytest
import torch

from chammi_data.format.vocab import CHAMMI75_CHANNELS, SOURCES, VOCAB, translate_channels
from chammi_models import create_model
from chammi_models.zoo.weights import load_model, save_model
from tests.chammi_models.zoo_helpers import SIZE, small_model

ADAPTIVE = ("slice_param", "hypernet", "depthwise", "template_mixing", "channel_vit", "channel_replication")
#: channel sets of CHAMMI-75 studies (a 5-channel Cell Painting study, a 1-channel bright-field study, ...)
STUDY_SETS = (
    ("nucleus", "er", "rna", "agp", "mitochondria"),
    ("bright-field",),
    ("differential interference contrast (DIC)", "nucleus"),
    ("r", "g", "b"),
)


def images(c: int, b: int = 2) -> torch.Tensor:
    return torch.randn(b, c, SIZE, SIZE, generator=torch.Generator().manual_seed(c))


@pytest.mark.parametrize("name", ADAPTIVE)
def test_per_name_strategies_take_any_registry_channel_set(name):
    torch.manual_seed(0)
    model = small_model(name, channels="chammi75").eval()
    assert model.channels == CHAMMI75_CHANNELS
    with torch.no_grad():
        for chans in STUDY_SETS:
            out = model(images(len(chans)), chans)
            width = model.feature_dim(len(chans)) if hasattr(model, "feature_dim") else model.num_features
            assert out.shape == (2, width) and torch.isfinite(out).all()
    with pytest.raises(KeyError, match="not in this model's vocabulary"):
        model(images(1), ("mito",))  # a CHAMMI name, not a CHAMMI-75 type


@pytest.mark.parametrize("name", ("fixed_channels", "target_param"))
def test_per_set_strategies_take_channel_sets_from_the_registry(name):
    torch.manual_seed(0)
    model = small_model(name, channels="chammi75", channel_sets=[list(s) for s in STUDY_SETS]).eval()
    with torch.no_grad():
        a = model(images(5), STUDY_SETS[0])
        b = model(images(5)[:, [4, 0, 1, 2, 3]], [STUDY_SETS[0][i] for i in (4, 0, 1, 2, 3)])
        assert model(images(1), ("bright-field",)).shape == (2, model.num_features)
    torch.testing.assert_close(a, b)
    with pytest.raises(KeyError, match=r"unseen channel set \(nucleus\)"):
        model(images(1), ("nucleus",))
    with pytest.raises(ValueError, match="not in it: \\['mito'\\]"):
        small_model(name, channels="chammi75", channel_sets=[["mito"]])
    with pytest.raises(ValueError, match="sources or channel_sets"):
        small_model(name, channels="chammi75", sources=["cp"], channel_sets=[["nucleus"]])


def test_translation_is_an_opt_in_and_equals_renaming_by_hand():
    torch.manual_seed(0)
    model = small_model("hypernet", channels="chammi75").eval()
    cp = SOURCES["cp"].channels
    x = images(len(cp))
    with pytest.raises(KeyError, match="translate_inputs"):
        model(x, cp)  # mito and golgi are not CHAMMI-75 types: refused, never guessed
    with torch.no_grad():
        by_hand = model(x, translate_channels(cp, "chammi->chammi75"))
        model.translate_inputs("chammi->chammi75")
        translated = model(x, cp)
    torch.testing.assert_close(translated, by_hand, rtol=0, atol=0)
    with pytest.raises(KeyError, match="unknown channel translation"):
        model.translate_inputs("cp->jump")
    # the reverse: a CHAMMI model embeds a CHAMMI-75 Cell Painting study
    chammi = small_model("slice_param").eval().translate_inputs("chammi75->chammi")
    with torch.no_grad():
        assert chammi(x, STUDY_SETS[0]).shape == (2, chammi.num_features)


def test_the_card_records_the_vocabulary_and_rebuilds_it(tmp_path):
    torch.manual_seed(0)
    model = small_model("target_param", channels="chammi75", channel_sets=[list(s) for s in STUDY_SETS])
    save_model(model, tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["vocabulary"] == "chammi75" and card["channels"] == list(CHAMMI75_CHANNELS)
    loaded = load_model(tmp_path / "m")
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, STUDY_SETS[2]), model.eval()(x, STUDY_SETS[2]))
    default = create_model("slice_param", backbone="convnext_atto")
    assert default.channels == VOCAB and default.model_config["channels"] == list(VOCAB)
