"""segflow check: every kind of finding, the report, exclusions, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.api import check as run_check
from segflow.data.dataset import CanonicalDataset, SegmentationDataset, SplitRow
from segflow.data.qa import QA_CHECKS, Severity
from tests.fixtures.synthetic import make_dataset


def _findings(result, check: str, severity: Severity | None = None) -> list:
    return [
        f
        for f in result.report.findings
        if f.check == check and (severity is None or f.severity == severity)
    ]


def test_clean_dataset_has_no_findings_and_writes_outputs(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=6)
    result = run_check(root)
    assert [f for f in result.report.findings if f.severity != Severity.INFO] == []
    data = json.loads((root / "qa.json").read_text())
    assert data["num_images"] == 6 and data["counts"]["error"] == 0
    fp = json.loads((root / "fingerprint.json").read_text())
    assert fp["num_labelled"] == 6 and len(fp["channel_mean"]) == 3
    pixels = sum(c["pixels"] for c in fp["classes"])
    assert pixels == 6 * 48 * 64
    html = (root / "qa_report.html").read_text()
    assert html.count("<figure class=") == 6
    assert html.count("data:image/png;base64") == 2  # class balance + size plots


def test_check_writes_the_planners_fingerprint(tmp_path: Path) -> None:
    """fingerprint.json from `segflow check` holds what `segflow plan` measures, widths included."""
    from segflow.data.fingerprint import Fingerprint, fingerprint_dataset

    root = make_dataset(tmp_path / "ds", n=5, size=(48, 64), num_classes=3)
    run_check(root, html=False)
    written = Fingerprint.model_validate_json((root / "fingerprint.json").read_text())
    planned = fingerprint_dataset(root)
    assert written.classes == planned.classes
    assert all(c.median_width > 0 and c.p90_object_extent > 0 for c in written.classes[1:])


def test_every_problem_is_found(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=10, num_classes=4)
    img, msk = root / "images", root / "masks"
    # truncated image
    data = (img / "s000.png").read_bytes()
    (img / "s000.png").write_bytes(data[: len(data) // 3])
    # mask size mismatch
    cv2.imwrite(str(msk / "s001.png"), np.zeros((10, 10), np.uint8))
    # mask value outside the classes
    m = cv2.imread(str(msk / "s002.png"), cv2.IMREAD_UNCHANGED)
    m[0, 0] = 9
    cv2.imwrite(str(msk / "s002.png"), m)
    # empty mask
    cv2.imwrite(str(msk / "s003.png"), np.zeros((48, 64), np.uint8))
    # exact duplicate (across splits below) and near duplicate (resized copy)
    shutil.copy(img / "s004.png", img / "s104.png")
    shutil.copy(msk / "s004.png", msk / "s104.png")
    big = cv2.imread(str(img / "s005.png"))
    cv2.imwrite(str(img / "s105.jpg"), cv2.resize(big, (96, 72)))
    # orphan mask, unlabelled image, duplicate stem
    shutil.copy(msk / "s006.png", msk / "orphan.png")
    shutil.copy(img / "s007.png", img / "lonely.png")
    shutil.copy(img / "s008.png", img / "s008.jpg")
    ds = CanonicalDataset(root)
    ds.save_splits(
        [
            SplitRow("s004", "train"),
            SplitRow("s104", "test"),
            SplitRow("ghost", "train"),
            SplitRow("s006", "train", "g1"),
            SplitRow("s009", "val", "g1"),
        ]
    )
    result = run_check(root)
    assert any("truncated" in f.message for f in _findings(result, "unreadable", Severity.ERROR))
    assert _findings(result, "size_mismatch", Severity.ERROR)[0].stems == ["s001"]
    bad = _findings(result, "mask_values", Severity.ERROR)
    assert bad[0].stems == ["s002"] and "[9]" in bad[0].message
    empty = _findings(result, "empty_mask")[0]
    assert "s003" in empty.stems and str(root / "masks" / "s003.png") in empty.files
    dup = _findings(result, "duplicates", Severity.ERROR)
    assert dup and set(dup[0].stems) == {"s004", "s104"} and "leakage" in dup[0].message
    near = [f for f in _findings(result, "duplicates", Severity.WARNING) if "near" in f.message]
    assert [set(f.stems) for f in near] == [{"s005", "s105"}]
    unmatched = " ".join(f.message for f in _findings(result, "unmatched"))
    assert "orphan.png" in unmatched and "lonely.png" in unmatched
    assert _findings(result, "duplicate_stem", Severity.ERROR)[0].stems == ["s008"]
    split_msgs = [f.message for f in _findings(result, "splits")]
    assert any("ghost" in m for m in split_msgs) and any("'g1' straddles" in m for m in split_msgs)
    assert result.report.has_errors
    # the report flags the broken samples first
    html = (root / "qa_report.html").read_text()
    assert html.index("s001") < html.index("s007")


def test_rare_and_absent_classes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=4, num_classes=3)
    for p in (root / "masks").iterdir():
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        m[m == 2] = 0
        cv2.imwrite(str(p), m)
    ds = CanonicalDataset(root)
    meta = ds.meta.model_copy(
        update={
            "classes": [
                *ds.meta.classes,
                ds.meta.classes[2].model_copy(update={"id": 3, "name": "ghost"}),
            ]
        }
    )
    ds.save_meta(meta)
    result = run_check(root)
    msgs = [f.message for f in _findings(result, "classes")]
    assert any("'class2' appears in no mask" in m for m in msgs)
    assert any("'ghost' appears in no mask" in m for m in msgs)


def test_exclude_drops_samples_from_later_stages_without_deleting(tmp_path: Path, cli) -> None:
    root = make_dataset(tmp_path / "ds", n=5)
    exclude = tmp_path / "bad.txt"
    exclude.write_text("# blurry\ns001\ns003.png\n")
    res = cli("check", root, "--exclude", exclude)
    assert res.exit_code == 0, res.stderr
    assert CanonicalDataset(root).meta.exclude == ["s001", "s003"]
    assert (root / "images" / "s001.png").exists()
    stems = [s["meta"]["stem"] for s in SegmentationDataset(root)]
    assert stems == ["s000", "s002", "s004"]
    report = json.loads((root / "qa.json").read_text())
    assert report["num_images"] == 3
    assert any(
        f["check"] == "excluded" and f["stems"] == ["s001", "s003"] for f in report["findings"]
    )
    exclude.write_text("nope\n")
    res = cli("check", root, "--exclude", exclude)
    assert (
        res.exit_code == 1
        and res.stderr.startswith("error: ")
        and "bad.txt: line 1: 'nope'" in res.stderr
    )


def test_cli_exit_code_follows_errors(tmp_path: Path, cli) -> None:
    root = make_dataset(tmp_path / "ds", n=3)
    ok = cli("check", root, "--report", tmp_path / "r.html", "--json", tmp_path / "q.json")
    assert ok.exit_code == 0 and (tmp_path / "r.html").is_file() and (tmp_path / "q.json").is_file()
    cv2.imwrite(str(root / "masks" / "s000.png"), np.zeros((5, 5), np.uint8))
    bad = cli("check", root)
    assert bad.exit_code == 1
    assert "size_mismatch" in bad.stdout
    assert cli("check", tmp_path / "nothing").exit_code == 1


def test_registry_lists_every_check() -> None:
    assert set(QA_CHECKS.names()) >= {
        "unreadable",
        "unmatched",
        "duplicate_stem",
        "size_mismatch",
        "mask_values",
        "empty_mask",
        "duplicates",
        "classes",
        "image_properties",
        "splits",
        "excluded",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_and_serial_scans_agree(tmp_path: Path, workers: int) -> None:
    root = make_dataset(
        tmp_path / "ds", n=40, size=(16, 16)
    )  # >= MIN_ITEMS_FOR_POOL: uses the pool
    result = run_check(root, workers=workers, html=False)
    assert result.report.fingerprint is not None
    assert [s.stem for s in result.scans] == [f"s{i:03d}" for i in range(40)]
    assert result.report.fingerprint.classes[1].pixels == sum(
        int((cv2.imread(str(p), cv2.IMREAD_UNCHANGED) == 1).sum())
        for p in sorted((root / "masks").iterdir())
    )
