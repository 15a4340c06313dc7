"""Score the segflow bundles of a ``quality.py --work DIR`` study at their tuned threshold and at 0.5.

Same weights, same test images and the same scoring function as ``quality.py``; also the seeds'
bundles averaged (mean of probabilities). Usage::

    python benchmarks/threshold_check.py WORK/quality-XXXX chase
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import quality as q  # the sibling benchmark: its loaders and scoring


def main(argv: list[str] | None = None) -> None:
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import read_bundle_meta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the study's folder (holds DATASET/ and runs/)")
    parser.add_argument("dataset", help="chase, dsb or sample")
    args = parser.parse_args(argv)
    ds = args.work / args.dataset
    stems = q.read_splits(ds)["test"]
    gts = {s: q.read_mask(ds / "masks" / f"{s}.png") for s in stems}
    images = {s: q.read_rgb(q.image_path(ds, s)) for s in stems}
    bundles = sorted((args.work / "runs").glob(f"segflow-{args.dataset}-s*/best.segflow"))
    if not bundles:
        raise SystemExit(f"{args.work / 'runs'}: no segflow-{args.dataset}-s*/best.segflow")
    probs: dict[Path, dict[str, np.ndarray]] = {}
    thresholds = []
    for bundle in bundles:
        predictor = Predictor.from_bundles(bundle, backend="torch", device="cpu", postprocess={})
        thresholds.append(read_bundle_meta(bundle).threshold)
        probs[bundle] = {s: predictor.probabilities(images[s])[0] for s in stems}
        for t in (thresholds[-1], 0.5):
            sc = q.score({s: probs[bundle][s] > t for s in stems}, gts)
            print(f"{bundle.parent.name} threshold {t:.3f}: Dice/img {sc.dice_mean:.4f}")
    mean = {s: np.mean([probs[b][s] for b in bundles], axis=0) for s in stems}
    for t in (float(np.mean(thresholds)), 0.5):
        sc = q.score({s: mean[s] > t for s in stems}, gts)
        print(f"{len(bundles)} seeds averaged, threshold {t:.3f}: Dice/img {sc.dice_mean:.4f}")


if __name__ == "__main__":
    main()
