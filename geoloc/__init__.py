"""geoloc: tell where a photo was taken by matching it against GPS-tagged photos (NetVLAD).

The package root stays import-light on purpose: ``geoloc --help`` must not pay for torch.
Heavy public names are resolved lazily on first attribute access.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "geoloc.models.registry",
    "list_models": "geoloc.models.registry",
    "Database": "geoloc.database",
    "index_photos": "geoloc.indexer",
    "locate": "geoloc.localize",
    "read_photo_meta": "geoloc.photos",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoloc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
