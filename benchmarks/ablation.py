"""Ablation of segflow's planned default: one lever changed at a time, each over N seeds.

For each dataset (prepared and split exactly as ``quality.py`` does, once, with ``--seed``), the
planned default (``segflow train --data D --budget B``, MLflow on as by default) and every
variant of the chosen levers are trained ``--seeds`` times (training seeds ``S..S+N-1``, same
budget, same split), one after the other. A variant is the default plan with one or two
settings fixed through ``--set`` (the planner keeps them and plans the rest around them, e.g.
epochs for a bigger crop); variants are derived from the planned settings of that dataset, so
"2x learning rate" doubles whatever the plan chose. Each row reports the per-image test Dice as
mean ± sd (min) over the seeds, its difference from the default, and whether that difference
exceeds the seed spread (``_seeds.compare``). The markdown table is printed and, with
``--out FILE``, written there, ready for ``docs/benchmarks.md``.

    python benchmarks/ablation.py --ablate all --seeds 3 --budget 5m [--datasets chase,dsb,sample]
        [--seed 0] [--work DIR] [--workers N] [--out FILE] [--tiny] [--set KEY=VALUE ...]

Levers (``--ablate`` names, comma-separated, or ``all``): see :data:`LEVERS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import quality as Q
from _seeds import Summary, by_group, compare

#: A variant: (label, --set overrides). A lever: (what it changes, planned settings -> variants).
Variant = tuple[str, list[str]]
Lever = tuple[str, Callable[[dict[str, Any]], list[Variant]]]
AUG_PRESETS = ["none", "light", "medium", "heavy"]
SLIM = [128, 64, 32, 16, 16]


def _flow(value: Any) -> str:
    """A value as a YAML flow scalar/list/mapping for ``--set``."""
    return json.dumps(value)


def _fg(s: dict[str, Any]) -> list[Variant]:
    share = float(s["data.foreground_crops"])
    return [(f"foreground crops {v:g}", [f"data.foreground_crops={v}"])
            for v in (0.1, 0.67) if abs(v - share) > 1e-9]  # fmt: skip


def _crop_batch(s: dict[str, Any]) -> list[Variant]:
    tile, batch = int(s["data.tile_size"]), int(s["data.batch_size"])
    out = [
        (
            f"crop {2 * tile}, batch {max(2, batch // 4)}",
            [f"data.tile_size={2 * tile}", f"data.batch_size={max(2, batch // 4)}"],
        )
    ]
    if tile // 2 >= 32:
        out.append(
            (
                f"crop {tile // 2}, batch {min(32, 4 * batch)}",
                [f"data.tile_size={tile // 2}", f"data.batch_size={min(32, 4 * batch)}"],
            )
        )
    return out  # fmt: skip


def _loss(s: dict[str, Any]) -> list[Variant]:
    terms = {k: float(v) for k, v in dict(s["loss.terms"]).items()}
    with_cl = {k: round(0.8 * v, 3) for k, v in terms.items()} | {"cldice": 0.2}
    other = (
        {"ce": 0.5, "dice": 0.5} if terms != {"ce": 0.5, "dice": 0.5} else {"ce": 0.3, "dice": 0.7}
    )
    return [("+ clDice 0.2 (others x0.8)", [f"loss.terms={_flow(with_cl)}"]),
            (" + ".join(f"{k} {v:g}" for k, v in other.items()), [f"loss.terms={_flow(other)}"])]  # fmt: skip


def _augment(s: dict[str, Any]) -> list[Variant]:
    i = AUG_PRESETS.index(str(s["augment.preset"]))
    return [(f"augment {AUG_PRESETS[j]}", [f"augment.preset={AUG_PRESETS[j]}"])
            for j in (i - 1, i + 1) if 0 <= j < len(AUG_PRESETS)]  # fmt: skip


def _encoder(s: dict[str, Any]) -> list[Variant]:
    other = "resnet34" if s["model.encoder"] != "resnet34" else "resnet18"
    kwargs = dict(s.get("model.kwargs") or {})
    channels = list(kwargs.get("decoder_channels") or [256, 128, 64, 32, 16])
    shallow = {**kwargs, "encoder_depth": 4, "decoder_channels": channels[:4]}
    return [(f"encoder {other}", [f"model.encoder={other}"]),
            ("encoder depth 4", [f"model.kwargs={_flow(shallow)}"])]  # fmt: skip


def _decoder(s: dict[str, Any]) -> list[Variant]:
    kwargs = dict(s.get("model.kwargs") or {})
    slim = kwargs.get("decoder_channels") == SLIM
    width = {k: v for k, v in kwargs.items() if k != "decoder_channels"}
    if not slim:
        width["decoder_channels"] = SLIM
    return [
        ("decoder full width" if slim else "decoder half width", [f"model.kwargs={_flow(width)}"])
    ]


def _lr(s: dict[str, Any]) -> list[Variant]:
    lr = float(s["optimizer.lr"])
    return [(f"lr {f * lr:g} (x{f:g})", [f"optimizer.lr={f * lr:g}"]) for f in (0.5, 2.0)]


def _warmup(s: dict[str, Any]) -> list[Variant]:
    w = float(s["schedule.warmup_epochs"])
    out = [("no warm-up", ["schedule.warmup_epochs=0"])] if w else []
    longer = round(3 * w, 2) if w else 0.5
    return [*out, (f"warm-up {longer:g} epochs", [f"schedule.warmup_epochs={longer}"])]


def _val(s: dict[str, Any]) -> list[Variant]:
    every = int(s["train.val_every"])
    out = [(f"validate every {2 * every} epochs", [f"train.val_every={2 * every}"])]
    if every > 1:
        out.append(("validate every epoch", ["train.val_every=1"]))
    return out


#: Name -> (what it changes, variants from the planned settings).
LEVERS: dict[str, Lever] = {
    "averaging": ("weight averaging (planned: none)", lambda s: [
        ("EMA", ["train.weight_averaging=ema"]), ("SWA, last 25%", ["train.weight_averaging=swa"])]),
    "deep_supervision": ("deep supervision (planned: off)", lambda s: [
        ("2 auxiliary heads", ["train.deep_supervision=2"])]),
    "normalisation": ("input normalisation", lambda s: [
        (f"normalise {n}", [f"data.preprocess.normalize={n}"]) for n in ("dataset", "image", "imagenet")
        if n != s["data.preprocess.normalize"]]),
    "contrast": ("contrast enhancement (CLAHE)", lambda s: [
        (f"CLAHE {'off' if s.get('data.preprocess.clahe') else 'on'}",
         [f"data.preprocess.clahe={str(not s.get('data.preprocess.clahe')).lower()}"])]),
    "fg_crops": ("share of crops on foreground", _fg),
    "crop_batch": ("crop size vs batch", _crop_batch),
    "loss": ("loss mix", _loss),
    "augment": ("augmentation strength", _augment),
    "encoder": ("encoder width / depth", _encoder),
    "decoder": ("decoder width", _decoder),
    "lr": ("learning rate", _lr),
    "warmup": ("learning-rate warm-up", _warmup),
    "val_passes": ("validation passes", _val),
}  # fmt: skip


def variants_for(levers: list[str], settings: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``(lever, label, overrides)``: the default first, then every variant of ``levers``."""
    out: list[tuple[str, str, list[str]]] = [("default", "planned default", [])]
    for name in levers:
        out += [(name, label, sets) for label, sets in LEVERS[name][1](settings)]
    return out


