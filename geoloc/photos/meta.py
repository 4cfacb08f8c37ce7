"""What a photo's EXIF says about where, when and which way up it was taken.

A wrong position is worse than none: it would put a photo in the database as ground truth for a
place it never saw. So GPS values are parsed defensively (devices write every variant the EXIF
standard allows and several it does not) and anything doubtful becomes "no position", with the
reason kept for the user. Reading metadata never fails because of bad EXIF; only a file that
cannot be opened at all raises. Here the tags are read (ExifRead, else Pillow; a RAW's embedded
JPEG; the sidecars); what their values mean is :mod:`geoloc.photos.tags`'.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from geoloc.errors import PhotoError
from geoloc.geo import is_valid_position
from geoloc.photos.decode import exif_of, open_error_reason, open_image, orientation_of
from geoloc.photos.raw import CR3, RAF, RawFile, inspect_raw, is_raw_name, preview_bytes
from geoloc.photos.sidecars import XMP, Sidecar, find_sidecars, sidecar_key
from geoloc.photos.tags import (
    GPS_IFD_POINTER,
    GPS_LATITUDE,
    GPS_LONGITUDE,
    GPS_TAG_NUMBERS,
    ORIENTATION,
    Tags,
    camera_of,
    capture_time_and_tag,
    gps_utc_time,
    gps_accuracy,
    gps_altitude,
    gps_position,
    is_empty,
    orientation_value,
    written_by_geoloc,
)
from geoloc.photos.takeout import read_takeout
from geoloc.photos.xmp import embedded_xmp, read_xmp

#: ``gps_source`` of a position read from the XMP packet inside the photo (not a sidecar's).
XMP_EMBEDDED = "xmp-embedded"


@dataclass
class PhotoMeta:
    """A photo's position, capture time and geometry as its EXIF gives them.

    ``width``/``height`` are the stored size before the EXIF orientation is applied
    (``orientation`` 5–8 means the upright photo is ``height`` wide). ``alt`` and
    ``gps_accuracy_m`` belong to the position and are ``None`` whenever it is.
    ``no_position_reason`` says, for an unlocated photo, why (``"no GPS data"``,
    ``"position (0, 0)"`` …), so that users can see which photos need ``geoloc locate``.
    ``gps_source`` says where the position came from: ``"exif"`` (the file's own metadata,
    RAW files included), ``"xmp-embedded"`` (the XMP packet inside the file), ``"xmp"`` or
    ``"takeout"`` (a sidecar); each only when the sources before it give no usable position;
    ``None`` without one. ``sidecars`` lists the sidecars that were looked
    at (only for photos without an EXIF position), so that the database can notice when they
    change.
    """

    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    taken_at: str | None = None
    gps_accuracy_m: float | None = None
    orientation: int = 1
    width: int | None = None
    height: int | None = None
    no_position_reason: str | None = None
    gps_source: str | None = None
    sidecars: list[Sidecar] = field(default_factory=list)
    #: Whether the file's own EXIF holds GPS coordinates, usable or not: None, "geoloc" (an
    #: estimate ``--write-exif`` wrote) or "other" (a camera's, a photo manager's). What
    #: ``--write-exif`` may replace without ``--overwrite`` depends on it.
    exif_gps: str | None = None
    #: The camera body (EXIF Make, Model, serial number) and the UTC time of its GPS fix: what
    #: a trip's clocks are solved from (:mod:`geoloc.trips`).
    camera_make: str | None = None
    camera_model: str | None = None
    camera_serial: str | None = None
    gps_time: str | None = None
    #: Which EXIF tag ``taken_at`` came from: "original", "digitized" or "modified" (IFD0
    #: DateTime alone: an edit's time as often as the capture's; trips leave it out).
    time_tag: str | None = None

    @property
    def located(self) -> bool:
        return is_valid_position(self.lat, self.lon)

    @property
    def sidecar_key(self) -> str | None:
        """The fingerprint of ``sidecars`` the database keeps (:func:`sidecars.sidecar_key`)."""
        return sidecar_key(self.sidecars)


def read_meta(path: str | os.PathLike, *, sidecars: bool = True, data: bytes | None = None) -> PhotoMeta:
    """Position, time, accuracy, orientation and size of one photo.

    GPS and time come from ExifRead; when ExifRead finds no EXIF at all (or fails on the file),
    Pillow's reader (with pillow-heif for HEIC) is asked instead. A RAW file's size and
    orientation are those of its embedded preview and its own IFD0 (:mod:`geoloc.photos.raw`).
    When the EXIF gives no usable position, the XMP packet inside the file is asked (Adobe's
    software keeps a position there), then, when ``sidecars`` is true, the photo's XMP and
    Google Takeout sidecars, in the order of :mod:`geoloc.photos.sidecars`: what the file
    holds itself always wins, EXIF first. ``data``: the file's bytes, already read (see
    :func:`load_image`). Raises :class:`PhotoError` only when the file cannot be opened.
    """
    path = Path(path)
    try:
        fh = io.BytesIO(data) if data is not None else open(path, "rb")
    except OSError as exc:
        raise PhotoError(path, open_error_reason(exc)) from None
    with fh:
        raw = _raw_of(fh, path)
        source: BinaryIO = fh
        if raw is not None and raw.kind == RAF and raw.preview is not None:
            source = io.BytesIO(preview_bytes(fh, raw.preview))  # the EXIF is the JPEG's
        if raw is not None and raw.kind == CR3:
            ifd0, exif, gps = raw.ifd0, raw.exif, raw.gps
        else:
            ifd0, exif, gps = _exifread_tags(source)
        meta = PhotoMeta()
        image = None if raw is not None and raw.kind != RAF else _header(source, path)
        if raw is not None and raw.kind != RAF:
            if raw.preview is not None:
                meta.width, meta.height = raw.preview.width, raw.preview.height
            meta.orientation = raw.orientation or 1
        elif image is not None:
            meta.width, meta.height = image.size
            meta.orientation = orientation_of(image)
            if not (ifd0 or exif or gps):
                ifd0, exif, gps = _pillow_tags(image)
        elif ifd0:
            meta.orientation = orientation_value(ifd0.get(ORIENTATION))
        meta.taken_at, meta.time_tag = capture_time_and_tag(ifd0, exif)
        meta.camera_make, meta.camera_model, meta.camera_serial = camera_of(ifd0, exif)
        meta.gps_time = gps_utc_time(gps)
        lat, lon, reason = gps_position(gps)
        if gps and not (is_empty(gps.get(GPS_LATITUDE)) and is_empty(gps.get(GPS_LONGITUDE))):
            meta.exif_gps = "geoloc" if written_by_geoloc(gps) else "other"
            if meta.exif_gps == "geoloc":
                reason = "its EXIF GPS was written by geoloc (an estimate, never read back as a position)"
        if not gps:
            if GPS_IFD_POINTER in ifd0:
                reason = "empty GPS block"
            elif not (ifd0 or exif):
                reason = "no EXIF data"
        if reason is None:
            meta.lat, meta.lon = lat, lon
            meta.alt = gps_altitude(gps)
            meta.gps_accuracy_m = gps_accuracy(gps)
            meta.gps_source = "exif"
        else:
            meta.no_position_reason = reason
    notes: list[str] = []
    packet = embedded_xmp(image.info) if image is not None and not meta.located else None
    if packet is not None and (packet.tags or packet.error or packet.by_geoloc):
        _take_position(meta, packet, XMP_EMBEDDED, "its embedded XMP", notes)
    if sidecars and not meta.located:
        _position_from_sidecars(path, meta, notes)
    if notes and not meta.located:
        meta.no_position_reason = "; ".join([meta.no_position_reason or "no position", *notes])
    return meta


def _raw_of(fh: BinaryIO, path: Path) -> RawFile | None:
    """The RAW container of a file named like a RAW, or None (a JPEG named .dng is a JPEG)."""
    if not is_raw_name(path):
        return None
    try:
        raw = inspect_raw(fh)
    except OSError:
        return None
    return raw if raw.kind is not None else None


def _position_from_sidecars(path: Path, meta: PhotoMeta, notes: list[str]) -> None:
    """The first usable position among the photo's sidecars, by the rules of EXIF GPS.

    What each sidecar lacks goes to ``notes``, so ``geoloc photos --unlocated`` can say why a
    photo whose sidecar seems to hold a position still has none.
    """
    meta.sidecars = find_sidecars(path)
    for sidecar in meta.sidecars:
        if sidecar.kind == XMP:
            read = read_xmp(sidecar.path)
        else:
            read = read_takeout(sidecar.path, sidecar.title)
        if _take_position(meta, read, sidecar.kind, sidecar.path.name, notes):
            return


def _take_position(meta: PhotoMeta, read, source: str, name: str, notes: list[str]) -> bool:
    """Whether ``read`` (an XMP or Takeout reading) gave ``meta`` its position, by the rules of
    EXIF GPS; if not, why not is added to ``notes``. An XMP packet geoloc wrote holds an
    estimate and is never read back as a position."""
    if getattr(read, "by_geoloc", False):
        notes.append(f"{name} was written by geoloc (an estimate, never read back as a position)")
        return False
    if read.error:
        notes.append(f"{name}: {read.error}")
        return False
    gps = {GPS_TAG_NUMBERS[k]: v for k, v in read.tags.items() if k in GPS_TAG_NUMBERS}
    lat, lon, reason = gps_position(gps)
    if reason is not None:
        notes.append(f"{name}: {reason}")
        return False
    meta.lat, meta.lon = lat, lon
    meta.alt = gps_altitude(gps)
    meta.gps_accuracy_m = gps_accuracy(gps)
    meta.gps_source = source
    meta.no_position_reason = None
    return True


# --- reading the tags -------------------------------------------------------------------------


def _quiet_exifread() -> None:
    # ExifRead logs "File format not recognized." and similar through logging's last-resort
    # handler straight onto stderr; geoloc reports per-file problems itself.
    logger = logging.getLogger("exifread")
    if logger.level < logging.ERROR:
        logger.setLevel(logging.ERROR)


def _exifread_tags(fh: BinaryIO) -> tuple[Tags, Tags, Tags]:
    """IFD0, EXIF and GPS tags by number; empty dicts when ExifRead finds nothing or fails."""
    import exifread

    _quiet_exifread()
    ifd0: Tags = {}
    exif: Tags = {}
    gps: Tags = {}
    try:
        fh.seek(0)
        # details=False: no MakerNotes, which are where most corrupt EXIF lives.
        tags = exifread.process_file(fh, details=False, extract_thumbnail=False)
    except Exception:  # ExifRead on broken files: struct, index, type, recursion errors …
        return ifd0, exif, gps
    for key, tag in tags.items():
        number = getattr(tag, "tag", None)
        if not isinstance(key, str) or not isinstance(number, int):
            continue
        group, _, name = key.partition(" ")
        if group == "Image":
            ifd0[number] = tag.values
        elif group == "EXIF" and not name.startswith("SubIFD"):
            exif[number] = tag.values
        elif group == "GPS":
            gps[number] = tag.values
    return ifd0, exif, gps


def _header(fh: BinaryIO, path: Path):
    """The Pillow image with its header parsed (no pixels), or None if Pillow cannot read it."""
    try:
        fh.seek(0)
        return open_image(fh, path, max_pixels=sys.maxsize)
    except Exception:
        return None


def read_gps_block(path: str | os.PathLike) -> Tags:
    """A (non-RAW) file's EXIF GPS tags by number, read as :func:`read_meta` reads them
    (ExifRead, else Pillow): what ``--write-exif`` checks its own writes with."""
    path = Path(path)
    with open(path, "rb") as fh:
        ifd0, exif, gps = _exifread_tags(fh)
        if not (ifd0 or exif or gps):
            image = _header(fh, path)
            if image is not None:
                _, _, gps = _pillow_tags(image)
    return gps


def _pillow_tags(image) -> tuple[Tags, Tags, Tags]:
    try:
        exif = exif_of(image)
        return dict(exif), dict(exif.get_ifd(0x8769)), dict(exif.get_ifd(0x8825))
    except Exception:
        return {}, {}, {}
