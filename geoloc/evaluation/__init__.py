"""Evaluation: recall@N and position error, on the user's photos or on standard benchmarks.

One module per job: :mod:`~geoloc.evaluation.datasets` reads benchmark formats,
:mod:`~geoloc.evaluation.metrics` computes the figures, :mod:`~geoloc.evaluation.cache` keeps
descriptors between runs, :mod:`~geoloc.evaluation.runner` evaluates one model on one split,
:mod:`~geoloc.evaluation.compare` several models, :mod:`~geoloc.evaluation.request` checks and
runs what ``geoloc eval`` asks, and :mod:`~geoloc.evaluation.report` writes the CSV and the plot.
The public names below are the stable import path.
"""

from __future__ import annotations

from geoloc.evaluation.compare import STUDY_MODELS, CompareRow, compare_models, parse_model_list
from geoloc.evaluation.datasets import (
    load_dataset,
    parse_utm_name,
    read_csv_split,
    read_exif_split,
    read_location_csv,
    read_utm_folder,
)
from geoloc.evaluation.dbstruct import read_dbstruct
from geoloc.evaluation.metrics import (
    RECALL_NS,
    QueryOutcome,
    Retrieved,
    Summary,
    error_stats,
    first_hit_rank,
    recall_at,
    recall_curve,
    summarize,
)
from geoloc.evaluation.report import plot_recall_curves, save_query_csv, write_query_csv
from geoloc.evaluation.request import EvalRequest, EvalRun, run_eval
from geoloc.evaluation.existing import evaluate_database
from geoloc.evaluation.runner import EvalConfig, EvalResult, evaluate_split
from geoloc.evaluation.split import Positions, Split

__all__ = [
    "RECALL_NS",
    "STUDY_MODELS",
    "CompareRow",
    "EvalConfig",
    "EvalRequest",
    "EvalResult",
    "EvalRun",
    "Positions",
    "QueryOutcome",
    "Retrieved",
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
    "run_eval",
    "save_query_csv",
    "summarize",
    "write_query_csv",
]
