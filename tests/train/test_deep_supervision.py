"""Deep supervision: auxiliary heads on Unet decoder stages, in training only, never in the bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segflow.config import SegflowConfig, config_to_dict, load_config
from segflow.data.splits import make_splits
from segflow.errors import ConfigError
from segflow.models.bundle import load_bundle
from segflow.train.runner import TrainResult, train
from segflow.train.task import SegmentationTask
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


def _task(stages: int, arch: str = "Unet", classes: int = 3, depth: int = 5) -> SegmentationTask:
    kwargs = {"encoder_depth": depth, "decoder_channels": [64, 32, 16, 16, 8][-depth:]}
    cfg = SegflowConfig.model_validate(
        {
            "model": {"arch": arch, "encoder": "resnet18", "encoder_weights": None,
                      "kwargs": kwargs if arch == "Unet" else {}},
            "train": {"deep_supervision": stages},
        }
    )  # fmt: skip
    names = [f"c{i}" for i in range(classes)]
    kind = "binary" if classes == 2 else "multiclass"
    return SegmentationTask(config_to_dict(cfg), names, kind, 3, pretrained=False)


def test_heads_sit_on_the_stages_before_the_last_and_the_loss_halves_per_stage() -> None:
    torch.manual_seed(0)
    task = _task(2)
    # stages 3 and 4 of 5 (coarsest first): 16 and 16 channels in, 3 classes out
    assert [h.in_channels for h in task.aux_heads] == [16, 16]
    assert [h.out_channels for h in task.aux_heads] == [3, 3]
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    task.train()
    logits = task(x)
    outputs = list(task._aux_outputs)
    assert [o.shape[-1] for o in outputs] == [16, 32]  # 1/4 and 1/2 of the input
    main, _ = task.criterion(logits, y)

    def aux(k: int) -> torch.Tensor:
        up = torch.nn.functional.interpolate(
            task.aux_heads[k](outputs[k]), size=(64, 64), mode="bilinear", align_corners=False
        )
        return task.criterion(up, y)[0]

    expected = (main + 0.5 * aux(1) + 0.25 * aux(0)) / 1.75  # the finest aux stage weighs 0.5
    total = task._deep_supervision(main, y)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in task.aux_heads)
    # evaluation collects nothing, and the network's own weights hold no auxiliary head
    task.eval()
    with torch.no_grad():
        task(x)
    assert task._aux_outputs == []
    assert not any("aux" in k for k in task.model.state_dict())


def test_off_by_default_and_refused_where_it_does_not_apply() -> None:
    assert SegflowConfig().train.deep_supervision == 0
    assert len(_task(0).aux_heads) == 0
    with pytest.raises(ConfigError, match=r"needs model\.arch Unet"):
        _task(1, arch="FPN")
    with pytest.raises(ConfigError, match="has 3 stages, so at most 2"):
        _task(3, depth=3)
    with pytest.raises(ConfigError, match=r"train\.deep_supervision"):
        load_config(overrides=["train.deep_supervision=5"])


def test_run_with_deep_supervision_saves_a_plain_bundle(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=8, size=(64, 64), num_classes=2, seed=2)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    result = train(
        TINY,
        data=ds,
        name="ds",
        overrides=[f"train.output={tmp_path / 'runs'}", "tracking.enabled=true",
                   "train.deep_supervision=2", "loss.terms={ce: 0.5, dice: 0.3, cldice: 0.2}"],
    )  # fmt: skip
    assert isinstance(result, TrainResult)
    ckpt = torch.load(result.run_dir / "checkpoints" / "final.ckpt", weights_only=True)
    assert any(k.startswith("aux_heads.") for k in ckpt["state_dict"])  # trained and resumable
    bundle = load_bundle(result.bundle)  # strict load: the plain Unet, no auxiliary head
    assert not any("aux" in k for k in bundle.model.state_dict())
    with torch.no_grad():
        assert bundle.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert result.metrics["train/loss_cldice"] >= 0
