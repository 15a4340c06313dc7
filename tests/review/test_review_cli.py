"""`segflow review` as a user runs it: injected label errors rank first with their kind.

The dataset's masks are the bundle's own predictions (``dataset_labelled_by``), so a clean mask
agrees with the model everywhere; two masks then get an error each. The bundle is a random
network whose logits are scaled x30 and shifted by -5 (confident probabilities, objects a
third of the pixels at most).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.fixtures.bundles import dataset_labelled_by, make_bundle, shifted_bundle

SEGFLOW = Path(sys.executable).parent / "segflow"
MISSING_STEM, EXTRA_STEM = "s002", "s004"  # both in the val split; s000 is "train"


def _inject(root: Path) -> None:
    """s002: its largest object left unlabelled (missing); s004: a disc painted far from any."""
    path = root / "masks" / f"{MISSING_STEM}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    _, labels, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8))
    mask[labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())] = 0
    cv2.imwrite(str(path), mask)
    path = root / "masks" / f"{EXTRA_STEM}.png"
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    outside = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(outside.argmax()), mask.shape)
    cv2.circle(mask, (int(x), int(y)), 8, 1, -1)
    cv2.imwrite(str(path), mask)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("review")
    raw = make_bundle(tmp / "raw.segflow", classes=2)
    bundle = shifted_bundle(raw, tmp / "sharp.segflow", -5.0, scale=30.0)
    root = dataset_labelled_by(bundle, tmp / "ds", n=6)
    _inject(root)
    return bundle, root


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.stems: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-stem"):
            self.stems.append(str(a["data-stem"]))
        if tag == "img" and a.get("loading") == "lazy":
            self.images.append(str(a["src"]))


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_injected_errors_rank_first_with_their_kind(setup: tuple[Path, Path], tmp_path) -> None:
    bundle, root = setup
    out = tmp_path / "rev"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    res = subprocess.run(
        [SEGFLOW, "review", root, "--bundle", bundle, "--out", out],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "in-sample" in res.stderr and "--include-train" in res.stderr
    rows = _csv(out / "review.csv")
    assert list(rows[0]) == ["stem", "split", "score", "rank", "kind", "pixels", "kinds"]
    # Every labelled image but the one training image, worst first.
    assert sorted(r["stem"] for r in rows) == ["s001", "s002", "s003", "s004", "s005"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)
    kinds = {r["stem"]: r["kind"] for r in rows}
    assert {r["stem"] for r in rows[:2]} == {MISSING_STEM, EXTRA_STEM}
    assert kinds[MISSING_STEM] == "missing object"
    assert kinds[EXTRA_STEM] == "extra object"
    assert all(r["kind"] == "none" and r["pixels"] == "0" for r in rows[2:])
    assert all(int(r["pixels"]) > 10 for r in rows[:2])
    assert all(r["kinds"] == f"{r['kind']} {r['pixels']}" for r in rows[:2])
    assert max(scores[:2]) < min(scores[2:])
    # The gallery lists every scored image, each with four thumbnails that exist.
    page = _Rows()
    page.feed((out / "review.html").read_text())
    assert page.stems == [r["stem"] for r in rows]
    assert len(page.images) == 4 * len(rows)
    assert all((out / src).is_file() for src in page.images)
    assert (out / "stems.txt").read_text().split() == [r["stem"] for r in rows]
    assert [p.name for p in tmp_path.iterdir()] == ["rev"]  # no staging folder left
    assert rows[0]["stem"] in res.stdout


def test_include_train_and_unlabelled_ranking(cli, setup: tuple[Path, Path], tmp_path) -> None:
    bundle, root = setup
    pool = tmp_path / "pool"
    pool.mkdir()
    for stem in ("s003", "s005"):
        shutil.copy(root / "images" / f"{stem}.png", pool / f"new_{stem}.png")
    flat = np.full((64, 64, 3), 128, np.uint8)
    cv2.imwrite(str(pool / "new_flat.png"), flat)
    out = tmp_path / "rev"
    res = cli(
        "review", root, "--bundle", bundle, "--out", out, "--include-train", "--top", "2",
        "--unlabeled", pool,
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    rows = _csv(out / "review.csv")
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train", "test", "val"}
    assert (out / "stems.txt").read_text().split() == [rows[0]["stem"], rows[1]["stem"]]
    nxt = _csv(out / "label_next.csv")
    assert sorted(r["stem"] for r in nxt) == ["new_flat", "new_s003", "new_s005"]
    scores = [float(r["score"]) for r in nxt]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] < scores[0] <= 1
    page = _Rows()
    page.feed((out / "label_next.html").read_text())
    assert page.stems == [r["stem"] for r in nxt]


def _one_line_error(res, code: int, needle: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert needle in res.stderr, res.stderr


def test_bad_input_one_line_and_no_output(cli, setup: tuple[Path, Path], tmp_path) -> None:
    bundle, root = setup
    other = make_bundle(tmp_path / "three.segflow", classes=3)
    bare = tmp_path / "bare"
    shutil.copytree(root, bare)
    shutil.rmtree(bare / "masks")
    out = tmp_path / "rev"
    cases = [
        (("review", bare, "--bundle", bundle), 1, "no masks"),
        (("review", root, "--bundle", other), 1, "differ from the classes"),
        (("review", root, "--bundle", bundle, "--top", "0"), 2, "--top 0"),
        (("review", tmp_path / "nope", "--bundle", bundle), 1, "dataset folder not found"),
        (("review", root), 2, "--bundle"),
        (("review", root, "--bundle", bundle, "--temperature", "0"), 2, "--temperature 0"),
    ]
    for args, code, needle in cases:
        _one_line_error(cli(*args, "--out", out), code, needle)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "three.segflow"]
    out.mkdir()
    _one_line_error(cli("review", root, "--bundle", bundle, "--out", out), 2, "--overwrite")
    assert list(out.iterdir()) == []


def test_a_broken_mask_midway_leaves_no_output(cli, setup: tuple[Path, Path], tmp_path) -> None:
    bundle, root = setup
    ds = tmp_path / "ds"
    shutil.copytree(root, ds)
    bad = np.zeros((64, 64), np.uint8)
    bad[5, 5] = 7
    cv2.imwrite(str(ds / "masks" / "s005.png"), bad)  # the last image scored
    res = cli("review", ds, "--bundle", bundle, "--out", tmp_path / "rev")
    assert res.exit_code == 1
    warning, error = res.stderr.splitlines()  # the in-sample warning came before the work
    assert warning.startswith("warning: ") and error.startswith("error: ")
    assert "s005.png" in error and "[7]" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nor a staging folder


def test_two_bundles_and_no_splits(cli, setup: tuple[Path, Path], tmp_path) -> None:
    bundle, root = setup
    raw = make_bundle(tmp_path / "raw2.segflow", classes=2, seed=1)
    second = shifted_bundle(raw, tmp_path / "sharp2.segflow", -5.0, scale=30.0)
    ds = tmp_path / "ds"
    shutil.copytree(root, ds)
    (ds / "splits.csv").unlink()
    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copy(root / "images" / "s001.png", pool / "a.png")
    out = tmp_path / "rev"
    res = cli(
        "review", ds, "--bundle", bundle, "--bundle", second, "--out", out, "--unlabeled", pool
    )
    assert res.exit_code == 0, res.stderr
    assert "without splits.csv" in res.stderr  # no train split known: all scored, and said
    assert len(_csv(out / "review.csv")) == 6
    assert "the models&#39; disagreement" in (out / "label_next.html").read_text()
