"""``segflow predict --engine ray``: same masks as the local engine, resume, failures, retries.

A local Ray cluster (``ray.init(num_cpus=2)``, loopback only) is started once for the API tests
and shut down; the CLI test starts its own, as a user's run does without ``--address``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segflow.api import predict
from segflow.infer.outputs import read_mask_png
from segflow.infer.ray_engine import PredictWorker
from tests.fixtures.bundles import make_bundle
from tests.fixtures.synthetic import make_dataset

ray = pytest.importorskip("ray", reason="the ray extra is installed by `make test`")
ROOT = Path(__file__).resolve().parents[2]
CLI = [str(Path(sys.executable).parent / "segflow")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ray")
    bundle = make_bundle(tmp / "m.segflow", classes=3, tile=64)
    data = make_dataset(tmp / "ds", n=5, size=(80, 96), seed=4)
    images = tmp / "images"
    images.mkdir()
    for f in sorted((data / "images").iterdir()):
        (images / f.name).write_bytes(f.read_bytes())
    (images / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    local = tmp / "local"
    good = sorted(p for p in images.iterdir() if p.stem != "zz_broken")
    predict(bundle, good, out=local, backend="torch")
    return {"bundle": bundle, "images": images, "local": local, "tmp": tmp}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _failures(out: Path) -> list[dict[str, str]]:
    with (out / "failures.csv").open() as f:
        return list(csv.DictReader(f))


def _same_masks(a: Path, b: Path, stems: list[str]) -> None:
    for stem in stems:
        np.testing.assert_array_equal(
            read_mask_png(a / f"{stem}.png"), read_mask_png(b / f"{stem}.png")
        )


def test_same_masks_failures_recorded_then_resume_skips_done(
    setup, cluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    predict(setup["bundle"], setup["images"], out=out, backend="torch", engine="ray", workers=2)
    stems = [p.stem for p in sorted(setup["local"].glob("*.png")) if "_" not in p.stem[-6:]]
    stems = [s for s in stems if not s.endswith("_color")]
    assert len(stems) == 5
    _same_masks(setup["local"], out, stems)
    for stem in stems:  # every file the local engine writes, the ray engine writes too
        for name in (f"{stem}_color.png", f"{stem}_overlay.jpg"):
            assert (out / name).read_bytes() == (setup["local"] / name).read_bytes()
    summary = _summary(out)
    assert (summary["total"], summary["predicted"], summary["skipped"], summary["failed"]) == (
        6,
        5,
        0,
        1,
    )
    assert sum(w["images"] for w in summary["workers"].values()) == 6
    assert all(w["peak_rss_mb"] > 50 for w in summary["workers"].values())  # an actor with torch
    assert summary["images_per_second"] > 0
    (failure,) = _failures(out)
    assert failure["path"].endswith("zz_broken.png") and "\n" not in failure["error"]
    assert "zz_broken.png" in failure["error"]
    assert not (out / "zz_broken.png").exists()
    assert not list(out.glob(".*tmp*"))

    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    predict(setup["bundle"], setup["images"], out=out, backend="torch", engine="ray", workers=2)
    again = _summary(out)
    assert (again["predicted"], again["skipped"], again["failed"]) == (0, 5, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == before  # not rewritten

    (out / f"{stems[0]}_overlay.jpg").unlink()  # an incomplete image is done again
    predict(setup["bundle"], setup["images"], out=out, backend="torch", engine="ray", workers=1)
    assert (_summary(out)["predicted"], _summary(out)["skipped"]) == (1, 4)
    assert (out / f"{stems[0]}_overlay.jpg").is_file()

    predict(
        setup["bundle"], setup["images"], out=out, backend="torch", engine="ray", overwrite=True
    )
    assert _summary(out)["predicted"] == 5


def test_a_killed_worker_is_retried_and_leaves_no_partial_file(
    setup, cluster, tmp_path: Path
) -> None:
    out, marker = tmp_path / "out", tmp_path / "killed-once"

    class DiesOnce(PredictWorker):  # defined here: Ray ships it to the actors by value
        def predict_one(self, path: Path) -> None:
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                # half-written output of this process, then a hard kill (no cleanup runs)
                (self.out_dir / f".{path.stem}.png.tmp-{os.getpid()}-0123abcd").write_bytes(b"x")
                os._exit(1)
            super().predict_one(path)

    from segflow.infer.options import InferenceOptions
    from segflow.infer.predictor import expand_inputs
    from segflow.infer.ray_engine import WriteSpec, predict_ray
    from segflow.models.bundle import read_bundle_meta

    files = [p for p in expand_inputs(setup["images"]) if p.stem != "zz_broken"]
    options = InferenceOptions.from_flags(read_bundle_meta(setup["bundle"]), backend="torch")
    out.mkdir()
    summary = predict_ray([setup["bundle"]], files, out, options, WriteSpec(), workers=1,
                          worker_cls=DiesOnce)  # fmt: skip
    assert marker.exists()  # the kill happened
    assert (summary.predicted, summary.failed) == (5, 0)
    _same_masks(setup["local"], out, [p.stem for p in files])
    assert not list(out.glob(".*tmp*"))  # the dead writer's temporary file was swept


def test_cli_default_local_cluster_and_manifest(setup, tmp_path: Path) -> None:
    """As a user runs it: default backend and precision, no --address (Ray starts and stops a
    local cluster), a CSV manifest."""
    good = sorted(p for p in setup["images"].iterdir() if p.stem != "zz_broken")
    manifest = tmp_path / "list.csv"
    rows = [os.path.relpath(p, tmp_path) for p in good[:3]]
    manifest.write_text("id,path\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows)))
    out = tmp_path / "out"
    res = subprocess.run([*CLI, "predict", str(setup["bundle"]), str(manifest), "--out", str(out),
                          "--engine", "ray"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "3 predicted, 0 skipped (done before), 0 failed (failures.csv)" in res.stdout
    _same_masks(setup["local"], out, [p.stem for p in good[:3]])
    assert _summary(out)["engine"] == "ray"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--engine", "ray", "--address", "127.0.0.1:1"], 2, "no Ray cluster answers there"),
        (["--engine", "ray", "--address", "nohost"], 2, "use auto, HOST:PORT or ray://HOST:PORT"),
        (["--engine", "ray", "--workers", "0"], 2, "--workers 0: must be >= 1"),
        (["--engine", "ray", "--polygons", "coco"], 2, "--polygons coco collects every image"),
        (["--engine", "spark"], 2, "--engine 'spark': use local or ray"),
        (["--overwrite"], 2, "--overwrite is for --engine ray"),
        (["--workers", "2"], 2, "--workers is for --engine ray"),
        (["@nocolumn"], 1, "a manifest needs a 'path' column (found: file, group)"),
        (["@missing"], 1, "row 3: "),
    ],
)
def test_bad_engine_input_is_one_line(setup, tmp_path: Path, args, code, message) -> None:
    good = sorted(p for p in setup["images"].iterdir() if p.stem != "zz_broken")
    inputs = [str(good[0])]
    if args and args[0].startswith("@"):
        manifest = tmp_path / "m.csv"
        text = {"@nocolumn": f"file,group\n{good[0]},a\n",
                "@missing": f"path\n{good[0]}\n{tmp_path / 'gone.png'}\n"}[args[0]]  # fmt: skip
        manifest.write_text(text)
        inputs, args = [str(manifest)], []
    out = tmp_path / "out"
    res = subprocess.run([*CLI, "predict", str(setup["bundle"]), *inputs, "--out", str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == code, (res.stdout, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists()  # nothing written
