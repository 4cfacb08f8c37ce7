"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, learning-rate schedule, scaler, epoch and position
inside the epoch, the mining cache and previous hard negatives, every random generator's state,
the best result so far and the history. It is written to a temporary file and renamed over the
old one, so a crash while saving leaves the previous checkpoint intact. ``torch.load`` reads it
with ``weights_only=True``: a checkpoint cannot run code.

Checkpoints live in a folder next to the model file a run writes (``--out``); whether a run may
start, resume or restart is decided here from that folder alone, before any photo is read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from geoloc.errors import GeolocError, UsageError

FORMAT = 1
LAST = "last.pt"
BEST = "best.pt"


class CheckpointError(GeolocError):
    """A checkpoint is missing, unreadable or belongs to another run."""


def checkpoint_dir_for(out: Path) -> Path:
    """Checkpoints live next to the output file: ``model.safetensors`` → ``model.safetensors.ckpt/``."""
    out = Path(out)
    return out.parent / f"{out.name}.ckpt"


def save(path: Path, state: dict[str, Any]) -> None:
    import torch

    from geoloc.files import replacing

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        torch.save(state, tmp)


def load(path: Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a geoloc finetune checkpoint of format {FORMAT}")
    return state


def check_run(out: Path, resume: bool = False, restart: bool = False) -> Path:
    """The model file to write, and the checkpoint's state checked against ``--resume`` and
    ``--restart``: everything that can refuse the run, before any photo is read. Changes nothing."""
    out = check_out(out)
    folder = checkpoint_dir_for(out)
    last = folder / LAST
    if resume and restart:
        raise UsageError("--resume and --restart contradict each other; choose one")
    if resume and not last.is_file():
        raise CheckpointError(f"no checkpoint to resume at {folder}; run without --resume to start training")
    if resume and finished_run(out):
        raise CheckpointError(
            f"the run at {folder} finished and wrote {out}: there is nothing to resume; run without "
            f"--resume to train again, or pass --base {out} to train that model further")
    if not resume and not restart and last.is_file() and not finished_run(out):
        raise CheckpointError(
            f"a checkpoint of an earlier run is at {folder}: pass --resume to continue it, "
            "or --restart to discard it and start over"
        )
    return out


def finished_run(out: Path) -> bool:
    """Whether the checkpoint next to ``out`` is that of the run that wrote ``out``.

    A run writes its model file after its last checkpoint, and a finished run removes its
    checkpoint folder; one left behind (a crash between the two, or geoloc 0.1.0, which kept
    it) is older than the model file. An interrupted run's checkpoint is newer than any model
    file an earlier run wrote there.
    """
    last = checkpoint_dir_for(out) / LAST
    try:
        return out.stat().st_mtime_ns >= last.stat().st_mtime_ns
    except OSError:
        return False


def prepare_checkpoint_dir(out: Path, resume: bool, restart: bool) -> Path:
    """The run's checkpoint folder; refuse to silently discard an earlier run's progress, and
    clear what a finished run (or ``--restart``) left."""
    check_run(out, resume, restart)
    folder = checkpoint_dir_for(out)
    if not resume:
        remove_checkpoint(folder)
    return folder


def remove_checkpoint(folder: Path) -> None:
    """Remove what geoloc writes into a checkpoint folder, and the folder once it is empty."""
    for name in (LAST, BEST):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(folder / "pca", ignore_errors=True)
    try:
        folder.rmdir()
    except OSError:  # missing, or holding something geoloc did not put there
        pass


def check_out(out: Path) -> Path:
    """The model file to write, refused before any photo is read when it cannot be one: a
    folder, another suffix, a folder that does not exist or cannot be written."""
    from geoloc.files import FILE, check_writable, file_target, output_kind

    from geoloc.errors import GeolocError

    out = Path(out).expanduser()
    try:
        if out.is_dir():
            raise UsageError(f"--out {out} is a folder; give the path of the model file to write")
        kind = FILE if os.fspath(out) != "-" and output_kind(out, "model") == FILE else None
    except OSError as exc:  # a name too long for the file system, say
        raise UsageError(f"--out {out}: {exc.strerror or exc}") from None
    except GeolocError as exc:  # a socket, a block device: not a file either
        raise UsageError(f"--out {out}: give a model file ({str(exc).split(': ', 1)[-1]})") from None
    if kind != FILE:
        raise UsageError(f"--out {out}: give a file, not standard output or a device: the model is written "
                         "whole, and its checkpoint folder for --resume goes next to it")
    out = file_target(out)  # a symbolic link is followed: the model and its checkpoints go where it points
    if len(os.fsencode(out.name + ".ckpt")) > 255:
        raise UsageError(f"--out {out}: the name is too long for its checkpoint folder ({out.name}.ckpt) beside it")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the path of the model file to write")
    if out.suffix.lower() != ".safetensors":
        raise UsageError(f"--out {out}: model files are safetensors; give a name ending in .safetensors")
    check_writable(out, "model")  # its checkpoint folder goes next to it
    return out
