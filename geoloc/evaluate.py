"""recall@N, benchmark dataset formats, the descriptor cache and the compare study.

The implementation lives in :mod:`geoloc.evaluation` (one module per job: datasets, metrics,
cache, runner, compare, report); this module is the stable import path named in docs/design.md.
"""

from __future__ import annotations

from geoloc.evaluation.compare import (
    STUDY_MODELS,
    CompareRow,
    compare_models,
    parse_model_list,
)
from geoloc.evaluation.datasets import (
    Positions,
    Split,
    load_dataset,
    parse_utm_name,
    read_csv_split,
    read_dbstruct,
    read_exif_split,
    read_location_csv,
    read_utm_folder,
)
from geoloc.evaluation.metrics import (
    RECALL_NS,
    Candidate,
    QueryOutcome,
    Summary,
    error_stats,
    first_hit_rank,
    recall_at,
    recall_curve,
    summarize,
)
from geoloc.evaluation.report import plot_recall_curves, save_query_csv, write_query_csv
from geoloc.evaluation.runner import (
    EvalConfig,
    EvalProgress,
    EvalResult,
    evaluate_database,
    evaluate_split,
)

__all__ = [
    "RECALL_NS",
    "STUDY_MODELS",
    "Candidate",
    "CompareRow",
    "EvalConfig",
    "EvalProgress",
    "EvalResult",
    "Positions",
    "QueryOutcome",
    "Split",
    "Summary",
    "compare_models",
    "error_stats",
    "evaluate_database",
    "evaluate_split",
    "first_hit_rank",
    "load_dataset",
    "parse_model_list",
    "parse_utm_name",
    "plot_recall_curves",
    "read_csv_split",
    "read_dbstruct",
    "read_exif_split",
    "read_location_csv",
    "read_utm_folder",
    "recall_at",
    "recall_curve",
    "save_query_csv",
    "summarize",
    "write_query_csv",
]
