"""Model quality under a wall-clock budget: segflow's planned default vs a hand-written baseline.

Datasets (``../shared/datasets`` next to the repository): CHASE_DB1 retinal vessels (28 fundus
photographs of 14 children, 999 x 960) and the DSB2018 nuclei subset (162 microscopy images of
many sizes). Each is imported with ``segflow import masks`` into a work folder (the shared copy
is never touched) and split once with a fixed seed: test 0.25 / val 0.15 of the images, CHASE
grouped by child (``Image_NNL`` and ``Image_NNR`` stay together), DSB at random. Both contenders
then get the same wall-clock budget per dataset, the same torch threads (the machine's cores)
and the same number of data-loader workers, one after the other on this machine:

* ``segflow``: exactly what ``segflow train --data DATASET --budget B --device cpu`` does: plan
  a config from the dataset fingerprint within the budget (the planning time counts against it;
  ``train.max_minutes`` stops training at the budget), train with it (MLflow tracking on, as by
  default), keep the bundle that scored best on val. Test images are predicted by
  ``Predictor.from_bundles(bundle).predict_array(image)`` (the bundle's own tiling/blending).
* ``baseline``: the loop people glue together in a notebook, written out below with no segflow
  code on its training path: SMP ``Unet("resnet34", encoder_weights=None, classes=1)``, loss
  BCE 0.7 + Dice 0.3 (SMP losses), Adam at 1e-3 with a cosine decay over the budget's time,
  random 256 x 256 crops with horizontal/vertical flips, batch 8, ImageNet mean/std after /255.
  An epoch is one pass over the training pixels (crops per image = image area / crop area); at
  each epoch end it predicts the val images whole (padded to a multiple of 32) and keeps the
  weights with the best val Dice. It stops when the budget would run out before one more step
  and a final validation. Test images are predicted the same whole-image way.

Scoring is one numpy function for both (and for CHASE's second annotator): foreground Dice and
IoU per image, then the mean over the test images (**headline: per-image mean Dice**), and
pooled over all test pixels. For CHASE the second human observer (``masks_2ndHO``) is scored
against the first on the same test images as the human reference (about 0.78).

Table columns: ``train s`` is each contender's wall time from its start (segflow: planning;
baseline: reading the images) to its trained model, test prediction excluded; ``epochs`` and
``steps`` (optimizer steps) are what that time bought. With ``--work DIR`` the datasets, runs,
plans and a ``results.json`` (incl. per-image Dice) are kept there.

The machine may be shared with other jobs: the load average before each contender is printed;
both contenders run under the same conditions only as far as that load is steady.

    python benchmarks/quality.py [--datasets chase,dsb,sample] [--budget 5m] [--seed 0]
        [--seeds N] [--work DIR] [--workers N] [--tiny] [--contenders segflow,baseline]
        [--set KEY=VALUE ...]

Seeds (issue 15): ``--seeds N`` trains every contender N times with training seeds ``S..S+N-1``
(``--seed S``, default 0; the split is made once with seed S, so every run sees the same
train/val/test images and the same budget) and reports, per dataset and contender, the mean ±
sd (sample, ddof 1) and the minimum of the per-image test Dice over the seeds. A difference is
called only when it exceeds the seed spread (``|mean_a - mean_b| > max(sd_a, sd_b)``, >= 2 seeds
each; see ``_seeds.py``). ``benchmarks/ablation.py`` runs the planned default against one lever
changed at a time on the same footing.

``--tiny`` is the smoke-test mode: at most 8 images per dataset, 64-px crops, a few seconds of
budget, MLflow off, step times from segflow's table instead of measured.

Goal (issue 6): segflow >= baseline (per-image mean test Dice) on both datasets.
Goal (issue 15): over >= 3 seeds, CHASE_DB1 >= 0.765 and >= baseline + 0.05 with sd <= 0.01;
DSB2018 >= baseline + 0.03.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _seeds import by_group, check_seeds, seed_table
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
#: name -> (source folder name, regular expression grouping the images of one subject)
DATASETS: dict[str, tuple[str, str | None]] = {
    "chase": ("chase_db1", r"Image_(\d+)"),
    "dsb": ("dsb2018_nuclei", None),
    "sample": ("nuclei", None),  # segflow's bundled sample (src/segflow/sample_data/nuclei)
}
SAMPLE = REPO / "src" / "segflow" / "sample_data"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
IGNORE = 255


# ------------------------------------------------------------------------------------------------
# Data and scoring (shared by both contenders)


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def prepare(name: str, src: Path, work: Path, seed: int, limit: int) -> Path:
    """Import ``src`` (images/ + masks/) into ``work/name`` and write a seeded split."""
    import segflow.api as api

    stage = src
    if limit:  # the first `limit` images (CHASE: whole children, as they are sorted by stem)
        stage = work / f"{name}-subset"
        for folder in ("images", "masks"):
            (stage / folder).mkdir(parents=True)
        for image in sorted((src / "images").iterdir())[:limit]:
            shutil.copy2(image, stage / "images" / image.name)
            shutil.copy2(src / "masks" / f"{image.stem}.png", stage / "masks")
    out = work / name
    report = api.import_dataset("masks", stage, out)
    if len(report.meta.classes) != 2:
        raise SystemExit(f"{name}: expected a binary dataset, got {report.meta.class_names}")
    api.split(out, test=0.25, val=0.15, group_by=DATASETS[name][1], seed=seed)
    return out


def read_splits(dataset: Path) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with (dataset / "splits.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            parts.setdefault(row["split"], []).append(row["stem"])
    return parts


def image_path(dataset: Path, stem: str) -> Path:
    return next(p for p in (dataset / "images").iterdir() if p.stem == stem)


def confusion(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """Foreground (class 1) true positives, false positives, false negatives; 255 is ignored."""
    valid = gt != IGNORE
    p, g = pred.astype(bool) & valid, (gt == 1) & valid
    return (
        int(np.count_nonzero(p & g)),
        int(np.count_nonzero(p & ~g)),
        int(np.count_nonzero(~p & g)),
    )


def dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    if tp + fp + fn == 0:  # nothing to find and nothing found
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


@dataclass
class Scores:
    dice_mean: float
    dice_pooled: float
    iou_mean: float
    iou_pooled: float
    per_image: dict[str, float] = field(default_factory=dict)


def score(preds: dict[str, np.ndarray], gts: dict[str, np.ndarray]) -> Scores:
    """Per-image foreground Dice/IoU (then the mean) and Dice/IoU over all pixels pooled."""
    rows = {stem: confusion(preds[stem], gts[stem]) for stem in gts}
    per = {stem: dice_iou(*c) for stem, c in rows.items()}
    pooled = dice_iou(*(sum(c[i] for c in rows.values()) for i in range(3)))
    return Scores(
        dice_mean=float(np.mean([d for d, _ in per.values()])),
        dice_pooled=pooled[0],
        iou_mean=float(np.mean([j for _, j in per.values()])),
        iou_pooled=pooled[1],
        per_image={stem: round(d, 4) for stem, (d, _) in per.items()},
    )


@dataclass
class Run:
    contender: str
    seconds: float
    epochs: int
    steps: int
    predict: Callable[[np.ndarray], np.ndarray]
    load: float
    notes: str = ""


# ------------------------------------------------------------------------------------------------
# Baseline: a hand-written loop (no segflow code on its training path)


def baseline(
    dataset: Path, splits: dict[str, list[str]], budget_s: float, args: argparse.Namespace
) -> Run:
    import segmentation_models_pytorch as smp
    import torch
    from torch.utils.data import DataLoader, Dataset

    load = os.getloadavg()[0]
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    crop, batch = args.crop, args.batch

    def normalise(image: np.ndarray) -> np.ndarray:
        scaled = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(scaled.transpose(2, 0, 1))

    images = {s: read_rgb(image_path(dataset, s)) for s in splits["train"] + splits["val"]}
    masks = {s: read_mask(dataset / "masks" / f"{s}.png") for s in splits["train"] + splits["val"]}
    train_stems = splits["train"]
    area = np.mean([images[s].shape[0] * images[s].shape[1] for s in train_stems])
    repeats = max(1, round(area / (crop * crop)))  # an epoch = one pass over the pixels

    class Crops(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __len__(self) -> int:
            return int(len(train_stems) * repeats)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            stem = train_stems[i % len(train_stems)]
            img, mask = images[stem], masks[stem]
            ph, pw = max(0, crop - img.shape[0]), max(0, crop - img.shape[1])
            if ph or pw:
                img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE)
            y = int(torch.randint(0, img.shape[0] - crop + 1, ()))
            x = int(torch.randint(0, img.shape[1] - crop + 1, ()))
            img, mask = img[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop]
            if torch.rand(()) < 0.5:
                img, mask = img[:, ::-1], mask[:, ::-1]
            if torch.rand(()) < 0.5:
                img, mask = img[::-1], mask[::-1]
            return torch.from_numpy(normalise(img).copy()), torch.from_numpy(mask.copy())

    loader = DataLoader(
        Crops(),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    model = smp.Unet("resnet34", encoder_weights=None, in_channels=3, classes=1)
    bce = smp.losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE)
    dice = smp.losses.DiceLoss("binary", from_logits=True, ignore_index=IGNORE)
    lr = 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def predict(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = normalise(image)
        x = np.pad(x, ((0, 0), (0, -h % 32), (0, -w % 32)), mode="reflect")
        model.eval()
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.ascontiguousarray(x))[None])
        out: np.ndarray = (logits[0, 0, :h, :w] > 0).numpy()
        return out

    best, best_state, epochs, steps = -1.0, None, 0, 0
    val_s = step_s = 0.0
    val_px = sum(masks[s].size for s in splits["val"])
    done = False
    while not done:
        model.train()
        for x, y in loader:
            t0 = time.perf_counter()
            frac = min(1.0, (t0 - start) / budget_s)
            for group in opt.param_groups:  # cosine decay over the budget's wall-clock time
                group["lr"] = 1e-6 + 0.5 * (lr - 1e-6) * (1 + math.cos(math.pi * frac))
            logits = model(x)
            target = y[:, None].float()
            loss = 0.7 * bce(logits, target) + 0.3 * dice(logits, y[:, None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            now = time.perf_counter()
            step_s = now - t0 if steps == 1 else 0.8 * step_s + 0.2 * (now - t0)
            # before the first validation, guess it from the step time (forward ~ 1/3 of a step)
            guess = val_s or step_s * val_px / (batch * crop * crop) / 3
            if now - start + max(step_s, now - t0) + guess > budget_s:
                done = True
                break
        epochs += 1
        t0 = time.perf_counter()
        if splits["val"]:
            preds = {s: predict(images[s]) for s in splits["val"]}
            val = score(preds, {s: masks[s] for s in splits["val"]}).dice_mean
        else:
            val = float(epochs)  # no validation images: the last weights win
        val_s = time.perf_counter() - t0
        if val > best:
            best = val
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if time.perf_counter() - start + step_s + val_s > budget_s:
            done = True
    seconds = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    del loader  # stop the workers before the next contender runs
    notes = (
        f"Unet-resnet34, {crop}-px crops x{repeats}/image, batch {batch}, Adam 1e-3 cosine/time, "
        f"BCE 0.7 + Dice 0.3, ~{step_s:.2f} s/step, best val Dice {best:.4f}"
    )
    return Run("baseline", seconds, epochs, steps, predict, load, notes)


# ------------------------------------------------------------------------------------------------
# segflow: plan within the budget, train, predict with the best bundle


def segflow_run(
    dataset: Path, budget_s: float, work: Path, args: argparse.Namespace, name: str
) -> Run:
    from segflow.infer.predictor import Predictor
    from segflow.train.planner import plan_dataset
    from segflow.train.runner import TrainResult, train

    load = os.getloadavg()[0]
    start = time.perf_counter()
    fixed = [f"data.num_workers={args.workers}", f"train.seed={args.seed}", *args.set]
    if args.tiny:
        fixed.append("tracking.enabled=false")
    # As `segflow train --data DATASET --budget B`: the planning time is part of the budget.
    plan = plan_dataset(
        dataset,
        budget=budget_s,
        device="cpu",
        overrides=fixed,
        timing="table" if args.tiny else "measure",
        spent_s=max(1e-3, time.perf_counter() - start),
    )
    config = plan.write(work / f"plan-{name}.yaml")
    plan_s = time.perf_counter() - start
    result = train(config, overrides=[f"train.output={work / 'runs'}"], name=f"segflow-{name}")
    seconds = time.perf_counter() - start
    if not isinstance(result, TrainResult):
        raise RuntimeError(f"expected one training run, got {type(result).__name__}")
    steps = _steps(result.run_dir)
    predictor = Predictor.from_bundles(result.bundle, backend="torch", device="cpu")

    def predict(image: np.ndarray) -> np.ndarray:
        return np.asarray(predictor.predict_array(image).labels == 1)

    s = plan.settings
    notes = (
        f"{s['model.arch']}-{s['model.encoder']} {s.get('model.kwargs') or ''}, "
        f"{s['data.tile_size']}-px crops x{s['data.crops_per_image']}/image "
        f"(fg {s['data.foreground_crops']}), batch {s['data.batch_size']}, "
        f"{s['optimizer.name']} {s['optimizer.lr']:g} {s['schedule.name']}, "
        f"loss {s['loss.terms']}, aug {s['augment.preset']}, norm "
        f"{s['data.preprocess.normalize']}, planned {s['train.epochs']} epoch(s) x "
        f"{s.get('train.limit_train_batches', 'all')} steps, max {s['train.max_minutes']} min, "
        f"best val {result.monitor} {result.best}; planning took {plan_s:.0f} s"
    )
    epochs = int(json.loads((result.run_dir / "run.json").read_text()).get("epochs") or 0)
    return Run("segflow", seconds, epochs, steps, predict, load, notes)


def _steps(run_dir: Path) -> int:
    """Optimizer steps from the Lightning CSV log (largest ``step`` logged)."""
    steps = 0
    for path in (run_dir / "logs").glob("attempt*/metrics.csv"):
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("step"):
                    steps = max(steps, int(float(row["step"])) + 1)
    return steps


# ------------------------------------------------------------------------------------------------
# Driver


def evaluate(
    run: Run, dataset: Path, stems: list[str], gts: dict[str, np.ndarray]
) -> tuple[Scores, float]:
    start = time.perf_counter()
    preds = {s: run.predict(read_rgb(image_path(dataset, s))) for s in stems}
    return score(preds, gts), time.perf_counter() - start


def _row(
    dataset: str, contender: str, scores: Scores, run: Run | None, seed: int | None = None
) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "seconds": None,
        "epochs": None,
        "steps": None,
        "load": None,
        "notes": "",
    }
    if run is not None:
        facts = {"seconds": run.seconds, "epochs": run.epochs, "steps": run.steps,
                 "load": run.load, "notes": run.notes}  # fmt: skip
    return {"dataset": dataset, "contender": contender, "seed": seed, **facts, **asdict(scores)}


def bench_dataset(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    src = Path(getattr(args, f"{name}_src"))
    dataset = prepare(name, src, work, args.seed, 8 if args.tiny else 0)
    splits = read_splits(dataset)
    test = splits["test"]
    gts = {s: read_mask(dataset / "masks" / f"{s}.png") for s in test}
    print(
        f"[{name}] {len(splits['train'])} train / {len(splits['val'])} val / {len(test)} test "
        f"images; budget {args.budget_s:.0f} s per contender",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for contender in args.contenders:
        for seed in range(args.seed, args.seed + args.seeds):  # same split, same budget
            run_args = argparse.Namespace(**{**vars(args), "seed": seed})
            if contender == "segflow":
                run = segflow_run(dataset, args.budget_s, work, run_args, f"{name}-s{seed}")
            else:
                run = baseline(dataset, splits, args.budget_s, run_args)
            scores, predict_s = evaluate(run, dataset, test, gts)
            print(
                f"[{name}] {contender} seed {seed}: {run.notes}; test Dice/img "
                f"{scores.dice_mean:.4f}, predicted in {predict_s:.1f} s",
                flush=True,
            )
            rows.append(_row(name, contender, scores, run, seed))
    if name == "chase":
        second = src / "masks_2ndHO"
        if second.is_dir():
            human = score({s: read_mask(second / f"{s}.png") == 1 for s in test}, gts)
            rows.append(_row(name, "2nd annotator", human, None))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'dataset':8s} {'contender':14s} {'seed':>4s} {'train s':>8s} {'epochs':>6s} {'steps':>6s} "
        f"{'load':>5s} {'Dice/img':>9s} {'Dice pix':>9s} {'IoU/img':>8s} {'IoU pix':>8s}"
    )
    lines = [head, "-" * len(head)]

    def cell(value: Any, fmt: str, width: int) -> str:
        return f"{'-':>{width}s}" if value is None else f"{value:>{width}{fmt}}"

    for r in rows:
        lines.append(
            f"{r['dataset']:8s} {r['contender']:14s} {cell(r.get('seed'), 'd', 4)} "
            f"{cell(r['seconds'], '.0f', 8)} "
            f"{cell(r['epochs'], 'd', 6)} {cell(r['steps'], 'd', 6)} {cell(r['load'], '.1f', 5)} "
            f"{r['dice_mean']:9.4f} {r['dice_pooled']:9.4f} {r['iou_mean']:8.4f} "
            f"{r['iou_pooled']:8.4f}"
        )
    means = by_group(rows, ("dataset", "contender"))
    over = " (mean over seeds)" if any(m.n > 1 for m in means.values()) else ""
    for name in dict.fromkeys(r["dataset"] for r in rows):
        if (name, "segflow") not in means or (name, "baseline") not in means:
            continue
        ours, base = means[(name, "segflow")].mean, means[(name, "baseline")].mean
        ratio = ours / base if base else float("inf")
        verdict = "met" if ours >= base else "NOT met"
        lines.append(
            f"{name}: segflow / baseline per-image mean Dice{over} = {ours:.4f} / {base:.4f} = "
            f"{ratio:.3f}  (goal segflow >= baseline: {verdict})"
        )
    return "\n".join(lines)


def _seeds_arg(text: str) -> int:
    """``--seeds``: a whole number >= 1, else one line on stderr and exit status 2."""
    try:
        return check_seeds(int(text))
    except ValueError:
        print(f"error: --seeds must be a whole number >= 1, got {text!r}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from segflow.train.planner import format_seconds, parse_budget

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", default="chase,dsb", help="comma-separated: chase, dsb, sample"
    )
    parser.add_argument("--budget", default=None, help="per contender and dataset (default 5m)")
    parser.add_argument("--seed", type=int, default=0, help="split seed and first training seed")
    parser.add_argument(
        "--seeds", default="1", help="train every contender this many times (seeds S..S+N-1)"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep datasets and runs here")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader workers, both (default: segflow's auto)"
    )
    parser.add_argument("--tiny", action="store_true", help="smoke test: 8 images, seconds")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="segflow: a setting the plan keeps (ablations; repeatable)",
    )
    parser.add_argument(
        "--contenders", default="segflow,baseline", help="comma-separated: segflow, baseline"
    )
    parser.add_argument("--chase-src", type=Path, default=SHARED / "chase_db1")
    parser.add_argument("--dsb-src", type=Path, default=SHARED / "dsb2018_nuclei")
    parser.add_argument("--sample-src", type=Path, default=SAMPLE / "nuclei")
    args = parser.parse_args(argv)
    args.seeds = _seeds_arg(args.seeds)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; valid: {', '.join(DATASETS)}")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if not args.contenders or set(args.contenders) - {"segflow", "baseline"}:
        parser.error("--contenders: choose from segflow, baseline")
    args.budget_s = parse_budget(args.budget or ("15s" if args.tiny else "5m"))
    args.crop, args.batch = (64, 4) if args.tiny else (256, 8)
    if args.workers is None:  # segflow's data.num_workers=auto: CPUs - 1, at most 8
        args.workers = 0 if args.tiny else min(8, max(0, cpus() - 1))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch

    torch.set_num_threads(cpus())
    started = time.perf_counter()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="quality-", dir=args.work))
        rows = [r for n in names for r in bench_dataset(n, args, work)]
    else:
        with tempfile.TemporaryDirectory(prefix="segflow-quality-") as tmp:
            work = Path(tmp)
            rows = [r for n in names for r in bench_dataset(n, args, work)]
    print()
    print(
        f"machine: {platform.machine()}, {cpus()} CPUs (torch threads {torch.get_num_threads()}), "
        f"torch {torch.__version__}, Python {platform.python_version()}; budget "
        f"{format_seconds(args.budget_s)} per contender and dataset, {args.workers} loader "
        f"worker(s) each, seed {args.seed}; 'load' = 1-min load average at the contender's start"
    )
    print(table(rows))
    print()
    print(f"over {args.seeds} seed(s) each (same split and budget):")
    print(seed_table(rows))
    print(f"total wall time {format_seconds(time.perf_counter() - started)}")
    if args.work is not None:
        (work / "results.json").write_text(json.dumps(rows, indent=2))
        print(f"results, datasets and runs: {work}")
    return rows


if __name__ == "__main__":
    main()
