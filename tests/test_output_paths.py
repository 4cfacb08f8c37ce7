"""Output paths the user names are written into, never swapped for a file of geoloc's.

Replacing through a temporary file is how a file is written all or nothing, and exactly wrong for
anything else: renamed over a device node it would turn the machine's ``/dev/null`` into a map.
Devices and FIFOs are written as streams, ``-`` and ``/dev/stdout`` are standard output, a
symbolic link is followed (the link stays, the file it points to gets the content), and what
cannot be written as either (a folder, a socket) is refused before any work.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geoloc.cli import app

runner = CliRunner()


def _locate(tiny_db, lund_dir, *args):
    return runner.invoke(app, ["locate", str(lund_dir / "02.jpg"), "--db", str(tiny_db), "--top-k", "2",
                               "--no-thumbnails", *map(str, args)])


def _null_device(folder: Path) -> Path:
    """A node of the null device (as /dev/null is) in a folder of the test's own."""
    node = folder / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (OSError, AttributeError) as exc:
        pytest.skip(f"cannot make a device node here ({exc})")
    return node


def test_a_map_into_a_character_device_leaves_it_a_device(tiny_db, lund_dir, tmp_path):
    node = _null_device(tmp_path)
    result = _locate(tiny_db, lund_dir, "--map", node)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no temporary file left beside it


def test_a_map_into_a_fifo_is_streamed_to_its_reader(tiny_db, lund_dir, tmp_path):
    fifo = tmp_path / "map.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = _locate(tiny_db, lund_dir, "--map", fifo)
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0].lstrip().lower().startswith(b"<!doctype html")


def test_a_map_through_a_symbolic_link_replaces_the_file_it_points_to(tiny_db, lund_dir, tmp_path):
    (tmp_path / "maps").mkdir()
    real = tmp_path / "maps" / "real.html"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.html"
    link.symlink_to(real)
    result = _locate(tiny_db, lund_dir, "--map", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().lstrip().lower().startswith("<!doctype html")
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the user's mode is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.html", "maps"]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["real.html"]


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_a_map_to_standard_output_is_the_data_there(tiny_db, lund_dir, target):
    result = _locate(tiny_db, lund_dir, "--map", target)
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().lower().startswith("<!doctype html")
    assert result.stdout.rstrip().endswith("</html>")  # the table went to stderr, not into the page
    assert "02.jpg" in result.stderr and "map written to stdout" in result.stderr
    assert os.path.islink("/dev/stdout") or os.path.exists("/dev/stdout")


def test_a_map_on_stdout_and_a_data_format_is_a_usage_error(tiny_db, lund_dir):
    result = _locate(tiny_db, lund_dir, "--map", "-", "--json")
    assert result.exit_code == 2
    assert "both go to stdout" in result.stderr and result.stdout == ""


def test_a_socket_is_refused_before_any_work(tiny_db, lund_dir, tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        result = _locate(tiny_db, lund_dir, "--map", path)
    finally:
        server.close()
    assert result.exit_code == 1
    assert "it is a socket" in result.stderr and "Traceback" not in result.output
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_finetune_refuses_a_device_or_stdout_as_its_model_file(tmp_path, lund_dir):
    node = _null_device(tmp_path)
    for out in (node, "-"):
        result = runner.invoke(app, ["finetune", str(lund_dir), "--out", str(out), "--epochs", "1"])
        assert result.exit_code == 2, result.output
        assert "give a file" in result.stderr
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]  # no null.ckpt beside it


def test_a_file_geoloc_keeps_is_never_streamed_into(tmp_path):
    """A database's own files and sidecars are files: a FIFO in their place is refused, not
    written into (which would hang) and not replaced."""
    from geoloc.errors import GeolocError
    from geoloc.files import atomic_write

    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    with pytest.raises(GeolocError, match="not a file"):
        atomic_write(fifo, "{}")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_long_file_name_fits_its_temporary_name(tmp_path):
    from geoloc.files import atomic_write

    target = tmp_path / ("x" * 250 + ".html")
    atomic_write(target, "content")
    assert target.read_text() == "content"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_eval_writes_its_csv_and_plot_into_a_device(tmp_path):
    from geoloc.evaluation.report import plot_recall_curves
    import numpy as np

    node = _null_device(tmp_path)
    plot_recall_curves({"m": np.array([0.5, 1.0])}, node, 25.0)
    assert stat.S_ISCHR(os.lstat(node).st_mode)


def test_a_link_to_standard_output_is_standard_output_never_a_file_to_replace(tiny_db, lund_dir, tmp_path):
    """A link leading to /dev/stdout, with stdout redirected to a log, must not replace the log
    (nor anything in /dev): the page is written to the process's stdout."""
    link = tmp_path / "so"
    link.symlink_to("/dev/stdout")
    result = _locate(tiny_db, lund_dir, "--map", link)
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().lower().startswith("<!doctype html")
    assert link.is_symlink() and os.readlink(link) == "/dev/stdout"
    assert _locate(tiny_db, lund_dir, "--map", link, "--json").exit_code == 2  # stdout is the map's


def test_another_processs_descriptor_is_refused(tiny_db, lund_dir, tmp_path):
    link = tmp_path / "theirs"
    link.symlink_to("/proc/1/fd/1")
    result = _locate(tiny_db, lund_dir, "--map", link)
    assert result.exit_code == 1 and "another process's open file" in result.stderr


def test_eval_plots_into_a_stream_whatever_its_name(tmp_path):
    from geoloc.evaluation.request import EvalRequest

    fifo = tmp_path / "curve"
    os.mkfifo(fifo)
    EvalRequest(queries=[tmp_path], plot=fifo).check()  # no .png needed for a stream
    with pytest.raises(Exception, match="name the file .png"):
        EvalRequest(queries=[tmp_path], plot=tmp_path / "curve.txt").check()


def test_finetune_refuses_a_name_too_long_for_its_checkpoint_before_any_work(tmp_path, lund_dir):
    for out in (tmp_path / ("z" * 260 + ".safetensors"), tmp_path / ("z" * 248 + ".safetensors")):
        result = runner.invoke(app, ["finetune", str(lund_dir), "--out", str(out), "--epochs", "1"])
        assert result.exit_code == 2, result.output
        assert "internal error" not in result.stderr and "--out" in result.stderr
