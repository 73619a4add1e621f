"""Parameter counts of the paper's models with convnext_tiny reproduce Table 1 (to 0.01M)."""

from __future__ import annotations

import pytest

import tests.chammi_models.zoo_helpers  # noqa: F401  (sets one torch thread)
from chammi_models import create_model
from chammi_models.zoo.base import PAPER_CLASSES, PAPER_NUM_CLASSES
from chammi_models.zoo.trunk import CONVNEXT_TINY_PARAMS, ConvNeXtTrunk, count_parameters, make_stem_conv

#: Table 1 of the paper (millions of parameters, proxies included).
TABLE_1 = {
    "channel_replication": 27.82,
    "fixed_channels": 83.47,
    "depthwise": 27.84,
    "slice_param": 27.86,
    "target_param": 27.84,
    "template_mixing": 28.02,
    "hypernet": 28.29,
}


def test_bare_trunk_is_timm_convnext_tiny_without_head():
    trunk = ConvNeXtTrunk("convnext_tiny")
    assert count_parameters(trunk) + count_parameters(make_stem_conv(3, trunk)) == CONVNEXT_TINY_PARAMS
    assert trunk.num_features == 768 and trunk.stem_dim == 96 and trunk.patch_size == 4


def test_paper_class_count():
    assert PAPER_CLASSES == {"wtc11": 6, "hpa": 4, "cp": 4} and PAPER_NUM_CLASSES == 14


@pytest.mark.parametrize("name", sorted(TABLE_1))
def test_table_1_parameter_count(name):
    model = create_model(name, backbone="convnext_tiny")
    assert round(count_parameters(model) / 1e6, 2) == TABLE_1[name]


def test_counts_follow_the_options():
    """The count test is not vacuous: other options give other counts."""
    default = count_parameters(create_model("template_mixing", backbone="convnext_atto"))
    fewer = count_parameters(create_model("template_mixing", backbone="convnext_atto", num_templates=16))
    assert default - fewer == 40 * (128 - 16) * 16 + 8 * (128 - 16)
    no_proxies = count_parameters(create_model("hypernet", backbone="convnext_atto", num_classes=0))
    with_proxies = count_parameters(create_model("hypernet", backbone="convnext_atto"))
    assert with_proxies - no_proxies == 14 * 320
