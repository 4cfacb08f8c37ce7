"""Rich progress for a training run, on stderr: a bar per phase with loss, a line per epoch."""

from __future__ import annotations

from typing import Any

from geoloc.training.loop import EpochReport, Reporter


class RichReporter(Reporter):
    def __init__(self) -> None:
        from geoloc import console

        self._console = console
        self._progress = console.progress(transient=True)
        self._progress.start()
        self._task = None

    def phase(self, description: str, total: int) -> None:
        self.end_phase()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._task is None:
            return
        rate = f"loss {fields['loss']:.4f}" if fields.get("loss") else ""
        self._progress.update(self._task, advance=n, rate=rate)

    def end_phase(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def epoch_done(self, report: EpochReport, epochs: int) -> None:
        self._console.info(format_epoch(report, epochs))

    def message(self, text: str) -> None:
        self._console.info(text)

    def close(self) -> None:
        self.end_phase()
        self._progress.stop()


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
