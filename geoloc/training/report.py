"""What a training run reports: one record per epoch, and the line people read for it.

The run talks to people through the one progress protocol (:class:`geoloc.progress.Progress`);
an epoch's line is a message like any other, and the records stay in the run's history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EpochReport:
    epoch: int
    loss: float | None            # mean loss of the tuples trained this epoch (None: epoch 0)
    objective: float              # exact triplet objective over all training queries after the epoch
    recall: dict[str, float] | None
    lr: float
    trained: int                  # tuples that had a violating negative and were trained
    queries: int
    seconds: float
    best: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def format_epoch(report: EpochReport, epochs: int) -> str:
    head = "start" if report.epoch == 0 else f"epoch {report.epoch}/{epochs}"
    parts = [f"{head:>12}"]
    if report.loss is not None:
        parts.append(f"loss {report.loss:.4f} ({report.trained}/{report.queries} tuples)")
    parts.append(f"objective {report.objective:.4f}")
    if report.recall is not None:
        parts.append("recall@1/5/10 " + "/".join(f"{report.recall[k]:.2f}" for k in ("1", "5", "10")))
    parts.append(f"{report.seconds:.0f}s")
    if report.best:
        parts.append("best")
    return "  ".join(parts)
