"""`geoloc eval`: recall@N and position error, on your photos or on a standard benchmark."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli.root import app
from geoloc.cli._trips import CLOCK_HELP, EVIDENCE_HELP, SEQUENCE_HELP, TRACK_HELP, trip_config
from geoloc.cli._common import (
    BATCH_HELP,
    at_least,
    DB_HELP,
    PRECISION_HELP,
    note_verifier_fallback,
    VERIFIER_HELP,
    WORKERS_HELP,
    cell,
    handle_errors,
    ray_config,
    resolve_db,
)
from geoloc.files import display_path
from geoloc.formatting import format_distance

_MAX_LISTED_PROBLEMS = 20


@app.command(
    "eval",
    # One example a line (Rich keeps single line breaks in an epilogue).
    epilog="Examples:\ngeoloc eval 'trip/*.jpg' --db mydb\n"
    "geoloc eval --dataset datasets/pitts30k --plot recall.png\n"
    "geoloc eval --dataset pitts.mat --images-root Pittsburgh --compare study",
)
@handle_errors
def eval_command(
    queries: Optional[List[Path]] = typer.Argument(
        None, metavar="QUERY", help="Query photos, folders or quoted globs whose EXIF carries GPS (the truth)."
    ),
    db: Optional[Path] = typer.Option(None, "--db", metavar="DB", help=DB_HELP + " Used when no --db-images/--dataset is given."),
    db_images: Optional[List[Path]] = typer.Option(
        None,
        "--db-images", metavar="PATH",
        help="The database side, built into the eval cache: GPS-tagged photos/folders/globs, or a CSV of "
        "path,lat,lon (repeatable).",
    ),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset", metavar="PATH",
        help="A benchmark: a folder with images/<split>/{database,queries} in the @UTM@ naming, a dbStruct "
        ".mat (Pittsburgh, Tokyo 24/7), or a CSV of path,lat,lon queries (with --db-images).",
    ),
    images_root: Optional[Path] = typer.Option(
        None, "--images-root", metavar="FOLDER", help="dbStruct: the folder the database image names are relative to."
    ),
    queries_root: Optional[Path] = typer.Option(
        None, "--queries-root", metavar="FOLDER", help="dbStruct: the folder of the query images (default: queries_real/, query/ "
        "or queries/ under --images-root)."
    ),
    split_name: str = typer.Option("test", "--split", metavar="NAME", help="Benchmark split folder (images/<split>/...)."),
    utm_zone: Optional[str] = typer.Option(
        None, "--utm-zone", metavar="ZONE", help="dbStruct: UTM zone of its coordinates, e.g. 17T (known for Pittsburgh and Tokyo)."
    ),
    model: Optional[str] = typer.Option(None, "--model", metavar="NAME|FILE", help="Model name or file (default: the registry default)."),
    compare: Optional[str] = typer.Option(
        None,
        "--compare", metavar="MODELS",
        help="Evaluate several models on the same split and print one table: m1,m2,... or 'study' "
        "(NetVLAD VGG-16 4096/512/128 and EfficientNet-Lite0 with NetVLAD, max, avg and GeM pooling).",
    ),
    threshold_m: Optional[float] = typer.Option(
        None, "--threshold-m", metavar="METRES", help="A candidate within this many metres of the truth is correct. Default: the "
        "dataset's own (posDistThr), else 25."
    ),
    top_k: int = typer.Option(10, "--top-k", "-k", metavar="K", callback=at_least(1), help="Candidates per query in --csv output."),
    max_side: Optional[int] = typer.Option(
        None, "--max-side", metavar="PIXELS", callback=at_least(32), help="Resize images to this longest side (default: the model's)."
    ),
    csv_file: Optional[Path] = typer.Option(
        None, "--csv", metavar="FILE", help="Write the per-query CSV (query, truth, estimate, error, top-k) to FILE ('-': stdout)."
    ),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Write the recall@N curve as a PNG to FILE."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or mps."),
    batch_size: int | None = typer.Option(None, "--batch-size", metavar="N", callback=at_least(1), help=BATCH_HELP,
                                             show_default=False),
    precision: str = typer.Option("auto", "--precision", metavar="PRECISION", help=PRECISION_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", metavar="N", callback=at_least(1), help=WORKERS_HELP,
                                         show_default=False),
    no_rerank: bool = typer.Option(
        False, "--no-rerank",
        help="Keep the global search's order: no re-ranking of the top candidates by geometric "
        "verification (--compare shows each model without and with it)."),
    rerank: bool = typer.Option(False, "--rerank", hidden=True, help="Re-rank (the default)."),
    rerank_top: int = typer.Option(20, "--rerank-top", metavar="N", callback=at_least(1), help="Candidates verified per query."),
    verifier: Optional[str] = typer.Option(None, "--verifier", metavar="NAME", help=VERIFIER_HELP, show_default=False),
    engine: str = typer.Option(
        "local", "--engine", metavar="local|ray",
        help="Where the database side of --db-images/--dataset is extracted: this process, or an actor "
        "pool on a Ray cluster (needs geoloc\\[ray]; see geoloc index --engine)."),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", metavar="ADDR", help="With --engine ray: the cluster's head (default: a local Ray).",
        show_default=False),
    track: Optional[List[Path]] = typer.Option(None, "--track", metavar="FILE", help=TRACK_HELP,
                                               show_default=False),
    clock: Optional[List[str]] = typer.Option(None, "--clock", metavar="CAMERA=±HH:MM:SS", help=CLOCK_HELP,
                                              show_default=False),
    evidence: Optional[str] = typer.Option(None, "--evidence", metavar="KINDS", help=EVIDENCE_HELP,
                                           show_default=False),
    sequence: bool = typer.Option(False, "--sequence", help=SEQUENCE_HELP),
    ray_workers: Optional[int] = typer.Option(
        None, "--ray-workers", metavar="N", callback=at_least(1), help="With --engine ray: actors, one model each.",
        show_default=False),
) -> None:
    """Measure recall@N and position error against ground truth (EXIF GPS or a benchmark's)."""
    from geoloc.console import RichProgress
    from geoloc.evaluation.request import EvalRequest, run_eval
    from geoloc.evaluation.runner import EvalConfig

    request = EvalRequest(
        queries=list(queries or []), db=resolve_db(db) if db is not None else None, db_images=list(db_images or []), dataset=dataset,
        images_root=images_root, queries_root=queries_root, split=split_name, utm_zone=utm_zone,
        compare=compare, csv=csv_file, plot=plot, as_json=as_json,
        config=EvalConfig(model=model, threshold_m=threshold_m, top_k=top_k, max_side=max_side,
                          batch_size=batch_size, workers=workers, device=device, precision=precision,
                          rerank=not no_rerank, rerank_top=rerank_top, engine=engine,
                          **({"rerank_verifier": verifier} if verifier else {}),
                          ray=ray_config(engine, ray_address, ray_workers),
                          trips=(trip_config(track, clock, evidence, sequence)
                                 if track or clock or evidence is not None or sequence else None)),
    )
    if rerank and no_rerank:
        from geoloc.errors import UsageError

        raise UsageError("choose --rerank or --no-rerank, not both")
    if verifier is None and not no_rerank and not request.compares_verifiers():
        note_verifier_fallback()
    progress = RichProgress(transient=True, warnings=False)  # problems are listed once, at the end
    try:
        run = run_eval(request, resolve_db(None), progress)
    finally:
        progress.close()
    _report_problems(run.done)
    _write_files(run, request)
    _print_results(run, request)
    run.raise_if_nothing()


# ------------------------------------------------------------------------------------------------


def _info(message: str) -> None:
    from geoloc import console

    console.info(message)


def _write_files(run, request) -> None:
    """The per-query CSV and the recall curve, when asked for (their folders were checked first)."""
    done, top_k = run.done, request.config.top_k
    if request.csv is not None:
        from geoloc.evaluation.report import save_query_csv, write_query_csv

        sections = [(name if run.rows else None, r.outcomes, r.threshold_m) for name, r in done]
        if request.csv_on_stdout:
            write_query_csv(sections, sys.stdout, top_k)
        else:
            save_query_csv(sections, request.csv, top_k)
            _info(f"per-query CSV written to {display_path(request.csv)}")
    if request.plot is not None and done:
        from geoloc.evaluation.report import plot_recall_curves

        first = done[0][1]
        title = f"{first.dataset} ({first.summary.queries} queries)"
        plot_recall_curves({name: r.summary.curve for name, r in done}, request.plot, first.threshold_m, title)
        _info(f"recall curve written to {display_path(request.plot)}")


def _print_results(run, request) -> None:
    """JSON on stdout, or the table for people (on stderr when the CSV has stdout)."""
    done = run.done
    if request.as_json:
        from geoloc.console import print_json

        if run.rows is None:
            print_json(done[0][1].to_json())
        else:
            first = done[0][1] if done else None
            print_json({
                "threshold_m": first.threshold_m if first else request.config.threshold_m,
                "dataset": first.to_json()["dataset"] if first else None,
                "models": [r.to_json() for r in run.rows],
            })
    elif run.rows is None:
        _print_summary(done[0][1], to_stderr=request.csv_on_stdout)
    else:
        _print_compare(run.rows, to_stderr=request.csv_on_stdout)


def _report_problems(done) -> None:
    from geoloc import console

    seen: set[tuple[str, str]] = set()
    problems = []
    for _, r in done:
        for p in r.problems:
            key = (str(p.path), p.reason)
            if key not in seen:
                seen.add(key)
                problems.append(p)
    for p in problems[:_MAX_LISTED_PROBLEMS]:
        console.warn(str(p))
    if len(problems) > _MAX_LISTED_PROBLEMS:
        console.warn(f"… and {len(problems) - _MAX_LISTED_PROBLEMS} more files could not be used")


def _pct(v) -> str:
    import math

    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v) -> str:
    return "–" if v is None else f"{v:,.1f}"


