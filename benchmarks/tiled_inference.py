"""Tiled inference with a TRAINED bundle on real retinal images: segflow's backends vs MONAI.

The bundle is trained here for ``--train-minutes`` (default 2) on CHASE_DB1 (subjects 01-08
train, 09-10 validation; ``segflow train``, which ends with the ONNX export and its bf16 check),
or given with ``--bundle``. The test image is a ``--size`` square mosaic of the held-out subjects'
photographs (11-14), so the masks mean something. Same tile, overlap 0.25, Gaussian blending,
batch and thread count for every contender, each in a fresh process (its own peak RSS):

* ``monai-f32`` / ``monai-bf16``: ``monai.inferers.sliding_window_inference`` on the normalised
  tensor, eager torch in ``inference_mode``, the second under
  ``torch.autocast("cpu", dtype=torch.bfloat16)`` -- what a MONAI user gets by adding one line;
* ``segflow-torch-f32`` (fp32 eager: the reference of the agreement column), ``-torch-bf16``,
  ``-onnx-f32``, ``-openvino-f32``, ``-openvino-bf16`` and ``-auto`` (what a user gets out of the
  box: the backend measured fastest for the bundle here, cached; its one-time measurement is
  reported apart): ``Predictor.predict_array`` on the raw image, the whole product path;
* ``raw``: the bare onnxruntime session on exactly segflow's tile batches (no blending).

Goals (issue 13): segflow-auto >= 1.5x MONAI-bf16 and >= 3x MONAI-f32 throughput; pixel agreement
with fp32 eager >= 99%; peak RSS no worse than before. CHASE_DB1 is CC BY 4.0 (Kingston University
London / St George's, University of London; Fraz et al., IEEE TBME 2012): its README.md is copied
with the images into the work folder and travels with any copy.

    python benchmarks/tiled_inference.py [--data /work/shared/datasets/chase_db1]
        [--bundle B.segflow] [--train-minutes 2] [--size 2048] [--tile 512] [--batch 4]
        [--threads N] [--repeat 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHASE = Path("/work/shared/datasets/chase_db1")
SEGFLOW = {
    "segflow-torch-f32": ("torch", "f32"),
    "segflow-torch-bf16": ("torch", "bf16"),
    "segflow-onnx-f32": ("onnx", "f32"),
    "segflow-openvino-f32": ("openvino", "f32"),
    "segflow-openvino-bf16": ("openvino", "bf16"),
    "segflow-auto": ("auto", "auto"),
}
KINDS = ("monai-f32", "monai-bf16", *SEGFLOW, "raw")
REFERENCE = "segflow-torch-f32"


# -- data, bundle, image -----------------------------------------------------------------------
def _subjects(data: Path) -> dict[str, str]:
    """stem -> subject from CHASE's manifest.csv (empty for other datasets)."""
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        return {}
    with manifest.open(newline="") as fh:
        return {row["stem"]: row["subject"] for row in csv.DictReader(fh)}


def _canonical(data: Path, work: Path) -> Path:
    """A canonical copy of ``data`` (with its README) and splits by subject; the source untouched."""
    out = work / "dataset"
    shutil.copytree(data, out, ignore=shutil.ignore_patterns("masks_2ndHO"))
    if not (out / "dataset.yaml").is_file():  # CHASE_DB1 layout: images/, masks/ in {0, 1}
        (out / "dataset.yaml").write_text(
            "name: chase_db1\nclasses:\n  - {id: 0, name: background, color: [0, 0, 0]}\n"
            "  - {id: 1, name: vessel, color: [255, 0, 0]}\nignore_index: 255\n"
            "notes: CHASE_DB1, CC BY 4.0, see README.md\n"
        )
    subjects = _subjects(data)
    stems = sorted(p.stem for p in (out / "images").iterdir())
    if subjects:
        role = {s: "train" if int(v) <= 8 else "val" if int(v) <= 10 else "test"
                for s, v in subjects.items()}  # fmt: skip
    else:  # any other dataset: every 4th image validation, every 4th+1 test
        role = {s: ("val", "test", "train", "train")[i % 4] for i, s in enumerate(stems)}
    rows = ["stem,split,group,fold", *(f"{s},{role[s]},{subjects.get(s, s)}," for s in stems)]
    (out / "splits.csv").write_text("\n".join(rows) + "\n")
    return out


