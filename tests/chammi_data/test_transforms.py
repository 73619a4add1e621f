"""Sample transforms on images of any channel count: crops, flips, normalisation, subsetting, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chammi_data.augment.tps import ThinPlateSpline
from chammi_data.augment.transforms import (
    CenterCrop,
    ChannelSubset,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    ResizeShorter,
    accepts_generator,
    eval_transform,
    train_transform,
)
from chammi_data.format.vocab import SOURCES, normalisation_stats


def _sample(source: str = "hpa", hw: tuple[int, int] = (40, 56), seed: int = 0) -> dict:
    info = SOURCES[source]
    img = torch.rand(info.num_channels, *hw, generator=torch.Generator().manual_seed(seed))
    return {
        "image": img,
        "channels": info.channels,
        "source": source,
        "label": "L",
        "cell_id": f"{source}-x{seed}",
        "meta": {},
    }


@pytest.mark.parametrize("c", [1, 3, 5, 8])
def test_random_resized_crop_any_channel_count(c):
    s = {"image": torch.rand(c, 30, 47), "cell_id": "a"}
    out = RandomResizedCrop(16)(s, generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (c, 16, 16)
    assert s["image"].shape == (c, 30, 47)  # input sample not modified


def test_random_resized_crop_respects_scale_and_ratio():
    rrc = RandomResizedCrop(8, scale=(0.8, 1.0), ratio=(0.9, 1.1))
    g = torch.Generator().manual_seed(1)
    h, w = 200, 210  # near-square, so a valid crop always exists
    for _ in range(100):
        top, left, ch, cw = rrc.params(h, w, g)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        # Rounding to whole pixels moves area/ratio by well under 2%.
        assert 0.8 * 0.98 <= ch * cw / (h * w) <= 1.0
        assert 0.9 * 0.98 <= cw / ch <= 1.1 * 1.02


def test_random_resized_crop_falls_back_to_a_centre_crop():
    # A very wide image cannot host a 0.9-1.1 ratio crop of >= 80% area: fallback is central, ratio-clamped.
    top, left, h, w = RandomResizedCrop(8).params(10, 100, torch.Generator().manual_seed(2))
    assert (top, h) == (0, 10) and w == 11 and left == (100 - 11) // 2


def test_generator_makes_augmentation_reproducible():
    t = train_transform(size=24, tps_p=0.5, normalize=False)
    s = _sample()
    a = t(s, generator=torch.Generator().manual_seed(5))["image"]
    b = t(s, generator=torch.Generator().manual_seed(5))["image"]
    assert torch.equal(a, b)
    others = [t(s, generator=torch.Generator().manual_seed(k))["image"] for k in range(6, 10)]
    assert any(not torch.equal(a, o) for o in others)


def test_horizontal_flip():
    s = _sample()
    assert torch.equal(
        RandomHorizontalFlip(1.0)(s, generator=torch.Generator().manual_seed(0))["image"], s["image"].flip(-1)
    )
    assert RandomHorizontalFlip(0.0)(s, generator=torch.Generator().manual_seed(0)) is s


@pytest.mark.parametrize("source", list(SOURCES))
def test_normalize_uses_source_channel_stats(source):
    s = _sample(source)
    out = Normalize()(s)["image"]
    mean, std = normalisation_stats(source)
    back = out * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    assert torch.allclose(back, s["image"], atol=1e-6)


def test_subset_then_normalize_looks_stats_up_by_name():
    s = _sample("hpa")  # microtubules, protein, nucleus, er
    sub = ChannelSubset(["nucleus", "protein"])(s)
    assert sub["channels"] == ("nucleus", "protein")
    assert torch.equal(sub["image"][0], s["image"][2]) and torch.equal(sub["image"][1], s["image"][1])
    out = Normalize()(sub)["image"]
    hpa = SOURCES["hpa"].stats()
    assert torch.allclose(out[0], (s["image"][2] - hpa["nucleus"][0]) / hpa["nucleus"][1])
    custom = Normalize({"hpa": {"nucleus": (0.5, 2.0), "protein": (0.0, 1.0)}})(sub)["image"]
    assert torch.allclose(custom[0], (s["image"][2] - 0.5) / 2.0)
    with pytest.raises(KeyError, match="hpa-x0"):
        Normalize({"cp": {}})(sub)


def test_channel_subset_missing_channel():
    s = _sample("wtc11")
    with pytest.raises(KeyError, match="wtc11-x0.*missing \\['er'\\]"):
        ChannelSubset(["nucleus", "er"])(s)
    kept = ChannelSubset(["er", "nucleus"], missing="skip")(s)
    assert kept["channels"] == ("nucleus",)
    with pytest.raises(KeyError):
        ChannelSubset(["bogus"])
    assert ChannelSubset([5])(s)["channels"] == ("nucleus",)  # vocabulary index 5


def test_eval_transform_wtc_geometry():
    s = _sample("wtc11", hw=(238, 374))
    resized = ResizeShorter(224)(s)["image"]
    assert resized.shape == (3, 224, 352)
    out = eval_transform(224, normalize=False)(s)["image"]
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, resized[:, :, 64:288])
    const = dict(s, image=torch.full((3, 238, 374), 0.25))
    assert torch.allclose(eval_transform(224, normalize=False)(const)["image"], torch.tensor(0.25), atol=1e-6)


def test_center_crop_pads_small_images():
    out = CenterCrop(10)({"image": torch.ones(2, 6, 12), "cell_id": "a"})["image"]
    assert out.shape == (2, 10, 10)
    assert out[:, 0].sum() == 0 and out[:, 2:8].min() == 1


def test_train_transform_preset():
    t = train_transform(size=32, tps_p=0.3)
    kinds = [type(x) for x in t.transforms]
    assert kinds == [ThinPlateSpline, RandomResizedCrop, RandomHorizontalFlip, Normalize]
    out = t(_sample("cp", hw=(50, 50)), generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (5, 32, 32) and out["channels"] == SOURCES["cp"].channels
    assert [type(x) for x in train_transform(hflip=0, normalize=False).transforms] == [RandomResizedCrop]


def test_numpy_uint8_input_and_plain_callables():
    arr = np.full((3, 20, 20), 255, dtype=np.uint8)
    s = dict(_sample("wtc11"), image=arr)

    def plain(sample):  # a user transform without a generator argument
        return dict(sample, label="seen")

    assert not accepts_generator(plain) and accepts_generator(RandomHorizontalFlip())
    out = Compose([ResizeShorter(10), plain])(s, generator=torch.Generator().manual_seed(0))
    assert out["label"] == "seen"
    assert out["image"].dtype == torch.float32 and torch.allclose(out["image"], torch.tensor(1.0))
    with pytest.raises(ValueError, match="wtc11-x0"):
        Normalize()(dict(s, image=torch.zeros(20, 20)))
