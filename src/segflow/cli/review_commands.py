"""Review command: ``review`` (label-error ranking and what to label next)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segflow.cli._common import cli_errors, console, show_backend_choice


@cli_errors
def review(
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder with masks.")],
    bundle: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="BUNDLE",
            help="Model bundle to score with (repeatable: probabilities averaged).",
        ),
    ] = None,
    from_run: Annotated[
        Path | None,
        typer.Option(help="A `train --folds K` run: score with its out-of-fold maps instead."),
    ] = None,
    top: Annotated[int, typer.Option(help="Worst images listed here and in stems.txt.")] = 20,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default ./review_DATASETNAME/).")
    ] = None,
    include_train: Annotated[
        bool,
        typer.Option(help="Also score the train split (in-sample: errors are understated)."),
    ] = False,
    unlabeled: Annotated[
        Path | None,
        typer.Option(help="Folder of unlabelled images to rank by uncertainty (label next)."),
    ] = None,
    temperature: Annotated[
        float, typer.Option(help="Softmin temperature of the label-quality score.")
    ] = 0.1,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier review in --out.")] = False,
    backend: Annotated[
        str,
        typer.Option(help="auto (the fastest measured here, cached), torch, onnx or openvino."),
    ] = "auto",
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda, cuda:1... (torch backend).")
    ] = "auto",
) -> None:
    """Rank labelled images by label quality, worst first: review.csv, review.html, stems.txt."""
    from segflow.review.runner import review as run_review

    show_backend_choice()
    result = run_review(
        dataset,
        bundle or [],
        out=out,
        top=top,
        include_train=include_train,
        unlabeled=unlabeled,
        temperature=temperature,
        overwrite=overwrite,
        backend=backend,
        device=device,
        progress=True,
        from_run=from_run,
    )
    con = console()
    suspects = [r for r in result.rows if r["kind"] != "none"]
    con.print(f"{len(result.rows)} images scored, {len(suspects)} with suspicious pixels")
    for r in result.rows[:top]:
        con.print(
            f"{r['rank']:>4d}  {r['score_text']}  {r['stem']}  {r['kind']}  {r['pixels']} px",
            markup=False,
        )
    for name, path in result.files.items():
        con.print(f"{name}: {path}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the review command to ``app``."""
    app.command(no_args_is_help=True)(review)
