"""Canonical dataset: metadata validation, atomic writing, the sample contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segflow.data.dataset import (
    CanonicalDataset,
    DatasetMeta,
    DatasetWriter,
    SegmentationDataset,
    SplitRow,
    make_classes,
    read_splits,
)
from segflow.errors import DataError, UsageError
from tests.fixtures.synthetic import make_dataset


def test_sample_contract(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=3, size=(20, 30))
    ds = SegmentationDataset(root)
    assert len(ds) == 3
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 20, 30)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (20, 30)
    assert sample["meta"] == {"stem": "s000", "height": 20, "width": 30}
    # Raw values: no hidden scaling when there is no transform.
    assert float(sample["image"].max()) > 1.0
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 20, 30) and batch["meta"]["stem"] == [
        "s000",
        "s001",
        "s002",
    ]


def test_transform_called_albumentations_style(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=2, size=(20, 30))

    def flip(image: np.ndarray, mask: np.ndarray) -> dict:
        return {"image": image[:, ::-1] / 255.0, "mask": mask[:, ::-1]}

    plain, flipped = SegmentationDataset(root)[1], SegmentationDataset(root, transform=flip)[1]
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    assert float(flipped["image"].max()) <= 1.0


def test_split_selection_and_excluded(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=4)
    ds = CanonicalDataset(root)
    ds.save_splits(
        [
            SplitRow("s000", "train"),
            SplitRow("s001", "val"),
            SplitRow("s002", "train"),
            SplitRow("s003", "test"),
        ]
    )
    assert [s.stem for s in ds.labelled_samples("train")] == ["s000", "s002"]
    ds.save_meta(ds.meta.model_copy(update={"exclude": ["s002"]}))
    assert [s["meta"]["stem"] for s in SegmentationDataset(root, split="train")] == ["s000"]
    assert read_splits(root / "splits.csv")["s003"].split == "test"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "name: x\nclasses:\n- {id: 0, name: bg, color: [0,0,0]}\n- {id: 2, name: a, color: [1,1,1]}\n",
            "dense",
        ),
        (
            "name: x\nclasses:\n- {id: 0, name: a, color: [0,0,0]}\n- {id: 1, name: a, color: [1,1,1]}\n",
            "duplicate class names",
        ),
        ("name: x\nclasses:\n- {id: 0, name: a, color: [0,0,300]}\n", "0..255"),
        ("name: x\nclasses: []\n", "at least 1"),
        ("name: x\nclasses:\n- {id: 0, name: a, color: [0,0,0]}\nextra: 1\n", "extra"),
        ("[not, a, mapping]", "expected a mapping"),
        ("name: [unclosed", "not valid YAML"),
    ],
)
def test_invalid_dataset_yaml_names_the_file(tmp_path: Path, yaml_text: str, message: str) -> None:
    root = make_dataset(tmp_path / "ds", n=1)
    (root / "dataset.yaml").write_text(yaml_text)
    with pytest.raises(DataError, match=rf"dataset\.yaml: .*{message}"):
        CanonicalDataset(root)


def test_writer_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), DatasetWriter(out) as w:
        (w.images / "a.png").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with DatasetWriter(out) as w:
        w.finish(DatasetMeta(name="x", classes=make_classes(["background", "a"])))
    assert (out / "dataset.yaml").is_file()
    with pytest.raises(UsageError, match="already exists"):
        DatasetWriter(out)
    (tmp_path / "notes").mkdir()
    with pytest.raises(UsageError, match="not a segflow dataset"):
        DatasetWriter(tmp_path / "notes", overwrite=True)


def test_mask_size_mismatch_is_reported_by_the_torch_dataset(tmp_path: Path) -> None:
    import cv2

    root = make_dataset(tmp_path / "ds", n=1, size=(20, 30))
    cv2.imwrite(str(root / "masks" / "s000.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"s000\.png: mask is 10x10 but image s000\.png is 30x20"):
        SegmentationDataset(root)[0]