def planned_settings(dataset: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The default plan's settings (table timings: only the settings matter, not the epochs)."""
    from segflow.train.planner import plan_dataset

    fixed = [f"data.num_workers={args.workers}", *args.set]
    return plan_dataset(
        dataset, budget=args.budget_s, device="cpu", overrides=fixed, timing="table"
    ).settings


def markdown(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    """The ablation table: one row per variant, per dataset mean ± sd (min), gap and call."""
    dice = by_group(rows, ("dataset", "lever", "variant"))
    head = ["lever", "change"] + [f"{d} Dice/img (mean ± sd, min)" for d in datasets]
    head += [f"{d} vs default" for d in datasets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = dict.fromkeys((r["lever"], r["variant"]) for r in rows)
    for lever, variant in keys:
        cells = [lever, variant]
        calls = []
        for d in datasets:
            s: Summary | None = dice.get((d, lever, variant))
            base = dice.get((d, "default", "planned default"))
            cells.append("—" if s is None else f"{s.mean:.4f} ± {s.sd:.4f} ({s.min:.4f}, n={s.n})")
            if s is None or base is None or lever == "default":
                calls.append("—")
            else:
                calls.append(f"{s.mean - base.mean:+.4f}: {compare(s, base)}")
        lines.append("| " + " | ".join(cells + calls) + " |")
    return "\n".join(lines)


def run_dataset(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    src = Path(getattr(args, f"{name}_src"))
    dataset = Q.prepare(name, src, work, args.seed, 8 if args.tiny else 0)
    splits = Q.read_splits(dataset)
    gts = {s: Q.read_mask(dataset / "masks" / f"{s}.png") for s in splits["test"]}
    plan = planned_settings(dataset, args)
    rows: list[dict[str, Any]] = []
    for i, (lever, label, sets) in enumerate(variants_for(args.levers, plan)):
        for seed in range(args.seed, args.seed + args.seeds):
            run_args = argparse.Namespace(**{**vars(args), "seed": seed, "set": [*args.set, *sets]})
            run = Q.segflow_run(dataset, args.budget_s, work, run_args, f"{name}-v{i}-s{seed}")
            scores, _ = Q.evaluate(run, dataset, splits["test"], gts)
            print(
                f"[{name}] {lever}: {label} seed {seed}: Dice/img {scores.dice_mean:.4f}",
                flush=True,
            )
            rows.append({"dataset": name, "lever": lever, "variant": label, "sets": sets,
                         "seed": seed, "seconds": run.seconds, "steps": run.steps,
                         "dice_mean": scores.dice_mean, "dice_pooled": scores.dice_pooled})  # fmt: skip
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    from segflow.train.planner import parse_budget

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--ablate", required=True, help=f"levers, comma-separated, or all: {', '.join(LEVERS)}"
    )
    p.add_argument("--datasets", default="chase,dsb", help="comma-separated: chase, dsb, sample")
    p.add_argument("--budget", default=None, help="per run (default 5m; --tiny 15s)")
    p.add_argument("--seed", type=int, default=0, help="split seed and first training seed")
    p.add_argument("--seeds", default="3", help="runs per variant (seeds S..S+N-1)")
    p.add_argument("--work", type=Path, default=None, help="keep datasets, runs, results.json here")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    p.add_argument("--tiny", action="store_true", help="smoke test: 8 images, seconds, MLflow off")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run")
    for name, (folder, _) in Q.DATASETS.items():
        root = Q.SAMPLE if name == "sample" else Q.SHARED
        p.add_argument(f"--{name}-src", type=Path, default=root / folder)
    args = p.parse_args(argv)
    args.seeds = Q._seeds_arg(args.seeds)
    names = (
        list(LEVERS)
        if args.ablate.strip() == "all"
        else [n.strip() for n in args.ablate.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in LEVERS]
    args.names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if not names or unknown or any(n not in Q.DATASETS for n in args.names):
        print(f"error: --ablate takes {', '.join(LEVERS)} or all; --datasets {', '.join(Q.DATASETS)}"
              f" (got {args.ablate!r}, {args.datasets!r})", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    args.levers = names
    args.budget_s = parse_budget(args.budget or ("15s" if args.tiny else "5m"))
    if args.workers is None:
        args.workers = 0 if args.tiny else min(8, max(0, Q.cpus() - 1))
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch

    torch.set_num_threads(Q.cpus())
    started = time.perf_counter()
    holder = tempfile.TemporaryDirectory(prefix="segflow-ablation-") if args.work is None else None
    root = Path(holder.name) if holder else args.work
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ablation-", dir=root))
    try:
        rows = [r for n in args.names for r in run_dataset(n, args, work)]
        table = markdown(rows, args.names)
        print(f"\nablation over {args.seeds} seed(s), budget {args.budget_s:.0f} s per run, "
              f"{Q.cpus()} CPUs, {time.perf_counter() - started:.0f} s in all:\n")  # fmt: skip
        print(table)
        if args.out is not None:
            tmp = args.out.with_name(f".{args.out.name}.tmp")
            tmp.write_text(table + "\n", encoding="utf-8")
            tmp.replace(args.out)
        if args.work is not None:
            (work / "results.json").write_text(json.dumps(rows, indent=2))
            print(f"results, datasets and runs: {work}")
    finally:
        if holder is not None:
            holder.cleanup()
    return rows


if __name__ == "__main__":
    main()
