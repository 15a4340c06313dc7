"""``segflow quickstart``: the whole cycle on the bundled sample dataset, one stage after another.

The sample (24 real nuclei images, CC0; see ``sample_data/nuclei/README.md``) is copied out of
the package, imported like a user's own images + masks folder, checked and split; ``segflow plan``
fits a config to it and a time budget, which is trained, evaluated on the test split, exported to
ONNX and used for predictions. Each stage is the library function its CLI command calls.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from segflow.errors import UsageError

log = logging.getLogger("segflow.quickstart")

SAMPLE = Path(__file__).parent / "sample_data" / "nuclei"

#: Training time the quick start plans for (``segflow plan --budget``): the planner fits the
#: model, tile, batch and epochs into it on whatever device it finds (5 minutes at most on 2 CPU
#: cores, planning and start-up included).
QUICKSTART_BUDGET = "4m"
#: Settings the plan keeps: prediction overlays in MLflow every few epochs.
QUICKSTART_SETTINGS: tuple[str, ...] = ("tracking.images_every=5",)
#: How the planner learns the step time: ``measure`` (time the network here) or ``table``.
QUICKSTART_TIMING = "measure"


@dataclass
class QuickstartResult:
    """Where each stage wrote its output."""

    root: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    best: float | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    mlflow_ui: str = ""
    plan: list[tuple[str, str]] = field(default_factory=list)  # (decision, its settings)


def _split_images(dataset: Path, split: str) -> list[Path]:
    """The image files of one split of ``dataset`` (from its ``splits.csv``)."""
    from segflow.data.dataset import CanonicalDataset

    return [s.image for s in CanonicalDataset(dataset).labelled_samples(split)]


# Long: the tour itself, one short block per pipeline stage in the order a user runs them.
def run_quickstart(
    out: Path, *, overwrite: bool = False, progress: bool = False
) -> QuickstartResult:
    """Run import -> check -> split -> plan -> train -> eval -> export -> predict in ``out``."""
    from segflow.api import check, import_dataset, plan, split

    if out.exists():
        if not overwrite:
            raise UsageError(f"{out}: already exists; pass --overwrite or choose another --out")
        if not (out / ".segflow-quickstart").is_file():
            raise UsageError(
                f"{out}: exists and was not made by segflow quickstart; refusing to delete it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ".segflow-quickstart").write_text("made by segflow quickstart\n")
    result = QuickstartResult(out)
    source = out / "sample_nuclei"
    shutil.copytree(SAMPLE, source)
    classes = out / "classes.txt"
    classes.write_text("background\nnucleus\n")
    dataset = out / "dataset"

    result.commands.append(f"segflow import masks {source} {dataset} --classes {classes}")
    import_dataset("masks", source, dataset, classes=classes, progress=progress)
    result.outputs["dataset"] = dataset

    result.commands.append(f"segflow check {dataset}")
    checked = check(dataset, progress=progress)
    result.outputs["qa report"] = checked.paths["html"]

    result.commands.append(f"segflow split {dataset} --val 0.2 --test 0.2 --stratify --seed 0")
    split(dataset, val=0.2, test=0.2, stratify=True, seed=0, progress=progress)
    result.outputs["splits"] = dataset / "splits.csv"

    from segflow.train.runner import TrainResult, train

    config = out / "plan.yaml"
    runs = out / "runs"
    result.commands.append(
        f"segflow plan {dataset} --budget {QUICKSTART_BUDGET} --out {config} "
        f"--set train.output={runs}"
    )
    planned = plan(
        dataset,
        budget=QUICKSTART_BUDGET,
        out=config,
        overrides=[f"train.output={runs.as_posix()}", *QUICKSTART_SETTINGS],
        timing=QUICKSTART_TIMING,
        progress=progress,
    )
    result.outputs["plan"] = config
    result.plan = [(name, shown) for name, shown, _ in planned.rows()]
    result.commands.append(f"segflow train {config} --data {dataset} --name nuclei")
    trained = train(config, data=dataset, name="nuclei", progress=progress)
    if not isinstance(trained, TrainResult):  # pragma: no cover - no --folds here
        raise TypeError("expected a single run")
    result.outputs["run"] = trained.run_dir
    result.outputs["bundle"] = trained.bundle
    result.outputs["curves"] = trained.run_dir / "curves.png"
    result.best = trained.best

    from segflow.api import evaluate, export_model, predict

    result.commands.append(f"segflow eval {trained.bundle} {dataset} --split test")
    scores = evaluate(trained.bundle, dataset, split="test", progress=progress)
    result.outputs["eval report"] = scores.report
    result.test_metrics = {
        "mIoU": float(scores.metrics["macro"]["iou"]),
        "mDice": float(scores.metrics["macro"]["dice"]),
        "nucleus Dice": float(scores.metrics["macro_fg"]["dice"]),
    }

    result.commands.append(f"segflow export {trained.bundle} --format onnx")
    export_model(trained.bundle, format="onnx")
    result.outputs["onnx model"] = trained.bundle / "model.onnx"

    test_images = _split_images(dataset, "test")
    predictions = out / "predictions"
    result.commands.append(
        f"segflow predict {trained.bundle} {dataset / 'images'}/<test images> --out {predictions}"
    )
    predict(trained.bundle, test_images, out=predictions, backend="onnx", progress=progress)
    result.outputs["predictions"] = predictions
    result.mlflow_ui = (
        f"mlflow ui --backend-store-uri sqlite:///{(out / 'runs' / 'mlflow.db').resolve()}"
    )
    return result
