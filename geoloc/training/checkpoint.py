"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, learning-rate schedule, scaler, epoch and position
inside the epoch, the mining cache and previous hard negatives, every random generator's state,
the best result so far and the history. It is written to a temporary file and renamed over the
old one, so a crash while saving leaves the previous checkpoint intact. ``torch.load`` reads it
with ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoloc.errors import GeolocError

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