def _train(dataset: Path, work: Path, args: argparse.Namespace) -> Path:
    from segflow.train.runner import train

    overrides = [
        f"train.output={work / 'runs'}",
        "model.encoder_weights=null",
        f"model.encoder={args.encoder}",
        f"data.tile_size={args.train_tile}",
        "data.batch_size=8",
        "data.num_workers=0",
        f"train.epochs={args.epochs}",
        f"train.max_minutes={args.train_minutes}",
        "tracking.enabled=false",
    ]
    result = train(data=dataset, overrides=overrides, name="bench")
    return Path(result.bundle)  # type: ignore[union-attr]


def _bundle(args: argparse.Namespace, dataset: Path, work: Path) -> Path:
    """The trained bundle, copied into ``work`` (its cache goes there), exported when needed."""
    from segflow.export.onnx import export_onnx, relative_tolerance
    from segflow.models.bundle import read_bundle_meta

    source = args.bundle or _train(dataset, work, args)
    bundle = work / "bench.segflow"
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns(".segflow-backend.json"))
    if "onnx" not in read_bundle_meta(bundle).exports:
        export_onnx(bundle, tolerance=relative_tolerance(bundle))
    return bundle


def _mosaic(dataset: Path, size: int) -> np.ndarray:
    """A ``size x size`` RGB mosaic of the test split's photographs (cycled)."""
    from segflow.data.image_io import read_image

    rows = list(csv.DictReader((dataset / "splits.csv").open()))
    stems = [r["stem"] for r in rows if r["split"] == "test"] or [r["stem"] for r in rows]
    files = {p.stem: p for p in (dataset / "images").iterdir()}
    canvas = np.zeros((size, size, 3), np.uint8)
    y = x = i = 0
    row_h = 0
    while y < size:
        image = read_image(files[stems[i % len(stems)]])[:, :, :3]
        h, w = min(image.shape[0], size - y), min(image.shape[1], size - x)
        canvas[y : y + h, x : x + w] = image[:h, :w]
        row_h, x, i = max(row_h, h), x + w, i + 1
        if x >= size:
            x, y, row_h = 0, y + row_h, 0
    return canvas


# -- one contender per process ---------------------------------------------------------------
def _labels_of(logits: np.ndarray, meta: object) -> np.ndarray:
    if logits.shape[0] == 1:
        thr = float(getattr(meta, "threshold", 0.5))
        return (1 / (1 + np.exp(-logits[0])) > thr).astype(np.uint8)
    return logits.argmax(0).astype(np.uint8)


def _run_segflow(kind: str, bundle: Path, image: np.ndarray, a: argparse.Namespace) -> dict:
    from segflow.infer.predictor import Predictor

    backend, precision = SEGFLOW[kind]
    if backend == "torch":
        import torch

        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    predictor = Predictor.from_bundles(
        bundle, backend=backend, precision=precision, device="cpu", tile_size=a.tile,
        overlap=0.25, batch_size=a.batch, threads=a.threads, tta=[],
    )  # fmt: skip
    setup = time.perf_counter() - start
    predictor.predict_array(image[: a.tile, : a.tile])  # warm-up (sessions, allocations)
    times, labels = [], None
    for _ in range(a.repeat):
        start = time.perf_counter()
        labels = predictor.predict_array(image).labels
        times.append(time.perf_counter() - start)
    return {"times": times, "labels": labels, "setup_s": setup,
            "choice": predictor.describe_backends(), "torch": "torch" in sys.modules}  # fmt: skip


