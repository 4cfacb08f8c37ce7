"""The reproduction study: several models or poolings on one split, one table.

The NetVLAD paper's central comparison is its pooling against max and average pooling on the
same backbone, then the dimensionality after PCA whitening (4096 / 512 / 128). Models whose
weights are not on this machine are listed as skipped with the command that fetches them,
instead of failing the whole study or silently leaving rows out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geoloc.errors import ModelError, UsageError, WeightsUnavailableError
from geoloc.evaluation.split import Split
from geoloc.progress import Progress
from geoloc.evaluation.runner import (
    EvalConfig,
    EvalResult,
    evaluate_split,
    with_model,
)

#: ``--compare study``: the rows of the reproduction table, in the order they are printed.
STUDY_MODELS: tuple[str, ...] = (
    "netvlad-vgg16-pitts30k",
    "netvlad-vgg16-pitts30k-512",
    "netvlad-vgg16-pitts30k-128",
    "lite0-vlad",
    "lite0-max",
    "lite0-avg",
    "lite0-gem",
)


@dataclass
class CompareRow:
    model: str
    result: EvalResult | None = None
    skipped: str | None = None  # why this row has no figures

    def to_json(self) -> dict:
        if self.result is None:
            return {"model": self.model, "status": "skipped", "reason": self.skipped}
        data = self.result.to_json()
        data["status"] = "ok"
        data["model"] = self.model
        return data


def parse_model_list(text: str) -> list[str]:
    """``m1,m2,...`` (or ``study``) → model names/files, each checked before any work starts."""
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "study":
            names.extend(STUDY_MODELS)
        else:
            names.append(part)
    seen: set[str] = set()
    unique = [n for n in names if not (n in seen or seen.add(n))]
    if not unique:
        raise UsageError("--compare needs at least one model name, e.g. --compare lite0-vlad,lite0-max")
    from geoloc.models.registry import get_entry

    for name in unique:
        if Path(name).expanduser().is_file():
            continue
        if "/" in name or Path(name).suffix.lower() in (".safetensors", ".mat", ".pth", ".tar", ".pt"):
            raise UsageError(f"--compare: model file {name} not found")
        try:
            get_entry(name)
        except ModelError as exc:
            raise UsageError(f"--compare: {exc}") from None
    return unique


def compare_models(
    split: Split,
    models: Sequence[str],
    config: EvalConfig,
    progress: Progress | None = None,
) -> list[CompareRow]:
    """Evaluate every model on ``split``, each without and (when asked) with re-ranking: two
    rows a model, so the table shows what verification adds. Missing weights make a skipped
    row, not an error."""
    from dataclasses import replace

    rows: list[CompareRow] = []
    passes = [False, True] if config.rerank else [False]
    for name in models:
        for rerank in passes:
            label = f"{name} +rerank" if rerank else name
            try:
                result = evaluate_split(split, replace(with_model(config, name), rerank=rerank), progress)
            except WeightsUnavailableError:
                rows.append(CompareRow(label, skipped=f"weights not available offline (geoloc models download {name})"))
                break
            if rerank and not result.reranked:
                break  # no maps stored: the plain row says it all
            rows.append(CompareRow(label, result=result))
    return rows