def _console(to_stderr: bool):
    from geoloc import console

    return console.err if to_stderr else console.out_console()


def _row(table, label: str, value: str) -> None:
    table.add_row(label, cell(value))


def _print_summary(result, to_stderr: bool = False) -> None:
    from rich.table import Table

    s = result.summary
    t = Table(title=cell(f"geoloc eval — {result.model}"), show_header=False, box=None, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    _row(t, "dataset", f"{result.dataset} ({result.kind}, {result.database_images} database images)")
    _row(t, "queries", f"{s.queries}" + (f" ({s.failed} unreadable)" if s.failed else "")
              + (f", {result.skipped_queries} without GPS skipped" if result.skipped_queries else ""))
    _row(t, "threshold", f"{result.threshold_m:g} m")
    _row(t, "recall@1/5/10/20", " / ".join(_pct(s.recall.get(n)) for n in (1, 5, 10, 20)) + " %")
    _row(t, "median error", format_distance(s.median_error_m))
    _row(t, "mean error", format_distance(s.mean_error_m))
    calibrated = [(level, c) for level, c in s.calibration.items() if c["queries"]]
    if calibrated:
        # What each confidence level is worth here: the truth inside the radius how often.
        _row(t, "confidence", "; ".join(f"{level} {c['queries']}, {_pct(c['within_radius'])} % within radius"
                                        for level, c in calibrated))
    if s.queries_without_positive:
        _row(t, "no positive", f"{s.queries_without_positive} queries have no database image within the threshold")
    d = result.descriptors
    if d:
        _row(t, "descriptors", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items()))
    _console(to_stderr).print(t)


