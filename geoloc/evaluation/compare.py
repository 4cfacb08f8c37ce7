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
    """``m1,m2,...`` (or ``study``) → model names/files, each checked before any work starts.
    Verifier names (or ``verifiers``: all of them) may stand among them: the models are then
    compared by verifier (:func:`compare_models`)."""
    from geoloc.retrieval.rerank import VERIFIERS

    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "study":
            names.extend(STUDY_MODELS)
        elif part == "verifiers":
            names.extend(VERIFIERS)
        else:
            names.append(part)
    seen: set[str] = set()
    unique = [n for n in names if not (n in seen or seen.add(n))]
    if not unique:
        raise UsageError("--compare needs at least one model name, e.g. --compare lite0-vlad,lite0-max")
    from geoloc.models.registry import get_entry

    for name in unique:
        if name in VERIFIERS or Path(name).expanduser().is_file():
            continue
        if "/" in name or Path(name).suffix.lower() in (".safetensors", ".mat", ".pth", ".tar", ".pt"):
            raise UsageError(f"--compare: model file {name} not found")
        try:
            get_entry(name)
        except ModelError as exc:
            raise UsageError(f"--compare: {exc}") from None
    return unique


def split_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--compare``'s names as (models, verifiers)."""
    from geoloc.retrieval.rerank import VERIFIERS

    return [n for n in names if n not in VERIFIERS], [n for n in names if n in VERIFIERS]


def compare_models(
    split: Split,
    models: Sequence[str],
    config: EvalConfig,
    progress: Progress | None = None,
) -> list[CompareRow]:
    """Evaluate every model on ``split``, each without and (when asked) with re-ranking: two
    rows a model, so the table shows what verification adds. With verifier names among
    ``models``, a row per verifier instead of the one re-ranked row (the models: those named, or
    ``config.model``). Missing weights or a verifier's missing package make a skipped row, not
    an error."""
    from dataclasses import replace

    from geoloc.retrieval.learned import SPECS, available
    from geoloc.retrieval.rerank import VERIFIERS

    names, verifiers = split_names(models)
    if verifiers:
        names = names or [config.model]
        passes = [None] + (verifiers if config.rerank else [])
    else:
        passes = [None, config.rerank_verifier] if config.rerank else [None]
    rows: list[CompareRow] = []
    for name in names:
        shown = name or "default model"
        for verifier in passes:
            label = shown if verifier is None else f"{shown} +{verifier}" if verifiers else f"{shown} +rerank"
            learned = VERIFIERS[verifier].learned if verifier else None
            if learned and not available(learned):
                rows.append(CompareRow(label, skipped=f"needs {SPECS[learned].package}: {SPECS[learned].install}"))
                continue
            run = replace(with_model(config, name), rerank=verifier is not None,
                          rerank_verifier=verifier or config.rerank_verifier)
            try:
                result = evaluate_split(split, run, progress)
            except WeightsUnavailableError:
                rows.append(CompareRow(label, skipped=f"weights not available offline (geoloc models download {name})"))
                break
            if verifier is not None and not result.reranked:
                break  # no maps stored: the plain row says it all
            rows.append(CompareRow(label, result=result))
    return rows