def _run_monai(kind: str, bundle: Path, image: np.ndarray, a: argparse.Namespace) -> dict:
    import torch
    from monai.inferers import sliding_window_inference

    from segflow.config import PreprocessConfig
    from segflow.data.preprocess import Preprocessor
    from segflow.models.bundle import load_bundle

    torch.set_num_threads(a.threads)
    loaded = load_bundle(bundle)
    meta, model = loaded.meta, loaded.model.eval()
    pre = Preprocessor(
        PreprocessConfig.model_validate(meta.preprocess), meta.in_channels, meta.normalization
    )
    bf16 = kind == "monai-bf16"
    times, labels = [], None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(torch.zeros(1, meta.in_channels, a.tile, a.tile))
        for _ in range(a.repeat):
            start = time.perf_counter()
            net, _ = pre.network_input(image)
            x = torch.from_numpy(net.rows(0, net.shape[1]))[None]
            logits = sliding_window_inference(
                x, (a.tile, a.tile), a.batch, model, overlap=0.25, mode="gaussian"
            )
            labels = _labels_of(logits[0].float().numpy(), meta)
            del logits, x
            times.append(time.perf_counter() - start)
    return {"times": times, "labels": labels}


def _run_raw(bundle: Path, image: np.ndarray, a: argparse.Namespace) -> dict:
    from segflow.config import PreprocessConfig
    from segflow.data.preprocess import Preprocessor
    from segflow.infer.onnx_backend import OnnxBackend
    from segflow.infer.tiling import tile_origins

    backend = OnnxBackend(bundle, threads=a.threads)
    meta = backend.meta
    pre = Preprocessor(
        PreprocessConfig.model_validate(meta.preprocess), meta.in_channels, meta.normalization
    )
    net, _ = pre.network_input(image)
    x = net.rows(0, net.shape[1])
    origins = tile_origins(x.shape[1], x.shape[2], a.tile, 0.25)
    backend(np.ascontiguousarray(x[None, :, : a.tile, : a.tile]))
    times = []
    for _ in range(a.repeat):
        start = time.perf_counter()
        for i in range(0, len(origins), a.batch):
            chunk = origins[i : i + a.batch]
            backend(np.ascontiguousarray(
                np.stack([x[:, y : y + a.tile, xx : xx + a.tile] for y, xx in chunk])
            ))  # fmt: skip
        times.append(time.perf_counter() - start)
    return {"times": times, "labels": None}


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would include the parent's, kept across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def _measure_auto(bundle: Path, a: argparse.Namespace) -> None:
    """The one-time measurement of ``auto`` (cached in the bundle): its time and choice."""
    from segflow.infer.predictor import Predictor

    start = time.perf_counter()
    predictor = Predictor.from_bundles(
        bundle,
        device="cpu",
        tile_size=a.tile,
        overlap=0.25,
        batch_size=a.batch,
        threads=a.threads,
        tta=[],
    )
    print(json.dumps({"kind": "auto-measure", "setup_s": time.perf_counter() - start,
                      "choice": predictor.describe_backends(), "peak_rss_mb": _peak_rss_mb()}))  # fmt: skip


def _child(kind: str, bundle: Path, image_path: Path, a: argparse.Namespace) -> None:
    """Run one contender; save its labels beside the image, print a JSON line of figures."""
    if kind == "auto-measure":
        _measure_auto(bundle, a)
        return
    image = np.load(image_path)
    if kind in SEGFLOW:
        res = _run_segflow(kind, bundle, image, a)
    elif kind.startswith("monai"):
        res = _run_monai(kind, bundle, image, a)
    else:
        res = _run_raw(bundle, image, a)
    labels = res.pop("labels")
    if labels is not None:
        np.save(image_path.with_name(f"labels-{kind}.npy"), labels)
    times = res.pop("times")
    peak = _peak_rss_mb()
    print(json.dumps({"kind": kind, "seconds": min(times), "all_seconds": times,
                      "peak_rss_mb": peak, **res}))  # fmt: skip