def _print_compare(rows, to_stderr: bool = False) -> None:
    from rich import box
    from rich.table import Table

    first = next((r.result for r in rows if r.result is not None), None)
    title = "geoloc eval --compare"
    if first is not None:
        title += f" — {first.dataset}: {first.summary.queries} queries, {first.database_images} database images, " \
                 f"within {first.threshold_m:g} m; position error in m"
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    t.add_column("model", no_wrap=True)
    # Short headers: the table has to fit 80 columns (stdout redirected to a file is 80 wide),
    # or Rich truncates the last one.
    for col in ("dim", "R@1", "R@5", "R@10", "R@20", "median", "mean", "s/q"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        if row.result is None:
            t.add_row(cell(row.model), "", "skipped", "", "", "", "", "", "")
            continue
        r = row.result
        s = r.summary
        t.add_row(cell(row.model), str(r.dim), *(_pct(s.recall.get(n)) for n in (1, 5, 10, 20)),
                  _num(s.median_error_m), _num(s.mean_error_m),
                  "" if r.seconds_per_query is None else f"{r.seconds_per_query:.2f}")
    con = _console(to_stderr)
    con.print(cell(title))
    con.print(t)
    for row in rows:
        if row.result is None:
            con.print(cell(f"{row.model} skipped: {row.skipped}"))
