"""Pretrained init from local timm ConvNeXt checkpoints and the paper's first-layer rules."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from chammi_data.format.vocab import SOURCES
from chammi_models import create_model
from chammi_models.zoo.first_layers import pad_rgb_filters, rgb_mean_filter
from chammi_models.zoo.pretrained import resolve_checkpoint
from tests.chammi_models.zoo_helpers import SIZE, small_model


@pytest.fixture(scope="module")
def timm_net():
    torch.manual_seed(7)
    return timm.create_model("convnext_atto", pretrained=False).eval()


@pytest.fixture(scope="module")
def ckpt(timm_net, tmp_path_factory):
    """The random timm model saved as .safetensors (with its classifier head, like real checkpoints)."""
    path = tmp_path_factory.mktemp("ckpt") / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, str(path))
    return path


def build(name, ckpt, **options):
    return create_model(name, backbone="convnext_atto", pretrained=ckpt, **options).eval()


def test_pad_rgb_filters_rule():
    rgb = torch.randn(8, 3, 4, 4)
    four, five = pad_rgb_filters(rgb, 4), pad_rgb_filters(rgb, 5)
    torch.testing.assert_close(four[:, :3], rgb)
    torch.testing.assert_close(four[:, 3], rgb.mean(1))
    torch.testing.assert_close(five[:, 3], rgb[:, :2].mean(1))
    torch.testing.assert_close(five[:, 4], rgb[:, 1:].mean(1))
    torch.testing.assert_close(pad_rgb_filters(rgb, 2), rgb[:, :2])


def test_channel_replication_equals_the_timm_network(timm_net, ckpt):
    model = build("channel_replication", ckpt)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(x, SOURCES["wtc11"].channels)
        ref = [
            timm_net.forward_features(x[:, c : c + 1].expand(-1, 3, -1, -1)).mean((2, 3)) for c in range(3)
        ]
    torch.testing.assert_close(ours, torch.cat(ref, dim=1), atol=1e-5, rtol=1e-4)
    assert model.model_config["pretrained"] == str(ckpt)


@pytest.mark.parametrize("name", ["fixed_channels", "target_param"])
def test_mean_padding_of_per_source_stems(name, timm_net, ckpt):
    model = build(name, ckpt)
    rgb, bias = timm_net.stem[0].weight, timm_net.stem[0].bias
    stems = (
        {s: n.stem for s, n in model.nets.items()} if name == "fixed_channels" else model.first_layer.convs
    )
    for conv in stems.values():
        torch.testing.assert_close(conv.weight, pad_rgb_filters(rgb, conv.in_channels))
        torch.testing.assert_close(conv.bias, bias)
    trunk = model.nets["cp"].trunk if name == "fixed_channels" else model.trunk
    torch.testing.assert_close(
        trunk.stages[3].blocks[1].mlp.fc1.weight, timm_net.stages[3].blocks[1].mlp.fc1.weight
    )
    torch.testing.assert_close(trunk.stem_norm.weight, timm_net.stem[1].weight)


def test_fixed_channels_wtc_model_is_the_timm_network(timm_net, ckpt):
    """3 RGB-order inputs through the WTC model = the pretrained network's pooled features."""
    model = build("fixed_channels", ckpt)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(x, SOURCES["wtc11"].channels)
        ref = timm_net.forward_features(x).mean((2, 3))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_slice_param_starts_from_the_rgb_mean(timm_net, ckpt):
    model = build("slice_param", ckpt)
    mean = rgb_mean_filter(timm_net.stem[0].weight)
    for i in range(len(model.channels)):
        torch.testing.assert_close(model.first_layer.bank[:, i], mean)
    assert all(o.abs().sum() == 0 for o in model.first_layer.offsets.values())
    # three identical channels answer like the pretrained stem (bias aside) on the grey image
    grey = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        ours = model.first_layer(grey.expand(-1, 3, -1, -1), ("er", "rna", "mito"))
        ref = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), timm_net.stem[0].weight, stride=4)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_hypernet_generates_near_the_rgb_mean(timm_net, ckpt):
    model = build("hypernet", ckpt)
    mean = rgb_mean_filter(timm_net.stem[0].weight)
    with torch.no_grad():
        w = model.first_layer.weight(("nucleus", "rna"))
    assert w.shape == (40, 2, 4, 4)
    torch.testing.assert_close(model.first_layer.out.bias.view(40, 4, 4), mean)
    assert 0 < (w[:, 0] - mean).std() < 0.2 * mean.std()
    assert not torch.allclose(w[:, 0], w[:, 1])  # names still differ


@pytest.mark.parametrize("name", ["depthwise", "template_mixing"])
def test_random_first_layer_pretrained_trunk(name, timm_net, ckpt):
    model = build(name, ckpt)
    torch.testing.assert_close(
        model.trunk.stages[2].blocks[0].conv_dw.weight, timm_net.stages[2].blocks[0].conv_dw.weight
    )


def test_pth_checkpoint_and_hub_cache_name(timm_net, tmp_path, monkeypatch):
    pth = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_net.state_dict().items()}}, pth)
    torch.testing.assert_close(build("target_param", pth).trunk.stem_norm.bias, timm_net.stem[1].bias)

    cache = tmp_path / "hub"
    snap = cache / "models--timm--convnext_atto.test_tag" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--timm--convnext_atto.test_tag" / "refs").mkdir()
    (cache / "models--timm--convnext_atto.test_tag" / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_checkpoint("convnext_atto.test_tag") == snap / "model.safetensors"
    assert resolve_checkpoint(cache / "models--timm--convnext_atto.test_tag") == snap / "model.safetensors"
    model = build("slice_param", "convnext_atto.test_tag")
    torch.testing.assert_close(model.trunk.stem_norm.weight, timm_net.stem[1].weight)


def test_missing_and_wrong_checkpoints(tmp_path, monkeypatch, ckpt):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*nothing is downloaded"):
        create_model("slice_param", backbone="convnext_atto", pretrained="convnext_atto.fb_in1k")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("slice_param", backbone="convnext_atto", pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(
        ValueError, match="are for convnext_tiny, but the model's backbone is 'convnext_atto'"
    ):
        create_model("slice_param", backbone="convnext_atto", pretrained="convnext_tiny.fb_in22k")
    with pytest.raises(
        ValueError, match="convnext_atto.safetensors: checkpoint does not fit backbone 'convnext_nano'"
    ):
        create_model("slice_param", backbone="convnext_nano", pretrained=ckpt)
    evil = tmp_path / "evil.pth"
    torch.save({"stem.0.weight": torch.zeros(1), "hook": _Unpicklable()}, evil)  # a pickled object
    with pytest.raises(ValueError, match="evil.pth as a tensor-only checkpoint"):
        create_model("slice_param", backbone="convnext_atto", pretrained=evil)
    with pytest.raises(NotImplementedError, match="ChannelViT cannot be initialised"):
        small_model("channel_vit", pretrained=ckpt)


class _Unpicklable:
    """An arbitrary object: torch.load(weights_only=True) must refuse to rebuild it."""
