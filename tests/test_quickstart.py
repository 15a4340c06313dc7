"""segflow quickstart: every stage runs on the bundled sample (tiny training for speed)."""

from __future__ import annotations

from pathlib import Path

import segflow.quickstart as qs
from segflow.models.bundle import load_bundle


def test_quickstart_runs_every_stage(cli, tmp_path: Path, monkeypatch) -> None:
    # The real stages with a budget of seconds: the planner's table (no timing run) and 64-px
    # tiles keep the training short.
    monkeypatch.setattr(qs, "QUICKSTART_BUDGET", "20s")
    monkeypatch.setattr(qs, "QUICKSTART_TIMING", "table")
    monkeypatch.setattr(
        qs, "QUICKSTART_SETTINGS", ("data.tile_size=64", "data.num_workers=0", "train.epochs=1")
    )
    out = tmp_path / "qs"
    res = cli("quickstart", "--out", out)
    assert res.exit_code == 0, res.stderr
    for cmd in (
        "segflow import masks",
        "segflow check",
        "segflow split",
        "segflow plan",
        "segflow train",
        "segflow eval",
        "segflow export",
        "segflow predict",
    ):
        assert cmd in res.stdout
    plan = (out / "plan.yaml").read_text()
    assert "# " in plan and "budget" in plan  # the decisions are written as comments
    assert "tile_size: 64" in plan and "batch_size:" in plan
    assert "the plan (every reason is a comment in" in res.stdout
    bundle_dir = out / "runs" / "nuclei" / "best.segflow"
    assert (bundle_dir / "model.onnx").is_file()
    assert (out / "runs" / "nuclei" / "eval_test" / "report.html").is_file()
    assert "test split: mIoU" in res.stdout
    test_stems = [
        line.split(",")[0]
        for line in (out / "dataset" / "splits.csv").read_text().splitlines()[1:]
        if line.split(",")[1] == "test"
    ]
    assert test_stems and sorted(
        p.stem for p in (out / "predictions").glob("*.png") if not p.stem.endswith("_color")
    ) == sorted(test_stems)
    assert (out / "dataset" / "qa_report.html").is_file() and (
        out / "dataset" / "splits.csv"
    ).is_file()
    bundle = load_bundle(out / "runs" / "nuclei" / "best.segflow")
    assert [c.name for c in bundle.meta.classes] == ["background", "nucleus"]
    assert "mlflow ui --backend-store-uri sqlite:///" in res.stdout.replace("\n", "")
    assert (out / "sample_nuclei" / "README.md").is_file()  # licence travels with the data
    again = cli("quickstart", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    (tmp_path / "mine").mkdir()
    refused = cli("quickstart", "--out", tmp_path / "mine", "--overwrite")
    assert refused.exit_code == 2 and "not made by segflow quickstart" in refused.stderr
