"""Models: NetVLAD and baseline poolings on VGG-16, AlexNet and EfficientNet-Lite0 backbones,
the registry of named models, and their weights.

The registry names (``list_models``, ``get_entry``, ``Preprocess``…) import without torch;
``GeolocModel``, ``build_model`` and the layers are resolved on first use.
"""

from __future__ import annotations

from geoloc.models.preprocess import Preprocess
from geoloc.models.registry import (
    DEFAULT_MODEL,
    OFFLINE_MODEL,
    InstalledWeights,
    ModelEntry,
    WeightsSource,
    download_model,
    get_entry,
    is_cached,
    list_models,
    load_model,
    model_key,
    pick_device,
    register_model,
)

_LAZY = {
    "GeolocModel": "geoloc.models.model",
    "build_model": "geoloc.models.model",
    "save_model_file": "geoloc.models.modelfile",
    "load_model_file": "geoloc.models.modelfile",
    "read_model_metadata": "geoloc.models.modelfile",
    "NetVLAD": "geoloc.models.netvlad",
    "MaxPool": "geoloc.models.netvlad",
    "AvgPool": "geoloc.models.netvlad",
    "GeM": "geoloc.models.netvlad",
    "Whitening": "geoloc.models.netvlad",
    "kmeans": "geoloc.models.netvlad",
    "EfficientNetLite0": "geoloc.models.backbones",
}

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODEL",
    "InstalledWeights",
    "ModelEntry",
    "Preprocess",
    "WeightsSource",
    "download_model",
    "get_entry",
    "is_cached",
    "list_models",
    "load_model",
    "model_key",
    "pick_device",
    "register_model",
    "GeolocModel",
    "build_model",
    "save_model_file",
    "load_model_file",
    "read_model_metadata",
    "NetVLAD",
    "MaxPool",
    "AvgPool",
    "GeM",
    "Whitening",
    "kmeans",
    "EfficientNetLite0",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoloc.models' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
