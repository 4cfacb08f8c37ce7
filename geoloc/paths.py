"""Where geoloc keeps its files.

One root, ``GEOLOC_HOME``, so that tests, containers and users with several setups can point
everything (databases, converted weights) somewhere else with a single variable.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "geoloc"


def geoloc_home() -> Path:
    env = os.environ.get("GEOLOC_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def databases_dir() -> Path:
    return geoloc_home() / "databases"


def default_db() -> Path:
    return databases_dir() / "default"


def weights_dir() -> Path:
    """Converted (safetensors) weights; the raw downloads stay in the Hugging Face cache."""
    return geoloc_home() / "weights"


def cache_dir() -> Path:
    return geoloc_home() / "cache"
