"""GPS into a photo's own EXIF, through exiftool or exiv2: never by a hand-written file writer.

A photo is the user's original, so every write goes the same careful way (:func:`write_gps`):
the tool writes a *new* file beside the photo, geoloc reads the new file back (its GPS must be
the estimate, its decoded pixels identical to the photo's), and only then does one rename
replace the photo. A crash at any moment leaves the original or the finished new file, and at
worst a temporary file that the journal (:mod:`geoloc.exif_journal`) names for clean-up.

Two backends, tried in order: exiftool when it is installed (it writes JPEG, TIFF, PNG, WebP
and HEIC safely), else pyexiv2 (the exiv2 library, ``pip install 'geoloc[exif]'``; JPEG, TIFF,
PNG and WebP: exiv2 does not write HEIC). RAW files are never written to: photo managers keep
their edits of RAW files in sidecars, which ``--xmp`` writes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from geoloc.errors import GeolocError
from geoloc.photos.pixels import PixelError, same_pixels
from geoloc.photos.tags import PROCESSING_METHOD  # the signature photos.meta reads back
#: Set to "exiftool" or "pyexiv2" to choose the backend (the tests run both).
BACKEND_ENV = "GEOLOC_EXIF_WRITER"
#: The temporary file's name: hidden, marked as geoloc's, same suffix as the photo, and short
#: (``.geoloc-tmp-XXXXXXXX.jpg``): a photo whose own name is near the file system's 255 bytes
#: must still get one.
TEMP_MARK = ".geoloc-tmp-"
#: Read-back tolerance in degrees (about 1 cm): EXIF stores degrees as rationals.
TOLERANCE_DEG = 1e-7


class WriteError(GeolocError):
    """One photo could not be written; it is unchanged (the message says why)."""


@dataclass(frozen=True)
class GpsFix:
    """What is written: the estimate as EXIF GPS tags."""

    lat: float
    lon: float
    radius_m: float

    def check(self) -> None:
        if not (math.isfinite(self.lat) and math.isfinite(self.lon) and -90 <= self.lat <= 90
                and -180 <= self.lon <= 180 and math.isfinite(self.radius_m) and self.radius_m >= 0):
            raise ValueError(f"not a position to write: {self.lat}, {self.lon} ± {self.radius_m} m")


class Backend(Protocol):
    name: str
    version: str
    suffixes: frozenset[str]

    def gps_tags(self, photo: Path) -> dict[str, str]:
        """The photo's GPS tags now, in this backend's own names (for the undo record)."""

    def write(self, src: Path, dst: Path, fix: GpsFix | None, restore: dict[str, str] | None = None) -> None:
        """Write ``dst`` (which does not exist) as ``src`` with its GPS tags replaced: by
        ``fix``, or by ``restore`` (tags as :meth:`gps_tags` gave them; empty: none at all)."""

    def close(self) -> None:
        """Let go of what the backend holds (exiftool's process)."""


# --------------------------------------------------------------------------------------------
# exiftool
# --------------------------------------------------------------------------------------------


class Exiftool:
    """Phil Harvey's exiftool, the reference writer of photo metadata, as one long-lived process.

    exiftool is a Perl program whose start-up costs a few tenths of a second; started once
    per photo that was an hour per 10,000 photos. So it runs in its ``-stay_open`` mode: each
    command's arguments go to its standard input, one per line, and ``{readyN}`` on both
    outputs marks the command's end. Arguments that cannot be one line (a file name with a line
    break) go to a one-off exiftool instead.
    """

    name = "exiftool"
    suffixes = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp", ".heic", ".heif"})

    def __init__(self, program: str):
        self.program = program
        self._proc: subprocess.Popen | None = None
        self._count = 0
        self.version = self._once(["-ver"]).strip()

    def _once(self, args: list[str]) -> str:
        try:
            done = subprocess.run([self.program, *args], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WriteError(f"exiftool could not run: {exc}") from None
        if done.returncode != 0:
            message = " ".join((done.stderr or done.stdout).split()) or f"exit status {done.returncode}"
            raise WriteError(f"exiftool: {message}")
        return done.stdout

    def _run(self, args: list[str]) -> str:
        if any("\n" in a or "\r" in a for a in args):
            return self._once(args)
        if self._proc is None or self._proc.poll() is not None:
            try:
                self._proc = subprocess.Popen(
                    [self.program, "-stay_open", "True", "-@", "-"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                    errors="surrogateescape", preexec_fn=_die_with_parent())
            except OSError as exc:
                raise WriteError(f"exiftool could not run: {exc}") from None
            # A backend dropped without close() still lets its exiftool go.
            self._finalizer = weakref.finalize(self, _stop, self._proc)
        self._count += 1
        ready = f"{{ready{self._count}}}"
        try:
            self._proc.stdin.write("\n".join(["-echo4", ready, *args, f"-execute{self._count}"]) + "\n")
            self._proc.stdin.flush()
            out = self._until(self._proc.stdout, ready)
            err = self._until(self._proc.stderr, ready)
        except (OSError, EOFError) as exc:
            self.close()
            raise WriteError(f"exiftool stopped: {exc}") from None
        errors = [line for line in err.splitlines() if line.startswith("Error")]
        if errors:
            raise WriteError("exiftool: " + " ".join(" ".join(errors).split()))
        return out

    @staticmethod
    def _until(stream, ready: str) -> str:
        lines = []
        while True:
            line = stream.readline()
            if not line:
                raise EOFError("no answer")
            if line.rstrip("\r\n") == ready:
                return "".join(lines)
            lines.append(line)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            self._finalizer.detach()
            _stop(proc)

    def __enter__(self) -> "Exiftool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def gps_tags(self, photo: Path) -> dict[str, str]:
        out = self._run(["-j", "-n", "-EXIF:GPS:all", _absolute(photo)])
        data = json.loads(out)[0] if out.strip() else {}
        return {k: _exiftool_text(v) for k, v in data.items() if k != "SourceFile"}

    def write(self, src: Path, dst: Path, fix: GpsFix | None, restore: dict[str, str] | None = None) -> None:
        # -gps:all= first: the new block replaces the old one whole, nothing of it lingers.
        args = ["-n", "-q", "-q", "-o", _absolute(dst), "-EXIF:GPS:all="]
        if fix is not None:
            tags = {
                "GPSVersionID": "2 3 0 0",
                "GPSLatitude": f"{abs(fix.lat):.9f}",
                "GPSLatitudeRef": "N" if fix.lat >= 0 else "S",
                "GPSLongitude": f"{abs(fix.lon):.9f}",
                "GPSLongitudeRef": "E" if fix.lon >= 0 else "W",
                "GPSMapDatum": "WGS-84",
                "GPSHPositioningError": f"{fix.radius_m:.1f}",
                "GPSProcessingMethod": PROCESSING_METHOD,
            }
        else:
            tags = dict(restore or {})
        args += [f"-EXIF:GPS:{k}={v}" for k, v in tags.items()]
        self._run([*args, _absolute(src)])


def _die_with_parent():
    """On Linux, a function that makes the child get SIGTERM when geoloc dies (prctl
    PR_SET_PDEATHSIG): exiftool in -stay_open mode keeps polling its input after the end of
    file, so a killed geoloc would leave it running forever. Elsewhere None (the next
    ``--write-exif`` run still removes the temporary file such a process may finish)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):
        return None
    term = int(signal.SIGTERM)
    return lambda: prctl(1, term)  # 1 = PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen) -> None:
    """Ask a -stay_open exiftool to finish; kill it if it does not."""
    try:
        proc.stdin.write("-stay_open\nFalse\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass


def _absolute(path: Path) -> str:
    """File arguments are absolute: one starting with "-" would read as an option (and "--",
    which would end the options, would also swallow -stay_open's "-execute")."""
    return os.path.abspath(os.fspath(path))


def _exiftool_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------------------------
# pyexiv2
# --------------------------------------------------------------------------------------------


class Pyexiv2:
    """exiv2 through pyexiv2: edits the metadata segments of a copy, never the image data."""

    name = "pyexiv2"
    suffixes = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp"})
    _PREFIX = "Exif.GPSInfo."

    def __init__(self, module):
        self.module = module
        self.version = f"{module.__version__} (exiv2 {getattr(module, '__exiv2_version__', '?')})"

    def close(self) -> None:
        pass

    def _open(self, path: Path):
        try:
            return self.module.Image(_FsName(os.fspath(path)))
        except (RuntimeError, OSError) as exc:
            raise WriteError(f"exiv2 cannot read {path.name}: {exc}") from None

    def gps_tags(self, photo: Path) -> dict[str, str]:
        with self._open(photo) as image:
            return {k: str(v) for k, v in image.read_exif().items() if k.startswith(self._PREFIX)}

    def write(self, src: Path, dst: Path, fix: GpsFix | None, restore: dict[str, str] | None = None) -> None:
        shutil.copyfile(src, dst)
        try:
            with self._open(dst) as image:
                old = {k: None for k in image.read_exif() if k.startswith(self._PREFIX)}
                if old:
                    image.modify_exif(old)  # None deletes a tag
                if fix is not None:
                    tags = {
                        "Exif.GPSInfo.GPSVersionID": "2 3 0 0",
                        "Exif.GPSInfo.GPSLatitude": _rational_dms(fix.lat),
                        "Exif.GPSInfo.GPSLatitudeRef": "N" if fix.lat >= 0 else "S",
                        "Exif.GPSInfo.GPSLongitude": _rational_dms(fix.lon),
                        "Exif.GPSInfo.GPSLongitudeRef": "E" if fix.lon >= 0 else "W",
                        "Exif.GPSInfo.GPSMapDatum": "WGS-84",
                        "Exif.GPSInfo.GPSHPositioningError": f"{round(fix.radius_m * 10)}/10",
                        "Exif.GPSInfo.GPSProcessingMethod": f"charset=Ascii {PROCESSING_METHOD}",
                    }
                else:
                    tags = {k: v for k, v in (restore or {}).items() if k.startswith(self._PREFIX)}
                if tags:
                    image.modify_exif(tags)
        except (RuntimeError, OSError, ValueError) as exc:
            raise WriteError(f"exiv2 could not write the GPS: {exc}") from None


class _FsName(str):
    """A file name that encodes to its bytes on disk. pyexiv2 opens ``name.encode("utf-8")``,
    which refuses a POSIX name that is not UTF-8 (its bytes are kept as surrogate escapes)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return os.fsencode(str(self))


def _rational_dms(value: float) -> str:
    """Degrees, minutes and seconds as exiv2 rationals; seconds to 1/10000 (≈ 3 mm)."""
    tenths = round(abs(value) * 3600 * 10000)
    seconds, rest = divmod(tenths, 60 * 10000)
    degrees, minutes = divmod(seconds, 60)
    return f"{degrees}/1 {minutes}/1 {rest}/10000"


# --------------------------------------------------------------------------------------------
# Choosing a backend, writing one photo
# --------------------------------------------------------------------------------------------

INSTALL_HINT = ("install exiftool (https://exiftool.org; apt install libimage-exiftool-perl, brew install "
                "exiftool) or pyexiv2 (pip install 'geoloc[exif]'), or write XMP sidecars with --xmp instead")


def find_backend(name: str | None = None) -> Backend:
    """exiftool when installed, else pyexiv2; ``name`` (or ``GEOLOC_EXIF_WRITER``) picks one."""
    wanted = (name or os.environ.get(BACKEND_ENV, "")).strip().lower() or None
    if wanted not in (None, "exiftool", "pyexiv2"):
        raise GeolocError(f"{BACKEND_ENV}={wanted}: choose exiftool or pyexiv2")
    if wanted in (None, "exiftool"):
        program = shutil.which("exiftool")
        if program:
            return Exiftool(program)
        if wanted:
            raise GeolocError(f"exiftool is not installed; {INSTALL_HINT}")
    try:
        import pyexiv2
    except ImportError:
        raise GeolocError(f"--write-exif needs a metadata writer: {INSTALL_HINT}") from None
    return Pyexiv2(pyexiv2)


def unwritable_reason(photo: Path, backend: Backend) -> str | None:
    """Why ``backend`` must not write this photo (its format), or None."""
    from geoloc.photos.raw import is_raw_name

    if is_raw_name(photo):
        return "a RAW file is never written to; its photo manager reads an XMP sidecar (--xmp)"
    if photo.suffix.lower() not in backend.suffixes:
        kind = photo.suffix.lstrip(".").upper() or "this format"
        return f"{backend.name} cannot write {kind} files safely; write an XMP sidecar (--xmp) instead"
    return None


def temp_path(photo: Path) -> Path:
    """A fresh temporary name beside the photo (same folder: the rename must not cross disks)."""
    handle, name = tempfile.mkstemp(prefix=TEMP_MARK, suffix=photo.suffix, dir=photo.parent)
    os.close(handle)
    os.unlink(name)  # the writers want a path that does not exist yet
    return Path(name)


def is_temp_name(path: Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def write_to_temp(photo: Path, temp: Path, backend: Backend, fix: GpsFix | None,
                  restore: dict[str, str] | None = None, restores_estimate: bool = False) -> None:
    """Write ``temp`` as ``photo`` with new GPS, and prove it: GPS read back, pixels equal.

    ``fix`` None with ``restore``: the GPS tags are put back as they were (undo);
    ``restores_estimate``: what was there was itself an earlier geoloc run's estimate, so the
    signature may stay. Raises :class:`WriteError` (and removes ``temp``) when anything is off.
    """
    if fix is not None:
        fix.check()
    st = os.stat(photo)
    try:
        backend.write(photo, temp, fix, restore)
        if not temp.is_file() or temp.stat().st_size == 0:
            raise WriteError(f"{backend.name} wrote no file")
        _check_gps(temp, fix, restores_estimate)
        try:
            same = same_pixels(photo, temp)
        except PixelError as exc:
            raise WriteError(str(exc)) from None
        if not same:
            raise WriteError(f"{backend.name} changed the image data; the photo is left as it was")
        _keep_owner_and_mode(temp, st)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
    except BaseException:
        try:
            temp.unlink()
        except OSError:
            pass
        raise


def _keep_owner_and_mode(temp: Path, st: os.stat_result) -> None:
    """The new file is the photo: its owner's and group's, with its mode. The writer made it
    as whoever runs geoloc (root, in a container or a NAS's scheduled job), which would take a
    ``0640`` photo away from its owner. Where ``chown`` is not permitted (a user writing another
    user's photo in a shared folder) the group alone is kept when it can be, as ``cp -p`` does."""
    if hasattr(os, "chown"):
        now = os.stat(temp)
        if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
            try:
                os.chown(temp, st.st_uid, st.st_gid)
            except PermissionError:
                with contextlib.suppress(PermissionError):
                    os.chown(temp, -1, st.st_gid)
    os.chmod(temp, stat.S_IMODE(st.st_mode))  # after chown, which clears the set-id bits


def _check_gps(temp: Path, fix: GpsFix | None, restores_estimate: bool = False) -> None:
    """geoloc's own reader must see exactly what was meant: the estimate, signed as geoloc's;
    after an undo, no estimate of geoloc's."""
    from geoloc.photos.meta import read_gps_block
    from geoloc.photos.tags import gps_position, written_by_geoloc

    gps = read_gps_block(temp)
    if fix is None:
        if written_by_geoloc(gps) and not restores_estimate:
            raise WriteError("geoloc's estimate is still in the file after the undo")
        return
    if not written_by_geoloc(gps):
        raise WriteError("the GPS written cannot be read back from the new file")
    lat, lon, _ = gps_position(gps)
    if lat is None or abs(lat - fix.lat) > TOLERANCE_DEG or abs(lon - fix.lon) > TOLERANCE_DEG:
        raise WriteError(f"the GPS read back ({lat}, {lon}) is not the estimate ({fix.lat:.7f}, {fix.lon:.7f})")
