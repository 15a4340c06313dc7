"""clDice (Shit et al., CVPR 2021): the soft skeleton, and that breaks cost more than thickening."""

from __future__ import annotations

import pytest
import torch

from segflow.config import LossConfig
from segflow.train.losses import ClDiceLoss, build_loss, soft_skeleton


def _bar(width: int = 7, size: int = 32) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    top = size // 2 - width // 2
    x[..., top : top + width, 4:-4] = 1.0
    return x


def test_soft_skeleton_of_a_bar_is_its_centre_line() -> None:
    bar = _bar(width=7)
    skel = soft_skeleton(bar, iterations=5)
    assert skel.min() >= 0 and skel.max() <= 1
    assert torch.all(skel[bar == 0] == 0)  # never outside the shape
    rows = skel[0, 0].sum(dim=1)
    assert int(rows.argmax()) == 16  # the middle row of rows 13..19
    assert skel.sum() < 0.3 * bar.sum()  # a line, not the area


def test_cldice_punishes_a_break_more_than_the_same_pixels_added() -> None:
    target = _bar(width=3)[:, 0].long()  # (1, 32, 32), rows 15..17, columns 4..27
    broken = target.clone()
    broken[:, 15:18, 14:17] = 0  # a 3 x 3 gap cuts the line
    thick = target.clone()
    thick[:, 18, 10:19] = 1  # the same 9 pixels added along one side
    loss = ClDiceLoss("binary", 255, iterations=3)

    def value(pred: torch.Tensor) -> float:
        return float(loss((pred.float() * 2 - 1).unsqueeze(1) * 30, target))

    assert value(target) == pytest.approx(0.0, abs=1e-3)
    assert value(broken) > 3 * value(thick)
    assert value(broken) > 0.02


def test_cldice_is_a_loss_term_by_name_and_multiclass_averages_the_foreground() -> None:
    loss = build_loss(
        LossConfig(terms={"ce": 1.0, "cldice": 0.5}), task="multiclass", num_classes=3
    )
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[:, 15:18, 4:28] = 1
    target[:, 4:28, 15:18] = 2
    target[:, 15:18, 15:18] = 1
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 60 - 30
    _, parts = loss(logits, target)
    assert parts["cldice"].item() == pytest.approx(0.0, abs=1e-3)
    wrong = logits.clone()
    wrong[:, [1, 2]] = wrong[:, [2, 1]]  # classes 1 and 2 swapped: no skeleton overlap at all
    assert loss(wrong, target)[1]["cldice"].item() > 0.9
    with pytest.raises(ValueError, match="less than or equal to 50"):
        LossConfig(cldice_iterations=51)
