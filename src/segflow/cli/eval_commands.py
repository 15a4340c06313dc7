"""Evaluation commands: ``eval`` and ``tune``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from segflow.cli._common import cli_errors, console, show_backend_choice


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.4f}"


def _applied(settings: dict[str, Any]) -> str:
    """One line: the threshold, TTA and post-processing the scores were measured with."""
    post = settings.get("postprocess") or {}
    parts = [f"tta {','.join(settings.get('tta') or []) or 'none'}"]
    if settings.get("threshold") is not None:
        parts.insert(0, f"threshold {settings['threshold']:g}")
    sizes = ", ".join(f"{c}={n}" for c, n in (post.get("min_size") or {}).items())
    parts.append(f"min-size {sizes or 'none'}")
    for key in ("fill_holes", "keep_largest"):
        parts.append(f"{key.replace('_', '-')} {','.join(post.get(key) or []) or 'none'}")
    flags = settings.get("from_flags") or []
    parts.append(f"from flags: {', '.join(flags)}" if flags else "all from the bundle")
    return " · ".join(parts)


def _quiet_mlflow() -> None:
    """Keep MLflow's and alembic's INFO chatter out of the terminal (warnings still show)."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@cli_errors
def eval_(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (NAME.segflow).")],
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder with masks.")],
    split: Annotated[str, typer.Option(help="train, val, test (from splits.csv) or all.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder (default: RUN/eval_SPLIT/ beside a run's bundle, else "
            "./eval_BUNDLE_SPLIT/)."
        ),
    ] = None,
    roi: Annotated[
        Path | None,
        typer.Option(
            help="Folder of region-of-interest masks, one per image (same stem, non-zero = scored)."
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(help="auto (the fastest measured here, cached), torch, onnx or openvino."),
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native and safe for the bundle), f32 or bf16.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the CPUs this process may use).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:1... (torch backend).")
    ] = "auto",
    tta: Annotated[
        str | None,
        typer.Option(
            help="Flips averaged in: h, v, hv (comma-separated) or none; default: the bundle's."
        ),
    ] = None,
    with_: Annotated[
        list[Path] | None,
        typer.Option(
            "--with", metavar="BUNDLE2", help="Another bundle to ensemble with BUNDLE (repeatable)."
        ),
    ] = None,
    combine: Annotated[
        str | None,
        typer.Option(
            help="Ensemble: 'mean' of probabilities or majority 'vote' (default: an ensemble "
            "bundle's rule, else mean)."
        ),
    ] = None,
    tile: Annotated[int | None, typer.Option(help="Tile size (default: the bundle's).")] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Tile overlap share (default: the bundle's).")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="Tiles per forward pass.")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Binary threshold (default: the bundle's).")
    ] = None,
    min_size: Annotated[
        list[str] | None,
        typer.Option(help="Drop components under N px: N, or CLASS=N (repeatable)."),
    ] = None,
    fill_holes: Annotated[
        list[str] | None, typer.Option(help="Fill holes of these classes ('all' or names/ids).")
    ] = None,
    keep_largest: Annotated[
        list[str] | None, typer.Option(help="Keep only the largest component of these classes.")
    ] = None,
    worst_k: Annotated[int, typer.Option(help="Worst and best images to picture.")] = 8,
) -> None:
    """Score a model on a dataset split: metrics.json, per_image.csv and report.html."""
    from rich.table import Table

    from segflow.evaluate.evaluator import evaluate

    _quiet_mlflow()
    show_backend_choice()
    bundles = [bundle, *(with_ or [])]
    result = evaluate(
        bundles if len(bundles) > 1 else bundle,
        dataset,
        split=split,
        out=out,
        roi=roi,
        backend=backend,
        device=device,
        tta=tta,
        worst_k=worst_k,
        progress=True,
        precision=precision,
        threads=threads,
        combine=combine,
        tile=tile,
        overlap=overlap,
        batch=batch,
        threshold=threshold,
        min_size=min_size or [],
        fill_holes=fill_holes or [],
        keep_largest=keep_largest or [],
    )
    m = result.metrics
    table = Table(title=f"{m['bundle']['name']} on {m['dataset']['name']}/{m['split']}: "
                  f"{m['n_images']} images")  # fmt: skip
    for col in ("class", "IoU", "Dice", "precision", "recall"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, s in m["per_class"].items():
        table.add_row(
            name, _fmt(s["iou"]), _fmt(s["dice"]), _fmt(s["precision"]), _fmt(s["recall"])
        )
    con = console()
    con.print(table)
    con.print(
        f"mIoU {_fmt(m['macro']['iou'])}  mDice {_fmt(m['macro']['dice'])}  (macro over classes; "
        f"without background: mIoU {_fmt(m['macro_fg']['iou'])})",
        soft_wrap=True,
    )
    con.print(f"pixel accuracy {_fmt(m['micro']['accuracy'])} (micro)", soft_wrap=True)
    con.print(f"applied: {_applied(m['settings'])}", soft_wrap=True)
    con.print(f"report: {result.report}", soft_wrap=True)


@cli_errors
def tune(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (NAME.segflow).")],
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder with masks.")],
    split: Annotated[str, typer.Option(help="The split to tune on (from splits.csv).")] = "val",
    out: Annotated[
        Path | None,
        typer.Option(help="The tuned bundle (default: NAME.tuned.segflow beside BUNDLE)."),
    ] = None,
    in_place: Annotated[
        bool, typer.Option("--in-place", help="Update BUNDLE itself (atomically).")
    ] = False,
    try_tta: Annotated[
        bool, typer.Option(help="Try flip TTA (h,v): a second inference pass.")
    ] = True,
    margin: Annotated[
        float, typer.Option(help="Keep a step only when it raises the score by more than this.")
    ] = 0.002,
    backend: Annotated[
        str,
        typer.Option(help="auto (the fastest measured here, cached), torch, onnx or openvino."),
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native and safe for the bundle), f32 or bf16.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the CPUs this process may use).")
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:1... (torch backend).")
    ] = "auto",
) -> None:
    """Choose the threshold, flip TTA and post-processing on a validation split."""
    from segflow.api import tune as run_tune

    show_backend_choice()
    result = run_tune(
        bundle,
        dataset,
        split=split,
        out=out,
        in_place=in_place,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        try_tta=try_tta,
        margin=margin,
        progress=True,
    )
    console().print(tuning_table(result))
    console().print(f"tuned bundle: {result.bundle}", soft_wrap=True)


def tuning_table(result: Any) -> Any:
    """A rich table: each step tried, its score before and with it, kept or not."""
    from rich.table import Table

    table = Table(
        title=f"{result.metric} on {result.split} ({result.images} images): "
        f"{_fmt(result.before)} -> {_fmt(result.after)}"
    )
    for col in ("step", "class", "value", "before", "with it", "kept", "note"):
        table.add_column(col, justify="right" if col in ("before", "with it") else "left")
    for s in result.steps:
        table.add_row(s.step, s.target, str(s.value), _fmt(s.before), _fmt(s.after),
                      "yes" if s.kept else "no", s.note)  # fmt: skip
    return table


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to ``app``."""
    app.command("eval", no_args_is_help=True)(eval_)
    app.command("tune", no_args_is_help=True)(tune)
