"""What every module that writes or names files shares: display, durable replacement, hashing.

Each of these used to exist in two or three slightly different copies (two functions named
``file_sha256`` with different caching, three "write a temporary file and rename it" loops, only
some of which fsynced). One copy each means one behaviour to reason about: a file geoloc writes
is either the old one or the complete new one, and a hash is the same whoever computes it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterator

_HASH_CHUNK = 1 << 22


#: Characters a terminal acts on, or that reorder what it shows: C0/C1 controls, DEL, the
#: Unicode line separators and the bidirectional overrides ("Trojan source" names).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    ch = match.group()
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, kept by os.fsdecode's surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on written as an escape (``\\x1b``,
    ``\\n``, ``\\u202e``), and bytes that are not UTF-8 as ``\\xff``: one line, shown as is."""
    return _UNSAFE.sub(_escape, text)


def display_path(path: Path | str) -> str:
    """A path for people: messages, tables, maps. Names are data, never terminal commands:
    control characters and undecodable bytes come out as escapes (see :func:`printable`)."""
    return printable(os.fspath(path))


def common_folder(paths) -> str | None:
    """The folder all ``paths`` are in, or None (no paths, or only "/" in common): the tables
    and the map name photos relative to it, given once."""
    if not paths:
        return None
    try:
        folder = os.path.commonpath([os.path.abspath(os.path.dirname(os.fspath(p))) for p in paths])
    except ValueError:  # another drive (Windows)
        return None
    return folder if folder not in ("", os.sep) else None


def json_path(path: Path | str) -> str:
    """A path for JSON, without loss: a byte that is not UTF-8 stays a surrogate escape
    (``\\udcff`` once written as JSON by :func:`geoloc.console.print_json`), so that
    ``os.fsencode(json.loads(text)[...])`` gives back the exact bytes of the name."""
    return os.fspath(path)


#: What an output path names, by what geoloc does with it: ``"stdout"`` (``-``), ``"stream"`` (a
#: FIFO or a character device: written into as it is, never replaced), ``"file"`` (a regular file,
#: or none yet: replaced whole through a temporary file beside it, following symbolic links).
STDOUT, STREAM, FILE = "stdout", "stream", "file"


def output_kind(target: Path | str, what: str = "") -> str:
    """How an output is written to ``target`` (see :data:`STDOUT`), or :class:`GeolocError` for
    what geoloc must not replace: a folder, a block device, a socket.

    Replacing is how a file is written all or nothing, and it is exactly wrong for anything but
    a file: renamed over ``/dev/null``, it would turn the machine's null device into a map.
    """
    from geoloc.errors import GeolocError

    alias = _fd_alias(target) if os.fspath(target) != "-" else 1
    if alias == 1:
        return STDOUT
    if alias is not None:
        return STREAM
    name = f"{what} {display_path(target)}" if what else display_path(target)
    system = _reaches_system(target)
    if system is not None and re.match(r"^/proc/\d+/fd/", system):
        raise GeolocError(f"cannot write {name}: it is another process's open file ({system})")
    try:
        mode = os.stat(target).st_mode  # through symbolic links: what the name leads to
    except FileNotFoundError:
        if system is not None:
            raise GeolocError(f"cannot write {name}: it leads to {system}, where geoloc creates no file") from None
        return FILE
    except OSError as exc:
        raise GeolocError(f"cannot write {name}: {exc.strerror or exc}") from None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return STREAM
    if stat.S_ISREG(mode):
        if system is not None:
            raise GeolocError(f"cannot write {name}: it leads to {system}, a system file geoloc does not replace")
        return FILE
    if stat.S_ISDIR(mode):
        raise GeolocError(f"cannot write {name}: it is a folder")
    kind = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file"
    raise GeolocError(f"cannot write {name}: it is {kind}; geoloc writes to files, FIFOs, "
                      "character devices and - (standard output)")


_FD_ALIAS = re.compile(
    r"^/(?:dev/(?P<std>stdin|stdout|stderr)|dev/fd/(?P<n>\d+)|proc/(?P<pid>self|thread-self|\d+)/fd/(?P<m>\d+))$")
#: Folders of the system's own files: nothing is ever renamed into them (a device node, a
#: process's descriptor, a kernel setting), whatever a link says.
_SYSTEM = ("/dev/", "/proc/", "/sys/")


