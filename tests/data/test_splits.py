"""segflow split: random, stratified, grouped, k-fold; deterministic; errors."""

from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.data.dataset import CanonicalDataset, read_splits
from segflow.data.splits import make_splits
from segflow.errors import UsageError
from tests.fixtures.synthetic import make_dataset


def _rename_as_children(root: Path, per_child: int) -> None:
    """Rename s000.. to child01_a, child01_b ... (per_child images per child)."""
    for i, p in enumerate(sorted((root / "images").iterdir())):
        stem = f"child{i // per_child:02d}_{'abc'[i % per_child]}"
        p.rename(p.with_name(stem + p.suffix))
        (root / "masks" / f"{p.stem}.png").rename(root / "masks" / f"{stem}.png")


def test_random_split_fractions_and_determinism(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=40, size=(16, 16))
    a = make_splits(root, val=0.2, test=0.1, seed=3)
    first = (root / "splits.csv").read_text()
    counts = Counter(r.split for r in a.rows)
    assert counts == {"train": 28, "val": 8, "test": 4}
    make_splits(root, val=0.2, test=0.1, seed=3)
    assert (root / "splits.csv").read_text() == first
    make_splits(root, val=0.2, test=0.1, seed=4)
    assert (root / "splits.csv").read_text() != first


def test_group_by_keeps_children_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=30, size=(16, 16))
    _rename_as_children(root, 2)
    for seed in range(5):
        res = make_splits(root, val=0.2, test=0.2, group_by=r"child(\d+)", seed=seed)
        by_group = defaultdict(set)
        for r in res.rows:
            by_group[r.group].add(r.split)
        assert len(by_group) == 15 and all(len(s) == 1 for s in by_group.values())
        assert res.groups == {"train": 9, "val": 3, "test": 3}


def test_shared_mask_images_stay_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=12, size=(16, 16))
    for t in (1, 2):  # two more acquisitions of scene s000 with the same mask
        shutil.copy(root / "images" / "s000.png", root / "images" / f"s000_t{t}.png")
        shutil.copy(root / "masks" / "s000.png", root / "masks" / f"s000_t{t}.png")
    for seed in range(6):
        res = make_splits(root, val=0.3, test=0.3, seed=seed)
        splits = {r.stem: r for r in res.rows}
        assert splits["s000"].split == splits["s000_t1"].split == splits["s000_t2"].split
        assert splits["s000"].group == splits["s000_t1"].group != ""
    assert any("share" in w for w in res.warnings)


def test_stratify_spreads_a_rare_class(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=40, size=(16, 16), num_classes=3)
    masks = sorted((root / "masks").iterdir())
    for i, p in enumerate(masks):  # class 2 only in 8 images
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        m[m == 2] = 0
        if i % 5 == 0:
            m[:4, :4] = 2
        cv2.imwrite(str(p), m)
    for seed in range(5):
        res = make_splits(root, val=0.25, test=0.25, stratify=True, seed=seed)
        rare = res.presence
        assert (
            rare["train"]["class2"] == 4
            and rare["val"]["class2"] == 2
            and rare["test"]["class2"] == 2
        )


def test_k_fold_covers_every_non_test_image_once(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=30, size=(16, 16))
    _rename_as_children(root, 3)
    res = make_splits(root, test=0.2, folds=4, group_by=r"child(\d+)", seed=0)
    rows = read_splits(root / "splits.csv")
    test = [r for r in rows.values() if r.split == "test"]
    folded = [r for r in rows.values() if r.fold is not None]
    assert len(test) + len(folded) == 30 and not any(r.fold is not None for r in test)
    assert {r.fold for r in folded} == {0, 1, 2, 3}
    assert all((r.split == "val") == (r.fold == 0) for r in folded)
    by_group = defaultdict(set)
    for r in rows.values():
        by_group[r.group].add((r.split, r.fold))
    assert all(len(v) == 1 for v in by_group.values())
    assert res.parts == ["test", "fold0", "fold1", "fold2", "fold3"]


def test_tiny_dataset_still_gets_val_and_test(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=4, size=(16, 16))
    res = make_splits(root, val=0.1, test=0.1, seed=0)
    assert Counter(r.split for r in res.rows) == {"train": 2, "val": 1, "test": 1}


def test_excluded_and_unlabelled_images_are_not_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=6, size=(16, 16))
    (root / "masks" / "s005.png").unlink()
    ds = CanonicalDataset(root)
    ds.save_meta(ds.meta.model_copy(update={"exclude": ["s000"]}))
    res = make_splits(root, seed=0)
    assert sorted(r.stem for r in res.rows) == ["s001", "s002", "s003", "s004"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val": 0.6, "test": 0.5}, "sum to less than 1"),
        ({"test": -0.1}, "must be in"),
        ({"folds": 1}, "at least 2 folds"),
        ({"group_by": "(unclosed"}, "not a valid regular expression"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    root = make_dataset(tmp_path / "ds", n=4, size=(16, 16))
    with pytest.raises(UsageError, match=message):
        make_splits(root, **kwargs)


def test_cli_prints_presence_table(tmp_path: Path, cli) -> None:
    root = make_dataset(tmp_path / "ds", n=10, size=(16, 16))
    res = cli("split", root, "--val", "0.2", "--test", "0.2", "--stratify", "--seed", "7")
    assert res.exit_code == 0, res.stderr
    assert "class1" in res.stdout and "images" in res.stdout and "test" in res.stdout
    bad = cli("split", root, "--val", "0.9", "--test", "0.5")
    assert (
        bad.exit_code == 2
        and bad.stderr.startswith("error: ")
        and len(bad.stderr.strip().splitlines()) == 1
    )
    assert np.isclose(sum(1 for _ in read_splits(root / "splits.csv")), 10)
