"""The ``segflow`` command line: each command is a thin wrapper over one library function.

Nothing heavy is imported at module level (``segflow --help`` must start fast): every command
imports its stage inside the function body.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from segflow._version import __version__
from segflow.cli import (
    data_commands,
    eval_commands,
    infer_commands,
    review_commands,
    serve_commands,
    train_commands,
)
from segflow.cli._common import OneLineHandler, cli_errors, console, quiet_training_logs

app = typer.Typer(
    name="segflow",
    help="Annotated images -> trained, evaluated, exported and served segmentation models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"segflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show informational messages.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Show errors only.")] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show the full traceback of any error (or SEGFLOW_DEBUG=1)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Annotated images -> trained, evaluated, exported and served segmentation models."""
    if debug:  # read by the error boundary, in this process and its workers
        os.environ["SEGFLOW_DEBUG"] = "1"
    logger = logging.getLogger("segflow")
    logger.handlers[:] = [OneLineHandler()]
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)


data_commands.register(app)
train_commands.register(app)
eval_commands.register(app)
infer_commands.register(app)
serve_commands.register(app)
review_commands.register(app)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Folder for everything the quick start writes.")] = Path(
        "quickstart"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier quick start folder.")] = False,
) -> None:
    """Run the whole cycle on the bundled sample dataset (24 fluorescence nuclei images, CC0).

    import -> check -> split -> plan (a config fitted to the data and a 4-minute budget) ->
    train -> eval -> export (ONNX) -> predict, each stage the library function its command calls.
    """
    from segflow.quickstart import run_quickstart

    quiet_training_logs()
    result = cli_errors(run_quickstart)(out, overwrite=overwrite, progress=True)
    con = console()
    con.print("[bold]segflow quickstart[/] ran these commands:")
    for cmd in result.commands:
        con.print(f"  $ {cmd}")
    if result.plan:
        con.print(f"the plan (every reason is a comment in {result.outputs['plan']}):")
        for decision, settings in result.plan:
            con.print(f"  {decision:>12s}: {settings}", highlight=False, markup=False)
    for name, path in result.outputs.items():
        con.print(f"{name}: {path}")
    if result.best is not None:
        con.print(f"best validation mIoU: {result.best:.3f}")
    if result.test_metrics:
        scores = ", ".join(f"{k} {v:.3f}" for k, v in result.test_metrics.items())
        con.print(f"test split: {scores}")
    if result.mlflow_ui:
        con.print(f"see every metric in MLflow: {result.mlflow_ui}")


def run() -> None:
    """Console-script entry point."""
    # albumentations asks PyPI for a newer version on every import (and in every worker):
    # never from a CLI run, which must work offline and fast.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    app()
