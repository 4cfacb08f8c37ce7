"""The SPEC's 'everywhere' promises: version, instant help, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from geoloc import __version__
from geoloc.cli import app

COMMANDS = ["models", "index", "photos", "locate", "eval", "finetune"]


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"geoloc {__version__}"


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "geoloc", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"geoloc {__version__}"


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_does_not_import_heavy_libraries(argv):
    """--help must be instant: no torch, faiss, folium, scipy, matplotlib or ray import."""
    code = (
        "import sys\n"
        "from geoloc.cli import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "heavy = sorted(m for m in ('torch', 'faiss', 'folium', 'scipy', 'matplotlib', 'torchvision',"
        " 'ray', 'pyarrow', 'pandas')"
        " if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_every_command_is_registered():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(app, ["no-such-command"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["locate", "x.jpg", "--top-k", "0"], "--top-k"),
        (["no-such-command"], "No such command"),
        (["models", "download"], "Missing argument"),
        (["index", "--bogus", "."], "No such option: --bogus"),
    ],
)
def test_usage_errors_from_the_console_script_are_one_line(argv, fragment):
    """What a user types gets `error: …` on one line and exit 2, not click's boxed panel."""
    out = subprocess.run([sys.executable, "-m", "geoloc", *argv], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr


def test_no_arguments_shows_the_help():
    out = subprocess.run([sys.executable, "-m", "geoloc"], capture_output=True, text=True)
    assert out.returncode == 2 and "Usage" in out.stdout + out.stderr and "Traceback" not in out.stderr