def _fd_alias(target: Path | str) -> int | None:
    """The descriptor that ``/dev/stdout``, ``/dev/fd/N`` or ``/proc/self/fd/N`` names, or a
    symbolic link leading to one of them (followed link by link). Such a name is the process's
    own open file: written through that descriptor, so a ``>> log`` is appended to, never
    replaced (the file behind it may be anything). Another process's descriptor is no alias
    (:func:`output_kind` refuses it)."""
    for path in _link_chain(target):
        match = _FD_ALIAS.match(path)
        if match is not None:
            if match["std"]:
                return ("stdin", "stdout", "stderr").index(match["std"])
            pid = match["pid"]
            if pid is None or pid in ("self", "thread-self") or int(pid) == os.getpid():
                return int(match["n"] or match["m"])
            return None
    return None


def _reaches_system(target: Path | str) -> str | None:
    """The system folder (``/dev``, ``/proc``, ``/sys``) the name leads into, following each
    link, or None."""
    return next((path for path in _link_chain(target) if path.startswith(_SYSTEM)), None)


def _link_chain(target: Path | str) -> Iterator[str]:
    """The name, then each name its symbolic links lead to, one link at a time (absolute,
    normalised; at most the kernel's own 40 links): where a write to it would really go."""
    path = os.path.abspath(os.fspath(target))
    for _ in range(40):
        yield path
        if not os.path.islink(path):
            return
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))


def file_target(target: Path | str) -> Path:
    """The file a write to ``target`` replaces: a symbolic link is followed (on purpose, as a
    shell's ``>`` does), so the link stays a link and the file it points to gets the content."""
    target = Path(target).expanduser()
    return Path(os.path.realpath(target)) if os.path.islink(target) else target


