"""Every command's --help as a person reads it in an 80-column terminal.

Rendered with the Rich formatter typer uses, at COLUMNS=80: no Python type names where a
value's name belongs (``--json <bool>``), nothing cut off (``…``), every default whole, no
inline command (```geoloc index```) split over two lines, and no paragraph broken by a hard
line break in the source (a line that stops short although the next word would fit).
"""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from geoloc.cli import app

WIDTH = 80
TYPE_NAMES = re.compile(r"<(bool|int|integer|float|str|text|path|file|choice|list\[[^\]]*\]|[a-z]+ range)>",
                        re.I)


def _commands(group, prefix=()):
    yield list(prefix)
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def render(argv: list[str]) -> list[str]:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def test_every_command_is_checked():
    names = {" ".join(c) for c in COMMANDS}
    assert {"", "index", "photos", "check", "locate", "eval", "finetune", "models", "models download"} <= names


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda c: " ".join(c) or "geoloc")
def test_help_reads_well_at_80_columns(argv):
    lines = render(argv)
    text = "\n".join(lines)
    assert all(len(line) <= WIDTH for line in lines), max(lines, key=len)
    assert not TYPE_NAMES.search(text), TYPE_NAMES.search(text).group()
    assert "…" not in text  # a word or a default cut off
    assert not re.search(r"\[x ?[<>]", text), "typer's range notation ([x>=1]) shown"
    assert "[[" not in text, "an optional argument's brackets doubled"
    for line in lines:
        assert not re.search(r"\[default:[^\]]*$", line), f"a default cut over two lines: {line!r}"
        assert line.count("`") % 2 == 0, f"an inline command split over two lines: {line!r}"
    for first, second in _prose_pairs(lines):
        word = second.split()[0]
        # The renderer wraps at WIDTH - 2 (one column of padding each side): a line that stops
        # while the next word would still have fitted was broken in the source text.
        assert len(first.rstrip()) + 1 + len(word) > WIDTH - 1, f"hard line break after {first.strip()!r}"
    for text, word, room in _panel_pairs(lines):
        assert len(text) + 1 + len(word) > room, f"hard line break after {text!r}"


def _panel_pairs(lines: list[str]):
    """Consecutive lines of one help cell in an option or command panel, as (the first line's
    text in the help column, the next line's first word, the room the column has)."""
    for first, second in zip(lines, lines[1:]):
        if not (first.startswith("│") and second.startswith("│")):
            continue
        inner = second[1:-1]
        start = len(inner) - len(inner.lstrip())
        if start < 3 or not inner.strip():
            continue  # a new row (its name starts the line), or an empty one
        word = inner.split()[0]
        if word.startswith("[default:") or word.startswith("[required"):
            continue  # typer puts the default on a line of its own when the text is long
        room = len(inner) - 1 - start  # one column of padding before the border
        yield first[1:-1][start:].rstrip(), word, room


def _prose_pairs(lines: list[str]):
    """Consecutive lines of the same paragraph of prose outside the option panels (the
    description and the epilogue)."""
    prose = [line if line.strip() and not line.lstrip().startswith(("│", "╭", "╰", "Usage:")) else ""
             for line in lines]
    for first, second in zip(prose, prose[1:]):
        if first and second and not second.strip().startswith("geoloc "):  # an example per line
            yield first, second


def test_flags_show_no_value_and_options_name_theirs():
    lines = render(["index"])
    row = next(line for line in lines if "--json" in line)
    assert re.match(r"│ --json\s+Print", row), row
    assert any(re.match(r"│ --batch-size\s+N ", line) for line in lines)
    assert any(re.match(r"│ --db\s+DB ", line) for line in lines)


@pytest.mark.parametrize("argv", [["index"], ["eval"]])
def test_the_ray_extra_is_named_whole(argv):
    """``geoloc[ray]`` in a help text is Rich markup unless escaped: it showed as "geoloc"."""
    text = " ".join(line.strip(" │") for line in render(argv))
    assert "geoloc[ray]" in text


def _option_help(argv: list[str], option: str) -> str:
    """The help text of one option's row, its wrapped lines joined."""
    lines = render(argv)
    start = next(i for i, line in enumerate(lines) if re.match(rf"│ {re.escape(option)}\b", line))
    words = [lines[start].strip("│ ").split(None, 2)[2]]
    for line in lines[start + 1:]:
        inner = line.strip("│ ")
        if not line.startswith("│") or inner.startswith("-") or not inner:
            break
        words.append(inner)
    return " ".join(words)


def test_one_default_is_worded_one_way():
    """Why: `--workers` of index and eval, both `default_workers`, were described in three ways
    (with finetune's); the two now share one text."""
    assert _option_help(["index"], "--workers") == _option_help(["eval"], "--workers")
    assert "a quarter of the cores" in _option_help(["index"], "--workers")


PAGES = {"undo-exif": "locate.md"}


@pytest.mark.parametrize("argv", [c for c in COMMANDS if len(c) == 1], ids=lambda c: c[0])
def test_every_option_is_on_its_commands_page(argv):
    """Why: `--no-maps` was in `geoloc index --help` and not in docs/commands/index.md."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "commands" / PAGES.get(argv[0], f"{argv[0]}.md")
    text = page.read_text(encoding="utf-8")
    command = typer.main.get_command(app).commands[argv[0]]
    missing = [opt for p in command.params if not getattr(p, "hidden", False)
               for opt in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]
               if opt.startswith("--") and opt not in text]
    assert not missing, f"{page.name} does not mention {missing}"
