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
    "index_photos": "geoloc.indexing.run",
    "locate": "geoloc.locating.locator",
    "read_meta": "geoloc.photos",
}
#: Names kept for the API as 0.1.0 documented it, each mapped to the name it now has.
_ALIASES = {"read_photo_meta": "read_meta"}

__all__ = ["__version__", *_LAZY, *_ALIASES]


def __getattr__(name: str):
    target = _ALIASES.get(name, name)
    module = _LAZY.get(target)
    if module is None:
        raise AttributeError(f"module 'geoloc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), target)
