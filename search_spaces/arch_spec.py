"""``arch=...`` on the command line: a reference, any timm MobileNet/EfficientNet-family model, an arch.json file
(a bundle's, or a bare Arch), or an Arch as JSON text; optionally at another input size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from nas.core.arch import Arch
from nas.core.errors import ConfigError, first_line
from nas.search_spaces.references import reference_archs


def load_arch(spec: str, resolution: int | None = None) -> Arch:
    """The Arch ``spec`` names, at ``resolution`` when given (else timm's default input size, or the arch's own)."""
    text = spec.strip()
    if text.startswith("{"):
        arch = _from_doc(spec, text)
    elif Path(text).expanduser().is_file():
        arch = _from_doc(spec, Path(text).expanduser().read_text())
    elif text.endswith(".json"):
        raise ConfigError(f"arch={spec}: no such file")
    elif text in (refs := reference_archs()) and resolution is None:
        arch = refs[text]
    else:
        from nas.search_spaces.timm_arch import arch_from_timm  # builds the timm model: only when a timm name is given

        return arch_from_timm(text, resolution)
    return arch if resolution is None else replace(arch, resolution=resolution)


def _from_doc(spec: str, text: str) -> Arch:
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object (an Arch, or a bundle's arch.json), found a {type(doc).__name__}")
        return Arch.from_dict(doc.get("arch", doc))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"arch={spec[:80]} is not a valid Arch: {first_line(e)}") from None
