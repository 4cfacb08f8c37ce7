"""`geoloc eval`: recall@N and position error, on your photos or on a standard benchmark."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from geoloc.cli import app
from geoloc.cli._common import DB_HELP, handle_errors, resolve_db

_MAX_LISTED_PROBLEMS = 20


@app.command(
    "eval",
    epilog="Examples: geoloc eval 'trip/*.jpg' --db mydb · "
    "geoloc eval --dataset datasets/pitts30k --model netvlad-vgg16-pitts30k --plot recall.png · "
    "geoloc eval --dataset pitts30k_test.mat --images-root Pittsburgh --compare study",
)
@handle_errors
def eval_command(
    queries: Optional[List[Path]] = typer.Argument(
        None, metavar="QUERY...", help="Query photos, folders or quoted globs whose EXIF carries GPS (the truth)."
    ),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP + " Used when no --db-images/--dataset is given."),
    db_images: Optional[List[Path]] = typer.Option(
        None,
        "--db-images",
        help="The database side, built into the eval cache: GPS-tagged photos/folders/globs, or a CSV of "
        "path,lat,lon (repeatable).",
    ),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset",
        help="A benchmark: a folder with images/<split>/{database,queries} in the @UTM@ naming, a dbStruct "
        ".mat (Pittsburgh, Tokyo 24/7), or a CSV of path,lat,lon queries (with --db-images).",
    ),
    images_root: Optional[Path] = typer.Option(
        None, "--images-root", help="dbStruct: the folder the database image names are relative to."
    ),
    queries_root: Optional[Path] = typer.Option(
        None, "--queries-root", help="dbStruct: the folder of the query images (default: queries_real/, query/ "
        "or queries/ under --images-root)."
    ),
    split_name: str = typer.Option("test", "--split", help="Benchmark split folder (images/<split>/...)."),
    utm_zone: Optional[str] = typer.Option(
        None, "--utm-zone", help="dbStruct: UTM zone of its coordinates, e.g. 17T (known for Pittsburgh and Tokyo)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Model name or file (default: the registry default)."),
    compare: Optional[str] = typer.Option(
        None,
        "--compare",
        help="Evaluate several models on the same split and print one table: m1,m2,... or 'study' "
        "(NetVLAD VGG-16 4096/512/128 and EfficientNet-Lite0 with NetVLAD, max, avg and GeM pooling).",
    ),
    threshold_m: Optional[float] = typer.Option(
        None, "--threshold-m", help="A candidate within this many metres of the truth is correct. Default: the "
        "dataset's own (posDistThr), else 25."
    ),
    top_k: int = typer.Option(10, "--top-k", "-k", min=1, help="Candidates per query in --csv output."),
    max_side: Optional[int] = typer.Option(
        None, "--max-side", min=32, help="Resize images to this longest side (default: the model's)."
    ),
    csv_file: Optional[Path] = typer.Option(
        None, "--csv", help="Write the per-query CSV (query, truth, estimate, error, top-k) to FILE ('-': stdout)."
    ),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the recall@N curve as a PNG to FILE."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per network batch."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decoding threads (default: one per core, ≤ 8)."),
) -> None:
    """Measure recall@N and position error against ground truth (EXIF GPS or a benchmark's)."""
    from geoloc.errors import GeolocError, UsageError

    if as_json and csv_file is not None and str(csv_file) == "-":
        raise UsageError("choose one output format on stdout, not --json and --csv -")
    if compare and model:
        raise UsageError("give either --model or --compare, not both")
    if dataset is not None and queries:
        raise UsageError("give either QUERIES or --dataset, not both (a CSV dataset lists its queries)")
    if dataset is None and not queries:
        raise UsageError("give QUERIES (photos with GPS) or --dataset; see geoloc eval --help")
    benchmark = dataset is not None or bool(db_images)
    if benchmark and db is not None:
        raise UsageError("--db evaluates an existing database; with --dataset/--db-images the database is built "
                         "in the eval cache, so leave out --db")
    if compare and not benchmark:
        raise UsageError("--compare builds one database per model: give the database images (--db-images) or a "
                         "--dataset, not an existing --db")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the curve is written as PNG; name the file .png")
    for target in (plot, None if csv_file is None or str(csv_file) == "-" else csv_file):
        if target is not None:
            _check_target(target)

    from geoloc.evaluation.runner import EvalConfig

    config = EvalConfig(
        model=model,
        threshold_m=threshold_m,
        top_k=top_k,
        max_side=max_side,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    config.check()
    models = None
    if compare:
        from geoloc.evaluation.compare import parse_model_list

        models = parse_model_list(compare)

    progress = _RichProgress()
    try:
        if benchmark:
            from geoloc.evaluation.datasets import load_dataset, read_exif_split

            if dataset is not None:
                split = load_dataset(
                    dataset,
                    db_images=db_images or (),
                    images_root=images_root,
                    queries_root=queries_root,
                    split=split_name,
                    utm_zone=utm_zone,
                )
            else:
                split = read_exif_split(queries or [], db_images or [])
            _info(f"{split.name}: {len(split.db_paths)} database images, {len(split.query_paths)} queries "
                  f"({split.kind})")
            if models:
                from geoloc.evaluation.compare import compare_models

                rows = compare_models(split, models, config, progress)
                results = [(r.model, r.result) for r in rows]
            else:
                from geoloc.evaluation.runner import evaluate_split

                rows = None
                result = evaluate_split(split, config, progress)
                results = [(result.model, result)]
        else:
            from geoloc.evaluation.runner import evaluate_database

            rows = None
            result = evaluate_database(resolve_db(db), queries or [], config, progress)
            results = [(result.model, result)]
    finally:
        progress.close()

    done = [(name, r) for name, r in results if r is not None]
    _report_problems(done)

    if csv_file is not None:
        from geoloc.evaluation.report import save_query_csv, write_query_csv

        sections = [(name if rows else None, r.outcomes, r.threshold_m) for name, r in done]
        if str(csv_file) == "-":
            write_query_csv(sections, sys.stdout, top_k)
        else:
            save_query_csv(sections, csv_file, top_k)
            _info(f"per-query CSV written to {csv_file}")
    if plot is not None and done:
        from geoloc.evaluation.report import plot_recall_curves

        title = f"{done[0][1].dataset} ({done[0][1].summary.queries} queries)"
        plot_recall_curves({name: r.summary.curve for name, r in done}, plot, done[0][1].threshold_m, title)
        _info(f"recall curve written to {plot}")

    csv_on_stdout = csv_file is not None and str(csv_file) == "-"
    if as_json:
        from geoloc.console import print_json

        if rows is None:
            print_json(done[0][1].to_json())
        else:
            first = done[0][1] if done else None
            print_json({
                "threshold_m": first.threshold_m if first else config.threshold_m,
                "dataset": first.to_json()["dataset"] if first else None,
                "models": [r.to_json() for r in rows],
            })
    elif rows is None:
        _print_summary(done[0][1], to_stderr=csv_on_stdout)
    else:
        _print_compare(rows, to_stderr=csv_on_stdout)

    if done and all(r.summary.queries == 0 for _, r in done):
        raise GeolocError("no query could be evaluated: none of them could be read (see the warnings above)")
    if not done:
        raise GeolocError("no model could be evaluated: " + "; ".join(f"{r.model}: {r.skipped}" for r in rows or []))


# ------------------------------------------------------------------------------------------------


def _info(message: str) -> None:
    from geoloc import console

    console.info(message)


def _check_target(target: Path) -> None:
    """Fail before hours of extraction when an output file cannot be written."""
    import os

    from geoloc.errors import GeolocError

    target = target.expanduser()
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise GeolocError(f"cannot write {target}: it is a folder")
    if not folder.is_dir():
        raise GeolocError(f"cannot write {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise GeolocError(f"cannot write {target}: folder {folder} is not writable")


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


def _metres(v) -> str:
    if v is None:
        return "–"
    return f"{v:,.1f} m" if v < 10_000 else f"{v / 1000:,.1f} km"


def _num(v) -> str:
    return "–" if v is None else f"{v:,.1f}"


def _console(to_stderr: bool):
    from geoloc import console

    return console.err if to_stderr else console.out_console()


def _print_summary(result, to_stderr: bool = False) -> None:
    from rich.table import Table

    s = result.summary
    t = Table(title=f"geoloc eval — {result.model}", show_header=False, box=None, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("dataset", f"{result.dataset} ({result.kind}, {result.database_images} database images)")
    t.add_row("queries", f"{s.queries}" + (f" ({s.failed} unreadable)" if s.failed else "")
              + (f", {result.skipped_queries} without GPS skipped" if result.skipped_queries else ""))
    t.add_row("threshold", f"{result.threshold_m:g} m")
    t.add_row("recall@1/5/10/20", " / ".join(_pct(s.recall.get(n)) for n in (1, 5, 10, 20)) + " %")
    t.add_row("median error", _metres(s.median_error_m))
    t.add_row("mean error", _metres(s.mean_error_m))
    if s.queries_without_positive:
        t.add_row("no positive", f"{s.queries_without_positive} queries have no database image within the threshold")
    d = result.descriptors
    if d:
        t.add_row("descriptors", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items()))
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
    for col in ("dim", "R@1", "R@5", "R@10", "R@20", "median", "mean"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        if row.result is None:
            t.add_row(row.model, "", "skipped", "", "", "", "", "")
            continue
        r = row.result
        s = r.summary
        t.add_row(row.model, str(r.dim), *(_pct(s.recall.get(n)) for n in (1, 5, 10, 20)),
                  _num(s.median_error_m), _num(s.mean_error_m))
    con = _console(to_stderr)
    con.print(title, markup=False, highlight=False)
    con.print(t)
    for row in rows:
        if row.result is None:
            con.print(f"{row.model} skipped: {row.skipped}", markup=False, highlight=False)


class _RichProgress:
    """One transient progress bar per phase on stderr; per-file problems are listed at the end."""

    def __init__(self):
        self._bar = None
        self._task = None

    def stage(self, description, total):
        from geoloc.console import progress

        if self._bar is None:
            self._bar = progress(transient=True)
            self._bar.start()
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, n=1):
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def warning(self, path, reason):
        pass

    def close(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None
