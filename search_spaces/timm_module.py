"""The export bundle's ``timm_register.py``: plain Python that registers the exported architecture with timm.

The training team's tools take a timm model name (``timm.create_model(NAME)``, timm's ``train.py --model NAME``).
The generated file carries the block strings and needs only torch and timm, not this project.
"""

from __future__ import annotations

import math
import re

import timm

from nas.core.arch import Arch


def timm_name(target: str, budget_ms: float) -> str:
    """``nas_cpu_10ms``; a budget's decimal point becomes ``p`` (``nas_cpu_7p5ms``): timm reads a dot in a model
    name as a pretrained tag, and the entry point must be a Python identifier."""
    return re.sub(r"\W", "_", f"nas_{target}_{budget_ms:g}ms".replace(".", "p"))


# The data pipeline the registered model declares (timm's default_cfg: what train.py and validate.py use), and
# the model card states: ImageNet's statistics, timm's EfficientNet evaluation recipe.
PREPROCESSING = {"interpolation": "bicubic", "crop_pct": 0.875, "mean": (0.485, 0.456, 0.406),
                 "std": (0.229, 0.224, 0.225)}


def preprocessing(arch: Arch) -> dict[str, object]:
    """The preprocessing the exported model expects: input size (the deployment resolution) and PREPROCESSING."""
    return {"input_size": [3, arch.resolution, arch.resolution], **{k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in PREPROCESSING.items()}}


def module_source(arch: Arch, num_classes: int, name: str, about: str) -> str:
    """The module's text: it registers ``name`` (timm's ``register_model`` takes the entry point's ``__name__``)
    with a pretrained config at the deployment resolution, so timm's data pipeline uses that input size."""
    res = arch.resolution
    pool = math.ceil(res / 32)
    if arch.family == "mobilenetv3":
        create = "_create_mnv3"
        imports = "from timm.models.mobilenetv3 import _create_mnv3"
        se = ("    # MobileNetV3's squeeze-excite: hard-sigmoid gate, ReLU inside (as timm's own mobilenetv3 models)\n"
              "    kwargs.setdefault('se_layer', partial(SqueezeExcite, gate_layer='hard_sigmoid', "
              "force_act_layer=nn.ReLU, rd_round_fn=round_channels))\n")
    else:
        create, imports, se = "_create_effnet", "from timm.models.efficientnet import _create_effnet", ""
    blocks = "[\n" + "".join(f"    {stage!r},\n" for stage in arch.block_strings()) + "]"
    return f'''"""{about}

Importing this file registers the timm model ``{name}`` ({arch.family}, {res} px, {num_classes} classes):

    import timm
    import timm_register  # this file, on sys.path
    model = timm.create_model("{name}", num_classes={num_classes})

timm's train.py (in a clone of github.com/huggingface/pytorch-image-models) builds its model by name and has no
option to import a module first; run it through this file, which registers the name and then runs the script
with the remaining arguments (torchrun works the same way):

    python timm_register.py path/to/pytorch-image-models/train.py DATA_DIR --model {name} --num-classes {num_classes}

Needs only torch and timm (written for timm {timm.__version__}); no weights are shipped (pretrained=False).
"""

import runpy
import sys
from functools import partial

from torch import nn
from timm.models import register_model
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, round_channels
{imports}

NAME = {name!r}
ARCH_HASH = {arch.hash!r}
BLOCK_STRINGS = {blocks}
STEM_SIZE = {arch.stem_size}
NUM_FEATURES = {arch.num_features}
WIDTH = {arch.width!r}
ACT = {arch.act!r}
RESOLUTION = {res}
NUM_CLASSES = {num_classes}

# Read by timm's register_model: input size and normalisation for timm's data pipeline (train.py, validate.py).
default_cfgs = {{NAME: dict(
    url="", num_classes=NUM_CLASSES, input_size=(3, RESOLUTION, RESOLUTION), pool_size=({pool}, {pool}),
    crop_pct={PREPROCESSING["crop_pct"]}, interpolation={PREPROCESSING["interpolation"]!r},
    mean={PREPROCESSING["mean"]}, std={PREPROCESSING["std"]},
    first_conv="conv_stem", classifier="classifier")}}


@register_model
def {name}(pretrained=False, **kwargs):
    """The exported architecture; keyword arguments go to timm's model class (drop_rate, drop_path_rate, ...)."""
    kwargs.setdefault("num_features", NUM_FEATURES)
{se}    return {create}(
        NAME, pretrained, block_args=decode_arch_def(BLOCK_STRINGS), stem_size=STEM_SIZE,
        round_chs_fn=partial(round_channels, multiplier=WIDTH), act_layer=resolve_act_layer(kwargs, ACT), **kwargs)


def _run_script(argv):
    """Run a script (timm's train.py) as __main__ with the name registered: the same timm registry is shared."""
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: python {{sys.argv[0]}} path/to/train.py ARGS... (registers {{NAME}} first)")
    _run_script(sys.argv[1:])
'''
