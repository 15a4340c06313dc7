"""Dataset commands: ``import``, ``check``, ``split`` and ``export coco``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from segflow.cli._common import cli_errors, console
from segflow.data.formats import FORMAT_MODULES

_FORMATS = ", ".join(FORMAT_MODULES)


@cli_errors
def import_(
    format: Annotated[str, typer.Argument(help=f"Annotation format: {_FORMATS}.", show_default=False)],
    src: Annotated[Path, typer.Argument(help="Annotation file or folder (never modified).")],
    out: Annotated[Path, typer.Argument(help="New canonical dataset folder to create.")],
    classes: Annotated[
        Optional[Path], typer.Option(help="Classes file (txt: a name per line; yaml/json: names or {name, color, aliases}).")
    ] = None,
    strict: Annotated[bool, typer.Option(help="Unknown labels and skipped shapes are errors.")] = False,
    images: Annotated[
        Optional[Path], typer.Option(help="Folder holding the images when they are not beside the annotations.")
    ] = None,
    crowd: Annotated[str, typer.Option(help="COCO iscrowd regions: 'class' or 'ignore'.")] = "class",
    line_width: Annotated[int, typer.Option(help="LabelMe line/linestrip width in pixels.")] = 10,
    point_radius: Annotated[int, typer.Option(help="LabelMe point radius in pixels.")] = 5,
    label_property: Annotated[
        Optional[str], typer.Option(help="GeoJSON feature property holding the class name.")
    ] = None,
    coords: Annotated[str, typer.Option(help="GeoJSON coordinates: auto, pixel or crs.")] = "auto",
    img_suffix: Annotated[Optional[str], typer.Option(help="MMSeg image suffix, e.g. _img.jpg.")] = None,
    seg_suffix: Annotated[Optional[str], typer.Option(help="MMSeg annotation suffix, e.g. _gt.png.")] = None,
    reduce_zero_label: Annotated[
        bool, typer.Option(help="MMSeg: label 0 is ignore and the others shift down by one.")
    ] = False,
    palette: Annotated[
        Optional[Path], typer.Option(help="masks: classes file whose colours decode RGB masks.")
    ] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip broken samples with a warning instead of failing.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it is an existing segflow dataset.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Dataset name (default: OUT's folder name).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes (default: CPUs, max 8).")] = None,
) -> None:
    """Import annotations into a new canonical dataset (images/, masks/, dataset.yaml)."""
    from pydantic import ValidationError

    from segflow.data.formats.base import ImportOptions, run_import
    from segflow.errors import UsageError

    try:
        options = ImportOptions(
            classes=classes, strict=strict, images=images, crowd=crowd, line_width=line_width,  # type: ignore[arg-type]
            point_radius=point_radius, label_property=label_property, coords=coords,  # type: ignore[arg-type]
            img_suffix=img_suffix, seg_suffix=seg_suffix, reduce_zero_label=reduce_zero_label,
            palette=palette, skip_bad=skip_bad, overwrite=overwrite, name=name, workers=workers,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}") from None
    report = run_import(format, src, out, options, progress=True)
    _print_import_summary(report)


def _print_import_summary(report: object) -> None:
    from rich.table import Table

    from segflow.data.formats.base import ImportReport

    assert isinstance(report, ImportReport)
    pixels = report.class_pixels
    total = sum(pixels.values()) or 1
    table = Table(title=f"{report.out}: {len(report.samples)} images, {len(report.meta.classes)} classes")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    table.add_column("share", justify="right")
    for c in report.meta.classes:
        table.add_row(str(c.id), c.name, f"{pixels[c.name]:,}", f"{pixels[c.name] / total:.2%}")
    if pixels["ignore"]:
        table.add_row(str(report.meta.ignore_index), "(ignore)", f"{pixels['ignore']:,}", f"{pixels['ignore'] / total:.2%}")
    console().print(table)
    if report.skipped:
        console().print(f"skipped {len(report.skipped)} broken sample(s); see the warnings above")


def register(app: typer.Typer) -> None:
    """Add the dataset commands to ``app``."""
    app.command("import", no_args_is_help=True)(import_)
