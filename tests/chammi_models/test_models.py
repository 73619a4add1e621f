"""Every registered model: forward on each source's channels, gradients, channel handling, errors."""

from __future__ import annotations

import pytest
import torch

from chammi_data.format.vocab import SOURCES, VOCAB, to_indices
from chammi_models import create_model, list_models
from tests.chammi_models.zoo_helpers import SIZE, first_layer_parameters, small_model

MODELS = list_models()
#: Models whose first layer is built per channel name: any subset of names in any order works.
ADAPTIVE = {"slice_param", "hypernet", "depthwise", "template_mixing", "channel_vit", "channel_replication"}
#: Models with one first layer per source channel set.
PER_SOURCE = {"fixed_channels", "target_param"}

_CACHE: dict[str, torch.nn.Module] = {}


def model_for(name: str) -> torch.nn.Module:
    """One small instance per model name for the whole module (eval mode, seeded)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = small_model(name).eval()
    return _CACHE[name]


def images(c: int, b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, c, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def expected_dim(model, c: int) -> int:
    return model.feature_dim(c) if hasattr(model, "feature_dim") else model.num_features


def test_registry_lists_the_paper_models_and_channel_vit():
    assert set(MODELS) == ADAPTIVE | PER_SOURCE


def test_unknown_model_lists_valid_names():
    with pytest.raises(KeyError, match="valid models: .*slice_param"):
        create_model("resnet50")


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError, match="num_templates"):
        create_model("template_mixing", backbone="convnext_atto", num_template=3)


def test_non_convnext_backbone_is_refused():
    with pytest.raises(ValueError, match="not a timm ConvNeXt"):
        create_model("slice_param", backbone="resnet18")


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("source", list(SOURCES))
def test_forward_each_source(name, source):
    model = model_for(name)
    chans = SOURCES[source].channels
    with torch.no_grad():
        out = model(images(len(chans)), chans)
    assert out.shape == (2, expected_dim(model, len(chans)))
    assert torch.isfinite(out).all()
    # vocabulary indices are the same input as names
    with torch.no_grad():
        out_idx = model(images(len(chans)), to_indices(chans))
    torch.testing.assert_close(out, out_idx)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_reach_first_layer(name):
    torch.manual_seed(0)
    model = small_model(name).train()
    chans = SOURCES["hpa"].channels
    feats = model(images(len(chans), b=3), chans)
    if model.proxy_loss is not None:
        loss = model.loss(feats, torch.tensor([0, 1, 2]))
    else:
        loss = feats.square().mean()
    loss.backward()
    grads = [p.grad for p in first_layer_parameters(model) if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if model.proxy_loss is not None:
        assert model.proxy_loss.proxies.grad is not None and model.proxy_loss.proxies.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_unseen_channel_subsets_work(name):
    model = model_for(name)
    chans = ("rna", "membrane")  # never together in one source
    with torch.no_grad():
        out = model(images(2), chans)
        out_all = model(images(len(VOCAB)), VOCAB)
    assert out.shape == (2, expected_dim(model, 2))
    assert out_all.shape == (2, expected_dim(model, len(VOCAB)))


@pytest.mark.parametrize("name", sorted(ADAPTIVE - {"channel_replication"}))
def test_permuting_channels_with_their_names_keeps_features(name):
    """Channel identity travels with the names: reordering both changes nothing."""
    model = model_for(name)
    chans = SOURCES["cp"].channels
    x = images(len(chans))
    perm = [3, 0, 4, 2, 1]
    with torch.no_grad():
        a = model(x, chans)
        b = model(x[:, perm], [chans[i] for i in perm])
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_channel_replication_concatenates_per_channel_passes():
    model = model_for("channel_replication")
    x = images(3)
    with torch.no_grad():
        whole = model(x, ("nucleus", "membrane", "protein"))
        single = model(x[:, 1:2], ("membrane",))
    d = model.num_features
    torch.testing.assert_close(whole[:, d : 2 * d], single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(PER_SOURCE))
def test_per_source_models_reject_unseen_channel_sets(name):
    model = model_for(name)
    with pytest.raises(KeyError, match=r"unseen channel set \(rna, membrane\)"):
        model(images(2), ("rna", "membrane"))
    with pytest.raises(KeyError, match="unseen channel set"):
        model(images(4), ("nucleus", "er", "rna", "golgi"))  # a strict subset of CP


@pytest.mark.parametrize("name", sorted(PER_SOURCE))
def test_per_source_models_reorder_a_permuted_source_set(name):
    model = model_for(name)
    chans = SOURCES["hpa"].channels
    x = images(4)
    perm = [2, 0, 3, 1]
    with torch.no_grad():
        a = model(x, chans)
        b = model(x[:, perm], [chans[i] for i in perm])
    torch.testing.assert_close(a, b)


def test_fixed_channels_uses_a_separate_trunk_per_source():
    model = model_for("fixed_channels")
    assert set(model.nets) == set(SOURCES)
    assert [net.stem.in_channels for net in model.nets.values()] == [3, 4, 5]
    assert model.nets["wtc11"].trunk.stages[0] is not model.nets["hpa"].trunk.stages[0]


def test_input_errors_are_clear():
    model = model_for("slice_param")
    with pytest.raises(ValueError, match="3 channels but 2 channel names"):
        model(images(3), ("nucleus", "membrane"))
    with pytest.raises(KeyError, match="unknown channel 'dapi'"):
        model(images(1), ("dapi",))
    with pytest.raises(ValueError, match="names a channel twice"):
        model(images(2), ("rna", "rna"))
    with pytest.raises(TypeError, match="single string"):
        model(images(1), "rna")
    small = create_model("slice_param", channels=SOURCES["wtc11"].channels, backbone="convnext_atto")
    with pytest.raises(KeyError, match=r"not in this model's vocabulary"):
        small(images(1), ("rna",))


def test_channel_vit_sampling_and_pooling():
    torch.manual_seed(0)
    model = small_model("channel_vit", sample_channels=True, pool="mean").train()
    x = images(5)
    out = model(x, SOURCES["cp"].channels)
    assert out.shape == (2, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, SOURCES["cp"].channels), model(x, SOURCES["cp"].channels))
    with torch.no_grad():  # other input sizes: positional embeddings are resized
        assert model(torch.randn(1, 2, 48, 64), ("rna", "er")).shape == (1, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 1, 30, 32), ("rna",))


def test_channel_vit_sampling_changes_the_training_input():
    """In training with sampling on, repeated passes see different channel subsets."""
    torch.manual_seed(0)
    model = small_model("channel_vit", sample_channels=True).train()
    model.blocks[0].drop_path1 = torch.nn.Identity()
    x = images(5)
    outs = {tuple(model(x, SOURCES["cp"].channels)[0, :4].tolist()) for _ in range(6)}
    assert len(outs) > 1
