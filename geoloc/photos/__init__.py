"""Photos: finding them on disk, reading what their EXIF says, decoding their pixels.

Small modules, one job each: :mod:`geoloc.photos.discovery` walks folders,
:mod:`geoloc.photos.meta` reads a photo's metadata (its EXIF, else its sidecars), which
:mod:`geoloc.photos.tags` interprets (GPS, capture time, orientation), and
:mod:`geoloc.photos.decode` turns a file into an upright RGB image of the size the network wants. Everything a caller needs
is re-exported here so that ``from geoloc.photos import discover, read_meta, load_image`` keeps
working whatever the layout underneath.
"""

from __future__ import annotations

from geoloc.photos.decode import DEFAULT_MAX_PIXELS, load_image, max_pixels_limit
from geoloc.photos.discovery import SUFFIXES, discover, expand_globs, is_photo_name
from geoloc.photos.meta import PhotoMeta, read_meta

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUFFIXES",
    "PhotoMeta",
    "discover",
    "expand_globs",
    "is_photo_name",
    "load_image",
    "max_pixels_limit",
    "read_meta",
]
