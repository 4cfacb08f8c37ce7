"""`geoloc models`: list the known models; `geoloc models download NAME`: fetch one ahead of time."""

from __future__ import annotations

import typer

from geoloc.cli.root import app
from geoloc.cli._common import HelpGroup, handle_errors

models_app = typer.Typer(
    cls=HelpGroup,
    help="List the models geoloc knows, or download one ahead of time.",
    no_args_is_help=False,
    invoke_without_command=True,
    rich_markup_mode="rich",
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@handle_errors
def models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the models: name, descriptor size, where the weights come from, whether they are cached, and which one is the default."""  # noqa: E501 (one paragraph: --help wraps it)
    if ctx.invoked_subcommand is not None:
        return
    from geoloc.console import out_console, print_json
    from geoloc.models.registry import is_cached, list_models

    entries = list_models()
    rows = [entry.to_json(cached=is_cached(entry)) for entry in entries]
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(caption="* default model.  offline: needs no download.", caption_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("dim", justify="right", no_wrap=True)
    table.add_column("offline", no_wrap=True)
    table.add_column("cached", no_wrap=True)
    table.add_column("description", ratio=1)
    for row in rows:
        table.add_row(
            row["name"] + (" *" if row["default"] else ""),
            str(row["dim"]),
            "yes" if row["offline"] else "no",
            "yes" if row["cached"] else "no",
            row["description"],
        )
    out_console().print(table)
    _verifier_table()


@models_app.command("verifiers")
@handle_errors
def verifiers(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout."),
) -> None:
    """List the verifiers of `--verifier` (locate, eval): which can run here, and how to install the others."""  # noqa: E501
    from geoloc.console import print_json
    from geoloc.retrieval.rerank import verifier_rows

    if as_json:
        print_json(verifier_rows())
        return
    _verifier_table()


def _verifier_table() -> None:
    from rich.table import Table

    from geoloc.console import out_console
    from geoloc.retrieval.rerank import verifier_rows

    rows = verifier_rows()
    caption = "* default verifier (--verifier NAME on locate and eval)."
    fallback = next((r for r in rows if r["used_by_default"] and not r["default"]), None)
    if fallback:
        caption += f" The default is not installed here: {fallback['name']} (+) verifies instead."
    table = Table(caption=caption, caption_justify="left")
    table.add_column("verifier", style="bold", no_wrap=True)
    table.add_column("installed", no_wrap=True)
    table.add_column("description", ratio=1)
    for row in rows:
        needs = f" (needs {row['package']}: {row['install']})" if not row["available"] else ""
        mark = " *" if row["default"] else " (+)" if row["used_by_default"] else ""
        table.add_row(row["name"] + mark, "yes" if row["available"] else "no", row["description"] + needs)
    out_console().print(table)


@models_app.command("download")
@handle_errors
def download(
    name: str = typer.Argument(..., metavar="NAME", help="A model name from `geoloc models`."),
    as_json: bool = typer.Option(False, "--json", help="Print {name, path, dim, cached} as JSON on stdout."),
) -> None:
    """Fetch a model's weights from the Hugging Face Hub and convert them once, so later commands work offline."""  # noqa: E501
    from geoloc import console
    from geoloc.models.registry import download_model, get_entry, is_cached
    from geoloc.env import offline

    entry = get_entry(name)
    was_cached = is_cached(entry)
    if entry.offline:
        console.info(f"{entry.name} needs no download: its weights ship with an installed package.")
    elif not was_cached and not offline():
        console.info(f"Downloading {entry.name} from {entry.source_text()} …")
    path = download_model(entry.name, downloading=True)
    if as_json:
        console.print_json({"name": entry.name, "path": str(path), "dim": entry.dim, "cached": True})
    else:
        console.info(f"{entry.name}: ready ({entry.dim}-D) at {path}")
