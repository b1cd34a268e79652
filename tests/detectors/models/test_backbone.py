"""The tiny CNNs of the CPU presets."""

from __future__ import annotations

import torch
from torch import nn

from detectors.models.backbone import TinyBackbone


def test_the_lean_stem_keeps_every_level_and_drops_one_conv() -> None:
    full, lean = TinyBackbone(), TinyBackbone(lean_stem=True)
    x = torch.rand(2, 3, 64, 64)
    out_full, out_lean = full(x), lean(x)
    assert {k: v.shape for k, v in out_full.items()} == {k: v.shape for k, v in out_lean.items()}
    convs = [sum(isinstance(m, nn.Conv2d) for m in b.modules()) for b in (full, lean)]
    assert convs == [10, 9]
    assert sum(isinstance(m, nn.Conv2d) for m in lean.stages[0].modules()) == 1
