"""The switches geoloc reads from the environment, each read at the moment it matters.

Read now rather than at import: tests, notebooks and long-lived processes change them after
``import geoloc``, and ``huggingface_hub`` itself freezes ``HF_HUB_OFFLINE`` when it is imported.
"""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}

#: Every variable that means "do not download anything". Each is read on its own, so that
#: ``HF_HUB_OFFLINE=0`` set by one tool cannot hide ``GEOLOC_OFFLINE=1`` set by another.
OFFLINE_VARIABLES = ("GEOLOC_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def flag(name: str) -> bool:
    """True when the variable is set to 1, true, yes or on (any case); anything else is off."""
    return (os.environ.get(name) or "").strip().lower() in _TRUE


def offline() -> bool:
    """No downloads: neither from the Hugging Face Hub nor torchvision's ImageNet weights."""
    return any(flag(name) for name in OFFLINE_VARIABLES)


def debug() -> bool:
    """``GEOLOC_DEBUG=1``: let tracebacks through, for bug reports."""
    return flag("GEOLOC_DEBUG")
