import json

import pytest
import timm

from nas.core.arch import Arch, Block
from nas.search_spaces.build import build_model, count_params
from nas.search_spaces.references import REFERENCE_DEFS, _parse, reference_archs


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFS))
def test_reference_matches_timm_parameter_count(name):
    arch = reference_archs()[name]
    assert count_params(build_model(arch)) == count_params(timm.create_model(name))


@pytest.mark.parametrize("name", sorted(REFERENCE_DEFS))
def test_block_strings_round_trip_through_the_parser(name):
    arch = reference_archs()[name]
    for stage in arch.stages:
        for block in stage:
            assert _parse(block.block_string()) == block


def test_json_round_trip_keeps_equality_and_hash():
    arch = reference_archs()["efficientnet_b0"]
    back = Arch.from_json(arch.to_json())
    assert back == arch
    assert back.hash == arch.hash
    assert json.loads(arch.to_json())["stages"][1][0]["kernel"] == 3


def test_hash_ignores_name_and_no_op_options():
    mnas = reference_archs()["mnasnet_100"]
    # mnasnet's `noskip` cannot apply (channels change), so the network equals one without it.
    stages = list(mnas.stages)
    stages[0] = (Block("ds", 1, 3, 1, 1.0, 16),)
    stages[-1] = (Block("ir", 1, 3, 1, 6.0, 320),)
    same = Arch(family=mnas.family, stages=tuple(stages), stem_size=32, num_features=1280, act="relu")
    assert same.hash == mnas.hash
    # An explicit activation equal to the model's is the same network too.
    b0 = reference_archs()["efficientnet_b0"]
    explicit = Arch(family=b0.family, stem_size=32, num_features=1280, act="swish",
                    stages=tuple(tuple(Block(**{**blk.__dict__, "act": "swish"}) for blk in s) for s in b0.stages))
    assert explicit.hash == b0.hash


def test_hash_changes_with_the_network():
    b0 = reference_archs()["efficientnet_b0"]
    wider = Arch(**{**b0.__dict__, "width": 1.25})
    assert wider.hash != b0.hash


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="block kind"):
        Block("xx", 1, 3, 1, 1.0, 16)
    with pytest.raises(ValueError, match="family"):
        Arch(family="resnet", stages=((Block("ds", 1, 3, 1, 1.0, 16),),), stem_size=16, num_features=64,
             act="relu")
