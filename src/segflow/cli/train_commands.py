"""Training commands: ``train`` and ``config show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segflow.cli._common import cli_errors, console, quiet_training_logs

config_app = typer.Typer(help="Inspect the training configuration.", no_args_is_help=True)


@cli_errors
def train(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config (defaults when omitted).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Canonical dataset folder (sets data.dataset).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a config key, e.g. --set optimizer.lr=0.001 (repeatable)."
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue a run (its folder or name) from its last checkpoint."),
    ] = None,
    fold: Annotated[int | None, typer.Option(help="Validate on this fold of splits.csv.")] = None,
    folds: Annotated[
        str | None, typer.Option(help="'all': train every fold, report mean +- sd.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking server, e.g. http://127.0.0.1:5000.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under train.output).")] = None,
) -> None:
    """Train a model; writes runs/NAME/ with the best bundle best.segflow/."""
    from segflow.train.runner import FoldsResult
    from segflow.train.runner import train as run_train

    quiet_training_logs()
    result = run_train(
        config,
        data=data,
        overrides=set_ or [],
        resume=resume,
        fold=fold,
        folds=folds,
        tracking_uri=tracking_uri,
        name=name,
        progress=True,
    )
    out = console()
    if isinstance(result, FoldsResult):
        for i, r in enumerate(result.folds):
            out.print(
                f"fold {i}: {result.monitor} = {r.best:.4f}  ({r.bundle})"
                if r.best is not None
                else f"fold {i}: -"
            )
        out.print(
            f"{result.monitor}: {result.mean:.4f} ± {result.sd:.4f} over {len(result.folds)} folds"
        )
        out.print(f"runs: {result.run_dir}")
        return
    best = f"{result.best:.4f}" if result.best is not None else "n/a"
    out.print(f"best {result.monitor}: {best} after {result.epochs} epoch(s)")
    out.print(f"run: {result.run_dir}")
    out.print(f"bundle: {result.bundle}")


@config_app.command("show")
@cli_errors
def show(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config to resolve (defaults when omitted).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key (repeatable).")
    ] = None,
    defaults: Annotated[
        bool, typer.Option(help="Show the defaults, ignoring CONFIG and --set.")
    ] = False,
) -> None:
    """Print every config key with its value and meaning (defaults < CONFIG < --set)."""
    import json

    from segflow.config import describe, load_config

    cfg = load_config(None) if defaults else load_config(config, set_ or [])
    rows = [
        (key, json.dumps(value, ensure_ascii=False), meaning)
        for key, value, meaning in describe(cfg)
    ]
    width = max(len(k) + len(v) for k, v, _ in rows) + 3
    lines = [f"{f'{k}: {v}':<{width}}# {m}" for k, v, m in rows]
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command(no_args_is_help=True)(train)
    app.add_typer(config_app, name="config")
