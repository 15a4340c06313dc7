"""Dataset commands: ``import``, ``check``, ``split`` and ``export`` (datasets and model bundles)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from segflow.cli._common import cli_errors, console
from segflow.data.formats import FORMAT_MODULES

if TYPE_CHECKING:
    from segflow.data.formats.base import ImportReport

_FORMATS = ", ".join(m for m in FORMAT_MODULES if not m.endswith("_export"))  # importers


@cli_errors
def import_(
    format: Annotated[
        str, typer.Argument(help=f"Annotation format: {_FORMATS}.", show_default=False)
    ],
    src: Annotated[Path, typer.Argument(help="Annotation file or folder (never modified).")],
    out: Annotated[Path, typer.Argument(help="New canonical dataset folder to create.")],
    classes: Annotated[
        Path | None,
        typer.Option(
            help="Classes file (txt: a name per line; yaml/json: names or {name, color, aliases})."
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option(help="Unknown labels and skipped shapes are errors.")
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the images when they are not beside the annotations "
            "(geojson: may be the image file)."
        ),
    ] = None,
    crowd: Annotated[
        str, typer.Option(help="COCO iscrowd regions: 'class' or 'ignore'.")
    ] = "class",
    line_width: Annotated[int, typer.Option(help="LabelMe line/linestrip width in pixels.")] = 10,
    point_radius: Annotated[int, typer.Option(help="LabelMe point radius in pixels.")] = 5,
    label_property: Annotated[
        str | None, typer.Option(help="GeoJSON feature property holding the class name.")
    ] = None,
    coords: Annotated[str, typer.Option(help="GeoJSON coordinates: auto, pixel or crs.")] = "auto",
    img_suffix: Annotated[
        str | None, typer.Option(help="MMSeg image suffix, e.g. _img.jpg.")
    ] = None,
    seg_suffix: Annotated[
        str | None, typer.Option(help="MMSeg annotation suffix, e.g. _gt.png.")
    ] = None,
    reduce_zero_label: Annotated[
        bool, typer.Option(help="MMSeg: label 0 is ignore and the others shift down by one.")
    ] = False,
    palette: Annotated[
        Path | None, typer.Option(help="masks: classes file whose colours decode RGB masks.")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip broken samples with a warning instead of failing.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Replace OUT if it is an existing segflow dataset.")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="Dataset name (default: OUT's folder name).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: CPUs, max 8).")
    ] = None,
) -> None:
    """Import annotations into a new canonical dataset (images/, masks/, dataset.yaml)."""
    from segflow.api import import_dataset

    report = import_dataset(
        format,
        src,
        out,
        progress=True,
        classes=classes,
        strict=strict,
        images=images,
        crowd=crowd,
        line_width=line_width,
        point_radius=point_radius,
        label_property=label_property,
        coords=coords,
        img_suffix=img_suffix,
        seg_suffix=seg_suffix,
        reduce_zero_label=reduce_zero_label,
        palette=palette,
        skip_bad=skip_bad,
        overwrite=overwrite,
        name=name,
        workers=workers,
    )
    _print_import_summary(report)


def _print_import_summary(report: ImportReport) -> None:
    from rich.table import Table

    pixels = report.class_pixels
    total = sum(pixels.values()) or 1
    table = Table(
        title=f"{report.out}: {len(report.samples)} images, {len(report.meta.classes)} classes"
    )
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share", justify="right")
    for c in report.meta.classes:
        table.add_row(str(c.id), c.name, f"{pixels[c.name]:,}", f"{pixels[c.name] / total:.2%}")
    if pixels["ignore"]:
        table.add_row(
            str(report.meta.ignore_index),
            "(ignore)",
            f"{pixels['ignore']:,}",
            f"{pixels['ignore'] / total:.2%}",
        )
    console().print(table)
    if report.skipped:
        console().print(f"skipped {len(report.skipped)} broken sample(s); see the warnings above")


@cli_errors
def check(
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder.")],
    report: Annotated[
        Path | None, typer.Option(help="HTML report path (default DATASET/qa_report.html).")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Findings path (default DATASET/qa.json).")
    ] = None,
    exclude: Annotated[
        Path | None,
        typer.Option(
            help="File of stems to drop from later stages (stored in dataset.yaml; no file is deleted)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: CPUs, max 8).")
    ] = None,
) -> None:
    """Check data quality: broken files, mismatches, duplicates, leakage, class balance."""
    from rich.table import Table

    from segflow.api import check as run_check

    result = run_check(
        dataset, report=report, json_out=json_out, exclude=exclude, workers=workers, progress=True
    )
    rep = result.report
    out = console()
    if rep.findings:
        table = Table(title=f"{rep.num_images} images, {rep.num_masks} masks")
        table.add_column("severity")
        table.add_column("check")
        table.add_column("finding")
        styles = {"error": "red", "warning": "yellow", "info": "blue"}
        for f in rep.findings:
            table.add_row(f"[{styles[f.severity.value]}]{f.severity.value}[/]", f.check, f.message)
        out.print(table)
    else:
        out.print(f"{rep.num_images} images, {rep.num_masks} masks: no problems found")
    for kind, path in result.paths.items():
        out.print(f"{kind}: {path}")
    if rep.has_errors:
        raise typer.Exit(1)


@cli_errors
def split(
    dataset: Annotated[Path, typer.Argument(help="Canonical dataset folder.")],
    val: Annotated[float, typer.Option(help="Share of images for validation.")] = 0.1,
    test: Annotated[float, typer.Option(help="Share of images held out for testing.")] = 0.1,
    stratify: Annotated[
        bool, typer.Option(help="Keep the class-presence mix similar in every split.")
    ] = False,
    group_by: Annotated[
        str | None,
        typer.Option(
            help="Regex on the stem whose first group names the sample's group, e.g. 'Image_(\\d+)'."
        ),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Also assign K folds over the non-test images.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same splits).")] = 0,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: CPUs, max 8).")
    ] = None,
) -> None:
    """Write splits.csv: random, stratified, grouped or k-fold; prints class presence per split."""
    from rich.table import Table

    from segflow.data.splits import make_splits

    result = make_splits(
        dataset,
        val=val,
        test=test,
        stratify=stratify,
        group_by=group_by,
        folds=folds,
        seed=seed,
        workers=workers,
        progress=True,
    )
    for w in result.warnings:
        import logging

        logging.getLogger("segflow.split").warning(w)
    table = Table(title=f"{result.path}")
    table.add_column("class")
    for part in result.parts:
        table.add_column(part, justify="right")
    table.add_row("images", *[str(result.images.get(p, 0)) for p in result.parts])
    table.add_row("groups", *[str(result.groups.get(p, 0)) for p in result.parts], end_section=True)
    classes = list(next(iter(result.presence.values())).keys())
    for name in classes:
        table.add_row(name, *[str(result.presence[p][name]) for p in result.parts])
    console().print(table)


@cli_errors
def export(
    target: Annotated[
        str,
        typer.Argument(
            help="A model bundle (NAME.segflow) or a dataset export format (coco).",
            show_default=False,
        ),
    ],
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Dataset formats: DATASET OUT, the dataset folder then the file."),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option("--format", help="Bundles: onnx or torchscript.", show_default=False),
    ] = None,
    opset: Annotated[
        int | None, typer.Option(help="Bundles, ONNX: opset (default: the exporter's, 20).")
    ] = None,
    exporter: Annotated[
        str, typer.Option(help="Bundles, ONNX: auto (legacy, then dynamo), legacy or dynamo.")
    ] = "auto",
    tolerance: Annotated[
        float, typer.Option(help="Bundles: max |logit difference| allowed against PyTorch.")
    ] = 1e-4,
    overwrite: Annotated[
        bool, typer.Option(help="Dataset formats: replace OUT if it exists.")
    ] = False,
) -> None:
    """Export a model bundle (ONNX, TorchScript) or a dataset for re-labelling.

    `segflow export BUNDLE --format onnx` writes BUNDLE/model.onnx after checking it against
    PyTorch; `segflow export coco DATASET OUT.json` writes a dataset as COCO.
    """
    from segflow.errors import UsageError

    paths = paths or []
    bundle = Path(target)
    if (
        target.endswith(".segflow")
        or (bundle / "bundle.yaml").is_file()
        or (bundle / "ensemble.yaml").is_file()
    ):
        if paths:
            raise UsageError(
                f"segflow export BUNDLE takes no further paths, got {', '.join(map(str, paths))}"
            )
        if format is None:
            raise UsageError("--format is required to export a bundle: onnx or torchscript")
        _export_bundle(bundle, format, opset, exporter, tolerance)
        return
    from segflow.api import export_dataset
    from segflow.data.formats import EXPORTERS
    from segflow.export.registry import MODEL_EXPORTERS

    if target not in EXPORTERS:
        hint = (
            f" (models: segflow export BUNDLE --format {target})"
            if target in MODEL_EXPORTERS
            else ""
        )
        raise UsageError(
            f"unknown export target {target!r}: give a bundle folder (NAME.segflow) or a "
            f"dataset format ({', '.join(EXPORTERS.names())}){hint}"
        )
    if format is not None or opset is not None or exporter != "auto":
        raise UsageError(
            f"--format, --opset and --exporter are for bundles, not the {target} dataset format"
        )
    if len(paths) != 2:
        raise UsageError(f"segflow export {target} takes DATASET OUT, got {len(paths)} path(s)")
    written = export_dataset(target, paths[0], paths[1], overwrite=overwrite, progress=True)
    console().print(f"wrote {written}")


def _export_bundle(
    bundle: Path, format: str, opset: int | None, exporter: str, tolerance: float
) -> None:
    from segflow.api import export_model
    from segflow.models.ensemble import is_ensemble, read_ensemble

    infos = export_model(bundle, format=format, opset=opset, exporter=exporter, tolerance=tolerance)
    if isinstance(infos, list):  # an ensemble: one export per member
        members = read_ensemble(bundle).members if is_ensemble(bundle) else []
        for member, info in zip(members, infos, strict=True):
            _print_export(member, info)
        return
    _print_export(bundle, infos)


def _print_export(bundle: Path, info: Any) -> None:
    from segflow.export.verify import describe_parity

    file = bundle / info.file
    opset_text = f", opset {info.opset}" if info.opset is not None else ""
    out = console()  # one line each, unwrapped: paths stay copyable; no markup in paths
    size = file.stat().st_size / 1e6
    out.print(
        f"wrote {file} ({size:.1f} MB, {info.exporter}{opset_text})", soft_wrap=True, markup=False
    )
    out.print(f"parity with PyTorch: {describe_parity(info.parity)}", soft_wrap=True, markup=False)
    if info.bf16 is not None:
        b = info.bf16
        verdict = "backend auto may use bf16" if b.safe else "unsafe: backend auto keeps f32"
        out.print(
            f"bf16 keeps {b.agreement:.2%} of class decisions (>= {b.min_agreement:.1%}) on the "
            f"{b.inputs}: {verdict}",
            soft_wrap=True,
            markup=False,
        )


def register(app: typer.Typer) -> None:
    """Add the dataset commands to ``app``."""
    app.command("import", no_args_is_help=True)(import_)
    app.command(no_args_is_help=True)(check)
    app.command(no_args_is_help=True)(split)
    app.command(no_args_is_help=True)(export)