def path_bytes(path: Path | str) -> str | None:
    """The hex of a name's bytes when it is not UTF-8, else None.

    :func:`json_path` keeps such a name for Python, but jq, node and most JSON readers turn a
    lone ``\\udcXX`` escape into U+FFFD and lose the byte; the hex gives them the name exactly
    (``bytes.fromhex``, ``Buffer.from(s, "hex")``, ``xxd -r -p``)."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(text).hex()


def json_path_fields(path: Path | str, key: str = "path") -> dict[str, str]:
    """``{key: json_path(path)}``, plus ``{key + "_bytes": hex}`` for a name that is not UTF-8
    (:func:`path_bytes`): the one way every JSON object geoloc prints carries a path."""
    fields = {key: json_path(path)}
    raw = path_bytes(path)
    if raw is not None:
        fields[f"{key}_bytes"] = raw
    return fields


def check_writable(target: Path | str, what: str = "") -> None:
    """Refuse, before any work, an output file that cannot be written where asked.

    An hour of extraction should not end in "folder does not exist". ``what`` names the file
    in the message ("map" → "cannot write map out.html: …"). ``-``, FIFOs and character devices
    are written as streams (:func:`output_kind`): only their permission is checked.
    """
    from geoloc.errors import GeolocError

    name = f"{what} {display_path(target)}" if what else display_path(target)
    kind = output_kind(Path(target).expanduser() if os.fspath(target) != "-" else target, what)
    if kind == STDOUT:
        return
    if kind == STREAM:
        alias = _fd_alias(target)
        if alias is not None:
            try:
                os.fstat(alias)
            except OSError:
                raise GeolocError(f"cannot write {name}: descriptor {alias} is not open") from None
        elif not os.access(target, os.W_OK):
            raise GeolocError(f"cannot write {name}: permission denied")
        return
    target = file_target(target)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise GeolocError(f"cannot write {name}: folder {display_path(folder)} does not exist")
    if not os.access(folder, os.W_OK):
        raise GeolocError(f"cannot write {name}: folder {display_path(folder)} is not writable")
    # os.access answers from the mode bits, and root passes those everywhere: a file actually
    # made (and removed) there is the only proof (/proc, a read-only bind mount, a full quota).
    try:
        handle, probe = tempfile.mkstemp(prefix=".geoloc-probe-", dir=folder)
    except OSError as exc:
        # EROFS, ENOSPC, EDQUOT say why; under /proc or /sys the errno (ENOENT) would only confuse.
        why = exc.strerror if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES) else None
        raise GeolocError(f"cannot write {name}: folder {display_path(folder)} is not writable"
                          + (f" ({why})" if why else ": no file can be created there")) from None
    os.close(handle)
    os.unlink(probe)


def fsync_dir(path: Path | str) -> None:
    """Make a rename in ``path`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(target: Path | str, *, durable: bool = True, streams: bool = False) -> Iterator[Path]:
    """A temporary path; once the block succeeds its content goes to ``target``.

    Write the new content to the yielded path (by name: safetensors, faiss and numpy writers
    want one). What happens then depends on what ``target`` is (:func:`output_kind`):

    - a file, or none yet: the temporary file sits beside it (a short name, ``.geoloc-….tmp``,
      so that a long file name still fits), is fsynced when ``durable``, takes the mode (and,
      where allowed, the owner) of the file it replaces, or ordinary permissions for a new one
      (the umask decides, not ``mkstemp``'s 0600), and is renamed over ``target`` in one step:
      readers see the old file or the whole new one, never half of one. A symbolic link is
      followed: the file it points to is replaced and the link stays.
    - ``-``, a FIFO or a character device (``/dev/stdout``, ``/dev/null``): with ``streams``
      (an output the user named), the content is written into it as a stream, and the device
      stays what it was; without (a file geoloc keeps, a sidecar), refused.
    - a folder, a block device or a socket: refused (:class:`GeolocError`) before anything is written.

    On any failure, Ctrl-C included, the temporary file is removed and ``target`` is left as it was.
    """
    kind = output_kind(target)
    if kind != FILE and not streams:
        from geoloc.errors import GeolocError

        raise GeolocError(f"cannot write {display_path(target)}: it is not a file (a device, a FIFO or "
                          "standard output), and geoloc replaces only files there")
    if kind != FILE:
        with tempfile.TemporaryDirectory(prefix="geoloc-") as scratch:
            tmp = Path(scratch) / "output"
            yield tmp
            _stream(tmp, target, kind)
        return
    target = file_target(target)
    if os.path.abspath(target).startswith(_SYSTEM):  # never, whatever led here
        from geoloc.errors import GeolocError

        raise GeolocError(f"cannot write {display_path(target)}: a system file geoloc does not replace")
    fd, name = tempfile.mkstemp(prefix=".geoloc-", suffix=".tmp", dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _take_mode(tmp, target)
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(target.parent)


def _take_mode(tmp: Path, target: Path) -> None:
    """The replacement keeps what the user set on the file it replaces (its mode, and its owner
    and group where this process may set them); a new file gets what the umask gives."""
    try:
        st = os.stat(target)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        return
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    try:
        if hasattr(os, "chown"):
            os.chown(tmp, st.st_uid, st.st_gid)
    except OSError:  # not root: the file is ours, as it would be after any editor's save
        pass


def _stream(source: Path, target: Path | str, kind: str) -> None:
    import shutil
    import sys

    with open(source, "rb") as src:
        if kind == STDOUT:
            sys.stdout.flush()
            out = getattr(sys.stdout, "buffer", None)
            if out is None:  # a text-only stdout (a test runner's): decode as the writer encoded
                sys.stdout.write(src.read().decode("utf-8", "surrogateescape"))
                sys.stdout.flush()
                return
            shutil.copyfileobj(src, out)
            out.flush()
            return
        alias = _fd_alias(target)
        if alias is not None:
            fd = os.dup(alias)
        else:  # O_WRONLY without O_CREAT or O_TRUNC: it exists, and a device is not a file to cut.
            fd = os.open(target, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)


def atomic_write(target: Path | str, data: bytes | str, *, durable: bool = True, streams: bool = False) -> None:
    """Write ``data`` (text as UTF-8 with ``\\n`` line ends) to ``target`` all or nothing
    (:func:`replacing`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(target, durable=durable, streams=streams) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file's content, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_cached(path: Path | str) -> str:
    """:func:`sha256_file`, remembered under geoloc's cache by path, size and mtime.

    For large files read at every start (a 1 GB model file): hashing it again each time would
    cost seconds, and a changed file changes its size or mtime, which the key covers.
    """
    from geoloc.paths import cache_dir

    path = Path(path).resolve()
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = cache_dir() / "hashes" / (hashlib.sha1(str(path).encode()).hexdigest() + ".json")
    try:
        cached = json.loads(memo.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, json.dumps({**key, "sha256": digest}), durable=False)
    except OSError:
        pass  # an unwritable cache: just hash again next time
    return digest
