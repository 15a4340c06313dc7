"""Training commands: ``plan``, ``train`` and ``config show``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from segflow.cli._common import cli_errors, console, quiet_training_logs

if TYPE_CHECKING:
    from segflow.train.planner import Plan

config_app = typer.Typer(help="Inspect the training configuration.", no_args_is_help=True)

#: Time budget of ``segflow train --data DATASET`` without a config (it plans one first).
DEFAULT_BUDGET = "10m"
#: File the plan is saved to inside the run folder.
PLAN_FILE = "plan.yaml"


@cli_errors
def plan(
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder.")],
    budget: Annotated[
        str, typer.Option(help="Wall-clock time for training: 90s, 10m, 1h, 1h30m.")
    ] = DEFAULT_BUDGET,
    device: Annotated[str, typer.Option(help="Device to plan for: auto, cpu or cuda.")] = "auto",
    out: Annotated[Path, typer.Option(help="Config file to write.")] = Path("config.yaml"),
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Fix a key the plan must keep, e.g. --set model.encoder=resnet34."
        ),
    ] = None,
    timing: Annotated[
        str, typer.Option(help="Step times: 'measure' (a few seconds here) or 'table'.")
    ] = "measure",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Fit a training config to DATASET, the device and a time budget; every key says why."""
    from segflow.api import plan as run_plan

    result = run_plan(
        dataset,
        budget=budget,
        device=device,
        out=out,
        overrides=set_ or [],
        timing=timing,
        overwrite=overwrite,
        progress=True,
    )
    print_plan(result)
    out_console = console()
    out_console.print(f"wrote {out}", markup=False, soft_wrap=True)
    out_console.print(f"train with: segflow train {out}", markup=False, soft_wrap=True)


def print_plan(result: Plan) -> None:
    """The fingerprint summary and a table of the decisions."""
    from rich.table import Table

    out = console()
    for line in result.header():
        out.print(line, markup=False, soft_wrap=True)
    table = Table(show_lines=False, pad_edge=False, expand=False)
    table.add_column("decision", no_wrap=True)
    table.add_column("settings", overflow="fold", max_width=48)
    table.add_column("why", overflow="fold")
    for name, settings, reason in result.rows():
        table.add_row(name, settings, reason)
    out.print(table)


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
        str | None,
        typer.Option(
            help="K >= 2: make K folds of the non-test images, train one model per fold and "
            "write the ensemble runs/NAME/ensemble.segflow (tuned out of fold); 'all': train "
            "every fold of splits.csv, report mean +- sd."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking server, e.g. http://127.0.0.1:5000.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (folder under train.output).")] = None,
    budget: Annotated[
        str | None,
        typer.Option(help=f"Without CONFIG: time budget of the plan (default {DEFAULT_BUDGET})."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="Without CONFIG: device to plan for (auto, cpu, cuda).")
    ] = "auto",
) -> None:
    """Train a model; writes runs/NAME/ with the best bundle best.segflow/.

    Without CONFIG, a config is planned for DATASET first (see segflow plan) and saved in the run
    folder; --set values apply on top of it.
    """
    import shutil

    from segflow.errors import SegflowError, UsageError
    from segflow.train.ensemble import EnsembleResult, parse_folds
    from segflow.train.runner import FoldsResult
    from segflow.train.runner import train as run_train

    start = time.monotonic()
    if folds is not None:
        parse_folds(folds)  # before a config is planned
    quiet_training_logs()
    if config is None and resume is None and data is not None:
        config, name = _plan_run(data, budget or DEFAULT_BUDGET, device, set_ or [], name, start)
    elif budget is not None:
        raise UsageError(
            "--budget plans a config: use it without CONFIG (or set train.max_minutes in CONFIG)"
        )
    planned = config if config is not None and config.name == PLAN_FILE and resume is None else None
    try:
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
    except SegflowError:
        if planned is not None and [p.name for p in planned.parent.iterdir()] == [PLAN_FILE]:
            shutil.rmtree(planned.parent)  # refused before training: leave no run folder
        raise
    out = console()
    if isinstance(result, EnsembleResult):
        _print_folds(result)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in result.oof.items())
        out.print(f"out of fold: {scores}", markup=False, soft_wrap=True)
        out.print(f"ensemble: {result.ensemble}", markup=False, soft_wrap=True)
        return
    if isinstance(result, FoldsResult):
        _print_folds(result)
        return
    best = f"{result.best:.4f}" if result.best is not None else "n/a"
    out.print(f"best {result.monitor}: {best} after {result.epochs} epoch(s)")
    out.print(f"run: {result.run_dir}")
    out.print(f"bundle: {result.bundle}")


def _print_folds(result: Any) -> None:
    """Each fold's monitored metric, their mean +- sd and the run folder."""
    out = console()
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


def _plan_run(
    data: Path, budget: str, device: str, overrides: list[str], name: str | None, start: float
) -> tuple[Path, str]:
    """Plan a config into the run folder; returns it and the run name."""
    import os

    from segflow.config import load_config
    from segflow.train.launch import external_launch, refuse_planning
    from segflow.train.planner import plan_dataset
    from segflow.train.runner import RUN_NAME_ENV, check_devices, default_run_name

    refuse_planning(external_launch())  # torchrun / srun: plan once, then launch with the config
    base = load_config(None, overrides)
    check_devices(base.train.accelerator, base.train.devices)  # before planning (seconds)
    joining = os.environ.get(RUN_NAME_ENV)  # a process started by a DDP launch: reuse the plan
    if joining and (base.train.output / joining / PLAN_FILE).is_file():
        return base.train.output / joining / PLAN_FILE, joining
    planned = plan_dataset(
        data,
        budget=budget,
        device=device,
        overrides=overrides,
        spent_s=time.monotonic() - start,
        progress=True,
    )
    cfg = planned.config()
    run_name = name or cfg.train.name or default_run_name(cfg)
    path = planned.write(cfg.train.output / run_name / PLAN_FILE)
    out = console()
    out.print(
        f"no config given: planned one for {budget} on {planned.device.name} -> {path}",
        markup=False,
        soft_wrap=True,
    )
    out.print(_summary(cfg), markup=False, soft_wrap=True)
    return path, run_name


def _summary(cfg: Any) -> str:
    terms = " + ".join(f"{v:g} {k}" for k, v in cfg.loss.terms.items())
    limit = f", stops at {cfg.train.max_minutes:g} min" if cfg.train.max_minutes else ""
    return (
        f"  {cfg.model.arch}-{cfg.model.encoder}, {cfg.data.batch_size} x {cfg.data.tile_size}-px "
        f"tiles, {terms}, lr {cfg.optimizer.lr:g}, {cfg.augment.preset} augmentation, "
        f"{cfg.train.epochs} epoch(s){limit}"
    )


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
    app.command(no_args_is_help=True)(plan)
    app.command(no_args_is_help=True)(train)
    app.add_typer(config_app, name="config")
