"""The progress bars people watch: no time left until a rate means something, and no phase
that sits still without saying what it is doing."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from geoloc import console
from geoloc.cli import app
from geoloc.console import RichProgress, SteadyRate, format_eta


def test_the_rate_waits_for_a_second_advance_and_two_seconds_after_the_first():
    """Why: the first batch carries the start-up (decoding threads, the network's first pass);
    a rate measured from the phase's start, or from one batch, is wildly off."""
    rate = SteadyRate()
    rate.advance(0, 1.0)  # nothing done: no clock started
    assert rate.rate() is None
    rate.advance(16, 8.0)  # the first batch, 8 s of start-up in it
    assert rate.rate() is None
    rate.advance(16, 9.0)
    assert rate.rate() is None  # one second of measurement is a guess
    rate.advance(16, 12.0)
    assert rate.rate() == pytest.approx(32 / 4.0)  # start-up excluded: 8 photos/s, not 48 / 12


def test_format_eta():
    assert format_eta(4.2) == "0:05"
    assert format_eta(125) == "2:05"
    assert format_eta(3 * 3600 + 61) == "3:01:01"
    assert format_eta(-3) == "0:00"


def _frames(buffer: io.StringIO) -> list[str]:
    """Every line Rich drew, as plain text (cursor moves and colours removed)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", buffer.getvalue())
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


def test_time_left_appears_only_once_the_rate_is_steady(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("time.perf_counter", lambda: clock[0])
    buffer = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=buffer, force_terminal=True, width=120, color_system=None))
    progress = RichProgress(transient=False, rate="photos")
    progress.stage("Indexing", 100)
    task = progress._progress.tasks[-1]
    column = progress._progress.columns[-1]

    def shown() -> str:
        return column.render(task).plain

    for at, n in ((108.0, 16), (109.0, 16)):
        clock[0] = at
        progress.advance(n)
        assert shown() == "" and task.fields["rate"] == ""
    clock[0] = 112.0
    progress.advance(16)
    assert shown() == "eta 0:07"  # 52 photos left at 8 photos/s: 6.5 s
    assert task.fields["rate"] == "4.0 photos/s"  # overall, start-up included: what the record keeps
    clock[0] = 115.0  # counted down between updates
    assert shown() == "eta 0:04"
    progress.status("reading the next 16 photos")  # a pause: the time left is measured afresh
    assert shown() == "" and task.fields["waiting"] and task.fields["rate"] == "reading the next 16 photos"
    progress.close()
    assert task.fields["rate"] == "3.2 photos/s" and not task.fields["waiting"]


def test_index_shows_what_the_first_batch_and_the_vocabulary_fit_are_doing(tiny_model, lund_dir, tmp_path,
                                                                           monkeypatch):
    """`geoloc index` as a terminal shows it: the vocabulary phase says it is reading its first
    batch (the bar pulses meanwhile), then that it is clustering; no time left is shown
    before any photo is done, and every phase leaves a record."""
    buffer = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=buffer, force_terminal=True, width=140, color_system=None))
    photos = [str(lund_dir / f"{i:02d}.jpg") for i in range(1, 30, 2)]
    result = CliRunner().invoke(app, ["index", *photos, "--db", str(tmp_path / "db"), "--model", tiny_model,
                                      "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    frames = _frames(buffer)
    assert any(re.search(r"Fitting vocabulary .* 0/15 reading the first 4 photos and starting the network", f)
               for f in frames), frames
    assert any(re.search(r"Fitting vocabulary .* 15/15 clustering [\d,]+ local features into 4 visual words "
                         r"\(k-means\)", f) for f in frames), frames
    for frame in frames:
        assert not re.search(r" 0/\d+ .*eta ", frame), frame
    assert any(re.match(r"Indexing .* 15/15", f) for f in frames)
