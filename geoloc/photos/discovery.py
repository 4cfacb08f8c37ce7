"""Finding photos under the paths a user names.

Photo archives are messy trees: symlinked folders that point back up, folders another user owns,
``.thumbnails`` caches, names in every script. The walk must always end, must never give up on
the whole tree because one folder is unreadable, and must give the same order on every run so
that progress bars, logs and databases are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from geoloc.errors import GeolocError, PhotoError
from geoloc.photos.raw import RAW_SUFFIXES

SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".heif", ".bmp"}
) | RAW_SUFFIXES

OnError = Callable[[PhotoError], None]

#: What a symbolic link whose target went is, wherever it is met (named, or inside a folder).
BROKEN_LINK = "broken symbolic link: the file it points to is gone"


def is_photo_name(path: str | os.PathLike) -> bool:
    """Whether the name ends in a photo suffix, in any letter case (``.JPG``, ``.Heic``)."""
    return Path(path).suffix.lower() in SUFFIXES


def expand_globs(args: Iterable[str | os.PathLike], on_unmatched: OnError | None = None) -> list[Path]:
    """Arguments with their quoted globs expanded (``'trip/*.jpg'``, ``'**/*.heic'``), in order.

    A shell leaves an unmatched glob as it is, and Windows shells expand none, so geoloc expands
    them itself; a name that exists is taken literally even if it holds ``*`` or ``[``. A
    pattern matching nothing is an error, as a missing path is in :func:`discover`, unless
    ``on_unmatched`` takes it (``geoloc locate`` answers for it and goes on with the others).
    """
    import glob

    out: list[Path] = []
    for arg in args:
        text = os.fspath(arg)
        if not os.path.lexists(text) and set("*?[") & set(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                if on_unmatched is None:
                    raise GeolocError(f"{text}: no file matches this pattern")
                on_unmatched(PhotoError(Path(text), "no file matches this pattern"))
                continue
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(text).expanduser())
    return out


def discover(paths: Iterable[str | os.PathLike], on_error: OnError | None = None, *,
             missing_ok: bool = False) -> Iterator[Path]:
    """The photos under ``paths``, each once, in a stable order.

    Every PATH is checked before anything is yielded (a typo in the last argument must not cost
    a half-finished run), so a PATH that does not exist raises :class:`GeolocError` at call
    time, unless ``missing_ok`` (``geoloc locate``, which answers for each query it was given).
    A broken symbolic link is not a typo but a file whose target went (a shell expanding
    ``*.jpg`` names it like any other): it goes to ``on_error`` with the other problems with
    single files or folders, and the walk goes on; without a handler they are printed as
    warnings.
    """
    roots = [Path(p) for p in paths]
    report = on_error or _warn
    kept: list[Path] = []
    for root in roots:
        if root.exists():
            kept.append(root)
        elif os.path.islink(root):
            report(PhotoError(root, BROKEN_LINK))
        elif missing_ok:
            report(PhotoError(root, "no such file or folder"))
        else:
            raise GeolocError(f"{root}: no such file or folder")
    return _discover(kept, report)


def _warn(error: PhotoError) -> None:
    from geoloc import console

    console.warn(str(error))


def _discover(roots: list[Path], on_error: OnError) -> Iterator[Path]:
    seen_files: set[str] = set()
    seen_dirs: set[tuple[int, int]] = set()

    def first_time(path: Path) -> bool:
        try:
            key = os.path.realpath(path)
        except (OSError, ValueError):
            key = os.path.abspath(path)
        if key in seen_files:
            return False
        seen_files.add(key)
        return True

    for root in roots:
        if root.is_dir():
            for path in _walk(root, seen_dirs, on_error):
                if first_time(path):
                    yield path
        elif not _is_regular_file(root):
            on_error(PhotoError(root, "not a regular file or folder"))
        elif not is_photo_name(root):
            on_error(PhotoError(root, f"not a photo: geoloc reads {_suffix_list()}"))
        elif first_time(root):
            # Named explicitly: taken even if hidden.
            yield root


def _walk(root: Path, seen_dirs: set[tuple[int, int]], on_error: OnError) -> Iterator[Path]:
    """Depth first, entries in name order, following symlinks but entering each folder once.

    Folders are identified by (device, inode) so that a symlink loop, or two links to one
    folder, cannot make the walk go round or yield the same photos twice. An explicit stack
    instead of recursion keeps very deep trees from hitting Python's recursion limit.

    A tree can hold what no program can open by its path: a photo deeper than the system's
    path limit (PATH_MAX), or a name longer than its file system's NAME_MAX. Each such photo is
    named as an error (stat and open would fail on it, and it would vanish without a word).
    """
    key = _dir_key(root)
    if key is not None:
        if key in seen_dirs:
            return
        seen_dirs.add(key)
    path_max = _path_max(root)
    # Paths are measured as the system gets them: absolute, in bytes.
    offset = len(os.fsencode(os.path.abspath(root))) - len(os.fsencode(os.fspath(root)))
    stack: list[tuple[Iterator[os.DirEntry], int | None]] = [(iter(_list_dir(root, on_error)), _name_max(root))]
    while stack:
        entry = next(stack[-1][0], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        name_max = stack[-1][1]
        if name_max is not None and len(os.fsencode(entry.name)) > name_max:
            if is_photo_name(entry.name) or _entry_is_dir(entry):
                on_error(PhotoError(path, f"file name too long: {len(os.fsencode(entry.name))} bytes, over this "
                                          f"file system's limit of {name_max} (NAME_MAX); rename it to read it"))
            continue
        too_long = path_max is not None and len(os.fsencode(entry.path)) + offset >= path_max
        if _entry_is_dir(entry):
            if too_long:
                _name_beyond_path_max(path, seen_dirs, on_error, path_max, offset)
                continue
            key = _dir_key(path)
            if key is None or key in seen_dirs:
                continue
            seen_dirs.add(key)
            stack.append((iter(_list_dir(path, on_error)), _name_max(path)))
        elif not is_photo_name(entry.name):
            continue
        elif too_long:
            on_error(PhotoError(path, _too_long(entry.path, offset, path_max)))
            continue
        elif _entry_is_file(entry):
            yield path
        elif entry.is_symlink() and not path.exists():
            on_error(PhotoError(path, BROKEN_LINK))
        # FIFOs, sockets and devices named like photos are skipped: reading one could block.


def _path_max(folder: Path) -> int | None:
    """The system's limit on a path's length in bytes, its final NUL included (PATH_MAX)."""
    try:
        return os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # Windows: no pathconf, and long paths work
        return None


def _name_max(folder: Path) -> int | None:
    """The folder's file system's limit on a name's length in bytes (NAME_MAX)."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return None


def _too_long(path: str, offset: int, path_max: int) -> str:
    return (f"path too long: {len(os.fsencode(path)) + offset} bytes, over the system's limit of "
            f"{path_max - 1} (PATH_MAX); no program can open it by this path: move it to a shallower folder")


def _name_beyond_path_max(folder: Path, seen_dirs: set[tuple[int, int]], on_error: OnError,
                          path_max: int, offset: int) -> None:
    """Each photo under a folder whose path is already past PATH_MAX, named as an error.

    Such a folder cannot be listed by its path, but can through folder handles (``dir_fd``),
    which have no length limit: so every photo in it is named, not just the folder.
    """
    directory = getattr(os, "O_DIRECTORY", 0)
    try:
        parent = os.open(folder.parent, os.O_RDONLY | directory)
        try:
            fd = os.open(folder.name, os.O_RDONLY | directory, dir_fd=parent)
        finally:
            os.close(parent)
    except OSError as exc:
        on_error(PhotoError(folder, f"cannot read folder ({exc.strerror or exc})"))
        return
    pending = [(fd, folder)]
    while pending:
        fd, here = pending.pop()
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
            folders = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if _entry_is_dir(entry):
                    folders.append(entry.name)
                elif is_photo_name(entry.name) and _entry_is_file(entry):
                    on_error(PhotoError(here / entry.name, _too_long(os.fspath(here / entry.name), offset, path_max)))
            for name in reversed(folders):  # popped in name order
                try:
                    pending.append((os.open(name, os.O_RDONLY | directory, dir_fd=fd), here / name))
                except OSError as exc:
                    on_error(PhotoError(here / name, f"cannot read folder ({exc.strerror or exc})"))
        except OSError as exc:
            on_error(PhotoError(here, f"cannot read folder ({exc.strerror or exc})"))
        finally:
            os.close(fd)


def _list_dir(folder: Path, on_error: OnError) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except PermissionError:
        on_error(PhotoError(folder, "permission denied"))
        return []
    except OSError as exc:
        on_error(PhotoError(folder, f"cannot read folder ({exc.strerror or exc})"))
        return []
    entries.sort(key=lambda e: e.name)
    return entries


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _entry_is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows symlinks; False for FIFOs, sockets, devices
    except OSError:
        return False


def _is_regular_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _dir_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _suffix_list() -> str:
    return ", ".join(sorted(SUFFIXES))


def expand_queries(args: list[Path]) -> list[tuple[str, object]]:
    """Photos to locate, in argument order, as ("path", Path) or ("error", PhotoError) slots.

    Quoted globs are expanded here (a shell leaves an unmatched glob as is). A missing path, a
    glob matching nothing and every problem with a single file found along the way become error
    entries of their own, so that every query named is answered for and the others still run.
    """
    if not args:
        return []
    slots: list[tuple[str, object]] = []
    seen: set[str] = set()  # a file named twice (a folder and a glob over it) is answered once

    def failed(exc) -> None:
        key = "error:" + os.path.abspath(exc.path)  # a broken link has no real path to resolve
        if key not in seen:
            seen.add(key)
            slots.append(("error", exc))

    for arg in args:  # one at a time: the answers come in the order the queries were named
        start, found = len(slots), 0
        for path in discover(expand_globs([arg], on_unmatched=failed), on_error=failed, missing_ok=True):
            found += 1
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                slots.append(("path", path))
        if not found and len(slots) == start:  # this query found nothing and said nothing yet
            where = "in this folder" if Path(arg).expanduser().is_dir() else "where this pattern points"
            failed(PhotoError(Path(arg), f"no photos {where} (geoloc reads {', '.join(sorted(SUFFIXES))})"))
    return slots  # never empty: every query leaves a photo or its own error
