"""nas.search_spaces.timm_arch: any timm MobileNet/EfficientNet model read into an Arch that rebuilds it exactly."""

from dataclasses import replace

import pytest
import timm
from timm.models._efficientnet_builder import EfficientNetBuilder

from nas.core.arch import Arch
from nas.core.errors import ArchError
from nas.search_spaces.build import build_model, count_params
from nas.search_spaces.references import _parse, reference_archs
from nas.search_spaces.timm_arch import arch_from_timm

EXPRESSIBLE = [
    "efficientnet_b1",
    "mobilenetv2_140",
    "mnasnet_100",
    "mobilenetv3_large_100",
    "efficientnet_lite0",
    "tf_efficientnet_b0",  # 'same' padding and BN eps 1e-3 carry no parameters
    "tf_efficientnetv2_b0",  # cn and er (FusedMBConv) blocks
    "tf_mobilenetv3_small_100",
]


@pytest.mark.parametrize("name", EXPRESSIBLE)
def test_arch_rebuilds_timms_exact_parameter_count(name):
    arch = arch_from_timm(name)
    assert count_params(build_model(arch, num_classes=1000)) == count_params(timm.create_model(name, pretrained=False))
    assert arch.name == name and arch.width == 1.0
    assert arch.family == ("mobilenetv3" if "mobilenetv3" in name else "efficientnet")
    assert Arch.from_json(arch.to_json()) == arch
    for stage in arch.stages:  # block strings a user can read, copy and parse back
        for block in stage:
            assert _parse(block.block_string()) == block


@pytest.mark.parametrize("name", sorted(reference_archs()))
def test_references_read_back_to_the_same_network(name):
    # Same hash: measurements cached for a reference are found again when the network comes from timm.
    arch = arch_from_timm(name)
    assert arch.hash == reference_archs()[name].hash


def test_exact_ratios_and_repeats_are_kept():
    large = arch_from_timm("mobilenetv3_large_100")
    assert [b.expansion for b in large.stages[3]] == [6.0, 2.5, 2.3]
    assert [b.repeats for b in large.stages[3]] == [1, 1, 2]
    small = arch_from_timm("mobilenetv3_small_100")
    assert small.stages[1][1].expansion == 3.67
    assert arch_from_timm("efficientnet_b1").stages[5][0].block_string() == "ir_r5_k5_s2_e6_c192_se0.25"


def test_resolution_defaults_to_timms_and_can_be_set():
    assert arch_from_timm("efficientnet_b1").resolution == 240
    assert arch_from_timm("efficientnet_b1", resolution=320).resolution == 320
    assert arch_from_timm("mobilenetv2_140").resolution == 224


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("mobilenetv4_conv_small", "UniversalInvertedResidual"),
        ("mixnet_m", "mixed kernels"),
        ("tf_efficientnetv2_s", "residual"),
        ("resnet50", "ResNet"),
    ],
)
def test_inexpressible_model_is_one_line_naming_it(name, why):
    with pytest.raises(ArchError) as e:
        arch_from_timm(name)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"timm model {name!r} cannot be expressed as an Arch" in msg and why in msg
    assert EfficientNetBuilder._make_block.__name__ == "_make_block"  # timm left as it was


@pytest.mark.parametrize(("name", "hint"), [("efficientnet_b9", "'efficientnet_b8'"), ("foo", "list_models")])
def test_unknown_name_is_one_line(name, hint):
    with pytest.raises(ArchError) as e:
        arch_from_timm(name)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"unknown timm model {name!r}") and hint in msg


def test_the_rebuild_check_refuses_an_arch_that_differs():
    import torch

    from nas.search_spaces.timm_arch import _create, _verify

    model, _ = _create("mobilenetv3_large_100", timm, torch)
    arch = arch_from_timm("mobilenetv3_large_100")
    stages = ((replace(arch.stages[0][0], act="swish"),), *arch.stages[1:])  # timm's first block is relu
    with pytest.raises(ArchError, match=r"block 0\.0 .*'relu'.*'swish'"):
        _verify("mobilenetv3_large_100", model, replace(arch, stages=stages), torch)
