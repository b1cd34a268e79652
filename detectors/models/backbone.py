"""Backbones with a feature pyramid: ``images [B, 3, H, W] -> {level: [B, C, H/2**l, W/2**l]}``.

``tiny`` is a small plain CNN for CPU presets (``tiny_fast``: the same with a leaner first
stage); the ResNets (18/34/50/101) and ResNeXt-101
32x8d are torchvision's (random init unless weights are given: nothing here downloads
unless given a torchvision weight name).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

# The small CNNs of the CPU presets: no weights to load, no stages to freeze.
TINY_BACKBONES = ("tiny", "tiny_fast")


class PretrainedWeightsError(RuntimeError):
    """Weights were asked for but cannot be loaded here (one line, names the source)."""


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Five stride-2 stages of two 3x3 convs: strides 2..32, channels (16, 24, 32, 64, 96).

    ``lean_stem``: the first stage (stride 2, the most pixels) has its stride-2 conv only;
    it costs ~40% of the trunk's time on a CPU (``tiny_fast``)."""

    def __init__(
        self, widths: tuple[int, ...] = (16, 24, 32, 64, 96), *, lean_stem: bool = False
    ) -> None:
        super().__init__()
        stages, c_in = [], 3
        for index, width in enumerate(widths):
            convs = [_conv_bn(c_in, width, 2)]
            if not (lean_stem and index == 0):
                convs.append(_conv_bn(width, width, 1))
            stages.append(nn.Sequential(*convs))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = {level: widths[level - 1] for level in range(1, len(widths) + 1)}

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        feats = {}
        for level, stage in enumerate(self.stages, start=1):
            x = stage(x)
            feats[level] = x
        return feats


class ResNetBackbone(nn.Module):
    """torchvision ResNet / ResNeXt trunk returning C2..C5 as levels 2..5.

    ``frozen_stages``: -1 trains everything, 0 freezes the stem, ``k`` also layers 1..k (the
    papers' R50 recipes freeze the stem and layer 1). ``frozen_bn`` swaps every BatchNorm
    for torchvision's ``FrozenBatchNorm2d`` (fixed statistics and affine; loads the same
    state dict), as detectors fine-tuned from ImageNet weights at small batches do.
    """

    def __init__(
        self, name: str, weights: str = "", *, frozen_stages: int = -1, frozen_bn: bool = False
    ) -> None:
        super().__init__()
        norm_layer = torchvision.ops.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
        if weights:
            _load_weights(resnet, name, weights)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
        self.frozen = [self.stem, *self.layers][: frozen_stages + 1]
        for module in self.frozen:
            module.requires_grad_(False)
        expansion = 1 if name in ("resnet18", "resnet34") else 4
        self.out_channels = {
            2: 64 * expansion,
            3: 128 * expansion,
            4: 256 * expansion,
            5: 512 * expansion,
        }

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        for module in self.frozen:  # frozen stages keep their BatchNorm statistics too
            module.eval()
        return self

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        x = self.stem(x)
        feats = {}
        for level, layer in enumerate(self.layers, start=2):
            x = layer(x)
            feats[level] = x
        return feats


def _load_weights(module: nn.Module, arch: str, weights: str) -> None:
    """Load a local state dict, or a torchvision weight enum name (download may be impossible)."""
    path = Path(weights)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = module.load_state_dict(state, strict=False)
        if len(missing) == len(module.state_dict()):
            raise PretrainedWeightsError(f"{weights}: no tensor matches the {arch} backbone")
        return
    try:
        enum = torchvision.models.get_weight(weights)
    except (ValueError, KeyError):
        raise PretrainedWeightsError(
            f"{weights}: neither a file nor a torchvision weight name"
        ) from None
    try:
        state = enum.get_state_dict(progress=False)
    except Exception as exc:  # network errors differ by platform; the message is what matters
        raise PretrainedWeightsError(
            f"{weights}: cannot download the weights here ({type(exc).__name__}); "
            "pass a local file with model.pretrained=/path/to/weights.pth"
        ) from None
    module.load_state_dict(state)


class BackboneWithFPN(nn.Module):
    """A trunk + FPN producing levels ``min_level..max_level``, each with ``fpn_channels``.

    Levels above the trunk's deepest (e.g. P6, P7 for RetinaNet) come from stride-2 convs
    on P5, as in the RetinaNet paper.
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_channels: dict[int, int],
        *,
        fpn_channels: int,
        min_level: int,
        max_level: int,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        top = max(trunk_channels)
        self.in_levels = [lvl for lvl in range(min_level, min(max_level, top) + 1)]
        extra = max_level - top
        if extra not in (0, 1, 2):
            raise ValueError(f"max_level {max_level} needs {extra} extra levels; at most 2")
        block = LastLevelP6P7(fpn_channels, fpn_channels) if extra > 0 else None
        self.fpn = FeaturePyramidNetwork(
            [trunk_channels[lvl] for lvl in self.in_levels], fpn_channels, extra_blocks=block
        )
        self.levels = list(range(min_level, max_level + 1))
        self.out_channels = fpn_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        feats = self.trunk(images)
        fpn_in = OrderedDict((str(lvl), feats[lvl]) for lvl in self.in_levels)
        outs = list(self.fpn(fpn_in).values())
        return outs[: len(self.levels)]


def build_backbone(
    name: str,
    *,
    pretrained: str,
    fpn_channels: int,
    min_level: int,
    max_level: int,
    frozen_stages: int = -1,
    frozen_bn: bool = False,
) -> BackboneWithFPN:
    trunk: TinyBackbone | ResNetBackbone
    if name in TINY_BACKBONES:
        if pretrained:
            raise PretrainedWeightsError(f"model.pretrained: the {name} backbone has no weights")
        if frozen_stages >= 0 or frozen_bn:
            raise ValueError("model.frozen_stages / model.frozen_bn apply to ResNet backbones")
        trunk = TinyBackbone(lean_stem=name == "tiny_fast")
    else:
        trunk = ResNetBackbone(name, pretrained, frozen_stages=frozen_stages, frozen_bn=frozen_bn)
    return BackboneWithFPN(
        trunk,
        trunk.out_channels,
        fpn_channels=fpn_channels,
        min_level=min_level,
        max_level=max_level,
    )