# -- the parent: run everything, report ratios -------------------------------------------------
def _spawn(kind: str, bundle: Path, image: Path, a: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "NO_ALBUMENTATIONS_UPDATE": "1"}
    flags = ["--tile", str(a.tile), "--batch", str(a.batch), "--threads", str(a.threads),
             "--repeat", str(a.repeat)]  # fmt: skip
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(bundle), str(image), *flags],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        return {"kind": kind, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _report(results: dict[str, dict], image: Path, a: argparse.Namespace) -> None:
    def agreement(kind: str, ref: str) -> str:
        files = [image.with_name(f"labels-{k}.npy") for k in (kind, ref)]
        if not all(f.is_file() for f in files):
            return "     -"
        return f"{float(np.mean(np.load(files[0]) == np.load(files[1]))):.4f}"

    mpix = a.size**2 / 1e6
    print(
        f"{'contender':22s} {'seconds':>8s} {'Mpix/s':>7s} {'peak RSS':>9s}  agree:fp32 eager  MONAI-f32"
    )
    for kind, r in results.items():
        if kind == "auto-measure":
            continue
        if "error" in r:
            print(f"{kind:22s} failed: {r['error']}")
            continue
        print(f"{kind:22s} {r['seconds']:8.2f} {mpix / r['seconds']:7.3f} {r['peak_rss_mb']:6.0f} MB"
              f"  {agreement(kind, REFERENCE):>16s}  {agreement(kind, 'monai-f32'):>9s}")  # fmt: skip
    ref = image.with_name(f"labels-{REFERENCE}.npy")
    if ref.is_file():  # an all-background model would agree with anything
        print(f"foreground share of the fp32 eager mask: {float(np.mean(np.load(ref) > 0)):.2%}")
    auto, first = results.get("segflow-auto", {}), results.get("auto-measure", {})
    if "setup_s" in first:
        print(f"auto's one-time measurement (then cached): {first['setup_s']:.1f} s, "
              f"peak RSS {first['peak_rss_mb']:.0f} MB")  # fmt: skip
    if "seconds" in auto:
        print(f"segflow-auto chose: {auto['choice']} (setup {auto['setup_s']:.1f} s)")
        for peer in ("monai-bf16", "monai-f32", "raw"):
            if "seconds" in results.get(peer, {}):
                goal = {"monai-bf16": ">= 1.5", "monai-f32": ">= 3", "raw": "-"}[peer]
                ratio = results[peer]["seconds"] / auto["seconds"]
                print(f"segflow-auto / {peer} throughput: {ratio:.2f}  (goal {goal})")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=CHASE, help="CHASE_DB1 folder or a canonical dataset"
    )
    p.add_argument("--bundle", type=Path, help="a trained bundle (copied; not trained here then)")
    p.add_argument("--train-minutes", type=float, default=2.0)
    p.add_argument("--epochs", type=int, default=500, help="epoch cap of the training run")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--train-tile", type=int, default=256)
    p.add_argument("--size", type=int, default=2048, help="side of the test mosaic")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeat", type=int, default=2, help="timed runs each (best is kept)")
    p.add_argument("--only", nargs="*", choices=KINDS, help="run these contenders only")
    p.add_argument("--keep", type=Path, help="keep the work folder (bundle, dataset) here")
    p.add_argument("--child", nargs=3, metavar=("KIND", "BUNDLE", "IMAGE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.child[0], Path(a.child[1]), Path(a.child[2]), a)
        return
    with tempfile.TemporaryDirectory(prefix="segflow-tiles-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        dataset = _canonical(a.data, work)
        bundle = _bundle(a, dataset, work)
        prepared = time.perf_counter() - started
        image = work / "image.npy"
        np.save(image, _mosaic(dataset, a.size))
        kinds = list(a.only or KINDS)
        if "segflow-auto" in kinds:  # measured once first, as a user's first run would
            kinds.insert(0, "auto-measure")
        results = {kind: _spawn(kind, bundle, image, a) for kind in kinds}
        from segflow.models.bundle import read_bundle_meta

        meta = read_bundle_meta(bundle)
        bf16 = meta.exports["onnx"].bf16
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {a.threads} threads for all")
        source = "trained here" if not a.bundle else str(a.bundle)
        val = {k: round(v, 4) for k, v in meta.metrics.items() if k.startswith("val/")}
        print(f"bundle: {meta.arch}-{meta.encoder}, {meta.task}, {source} ({prepared:.0f} s "
              f"incl. export), {json.dumps(val)[:160]}")  # fmt: skip
        if bf16 is not None:
            print(f"export bf16 check: {bf16.agreement:.4f} on {bf16.inputs} (safe: {bf16.safe})")
        print(f"image: {a.size}x{a.size} mosaic of held-out photographs, tile {a.tile}, overlap 0.25, "
              f"gaussian, batch {a.batch}")  # fmt: skip
        _report(results, image, a)


if __name__ == "__main__":
    main()
