"""The seed statistics, ``quality.py --seeds N`` and the ablation harness on tiny generated data.

Quality is not asserted (seconds of training on 8 tiny images): that every contender and variant
runs once per seed with that seed, that mean ± sd and min are those of the per-seed scores (numpy
as the reference), that a gap is called only beyond the seed spread, and that N < 1 is refused.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml

from segflow.config import load_config
from tests.test_quality_benchmark import _dsb_like

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench() -> Iterator[dict[str, ModuleType]]:
    """``_seeds``, ``quality`` and ``ablation`` imported as the scripts import each other."""
    sys.path.insert(0, str(BENCHMARKS))
    loaded: dict[str, ModuleType] = {}
    try:
        for name in ("_seeds", "quality", "ablation"):
            spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        yield loaded
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in ("_seeds", "quality", "ablation"):
            sys.modules.pop(name, None)


# -- statistics ---------------------------------------------------------------------------------


def test_summary_matches_numpy_and_gaps_are_called_beyond_the_spread(bench) -> None:
    seeds = bench["_seeds"]
    values = [0.731, 0.760, 0.749]
    got = seeds.summarise(values)
    assert got.mean == pytest.approx(np.mean(values))
    assert got.sd == pytest.approx(np.std(values, ddof=1))
    assert got.min == 0.731 and got.n == 3
    assert seeds.summarise([0.5]).sd == 0.0
    assert got.cell() == f"0.7467 ± {np.std(values, ddof=1):.4f} (min 0.7310, 3 seeds)"
    near = seeds.summarise([0.745, 0.752, 0.758])  # +0.005: inside the 0.015 spread
    far = seeds.summarise([0.80, 0.81, 0.805])
    assert seeds.compare(near, got).startswith("no difference")
    assert seeds.compare(far, got).startswith("better") and seeds.compare(got, far).startswith(
        "worse"
    )
    assert seeds.compare(seeds.summarise([0.9]), got).startswith("not called")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=">= 1"):
            seeds.check_seeds(bad)
    with pytest.raises(ValueError, match="no scores"):
        seeds.summarise([])


@pytest.mark.parametrize("seeds", ["0", "-2", "three"])
def test_quality_refuses_fewer_than_one_seed(bench, capsys, seeds: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench["quality"].main(["--tiny", "--seeds", seeds])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seeds must be a whole number >= 1") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        bench["ablation"].main(["--tiny", "--ablate", "lr", "--seeds", seeds])


# -- quality.py --seeds -------------------------------------------------------------------------


@pytest.mark.slow
def test_quality_runs_every_contender_once_per_seed(bench, tmp_path: Path, capsys) -> None:
    dsb = _dsb_like(tmp_path / "dsb_src", np.random.default_rng(0))
    args = ["--tiny", "--budget", "3s", "--datasets", "dsb", "--seeds", "2", "--seed", "5"]
    rows = bench["quality"].main([*args, "--dsb-src", str(dsb), "--work", str(tmp_path / "w")])
    assert [(r["contender"], r["seed"]) for r in rows] == [
        ("segflow", 5), ("segflow", 6), ("baseline", 5), ("baseline", 6)
    ]  # fmt: skip
    work = next((tmp_path / "w").glob("quality-*"))
    for seed in (5, 6):  # segflow trained with that seed
        plan = yaml.safe_load((work / f"plan-dsb-s{seed}.yaml").read_text())
        assert plan["train"]["seed"] == seed
    out = capsys.readouterr().out
    for contender in ("segflow", "baseline"):
        scores = [r["dice_mean"] for r in rows if r["contender"] == contender]
        mean, sd = np.mean(scores), np.std(scores, ddof=1)
        assert f"{mean:.4f} ± {sd:.4f} (min {min(scores):.4f}, 2 seeds)" in out
    assert "dsb: segflow vs baseline per-image mean Dice" in out
    assert "(mean over seeds)" in out


# -- the ablation harness -------------------------------------------------------------------------


PLANNED: dict[str, Any] = {
    "data.foreground_crops": 0.33, "data.tile_size": 256, "data.batch_size": 8,
    "loss.terms": {"ce": 0.3, "dice": 0.7}, "augment.preset": "medium",
    "model.encoder": "resnet18", "model.kwargs": {"decoder_channels": [128, 64, 32, 16, 16]},
    "optimizer.lr": 0.001, "schedule.warmup_epochs": 0.4, "train.val_every": 1,
    "data.preprocess.normalize": "dataset", "data.preprocess.clahe": False,
}  # fmt: skip


def test_every_lever_gives_valid_changed_settings(bench) -> None:
    ablation = bench["ablation"]
    variants = ablation.variants_for(list(ablation.LEVERS), PLANNED)
    assert variants[0] == ("default", "planned default", [])
    levers = {lever for lever, _, _ in variants}
    assert levers == {"default", *ablation.LEVERS}
    for lever, label, sets in variants[1:]:
        cfg = load_config(overrides=sets)  # every override is a valid key and value
        changed = [s.split("=", 1)[0] for s in sets]
        assert any(PLANNED.get(k) != _get(cfg, k) for k in changed), (lever, label)
    by_label = {label: sets for _, label, sets in variants}
    assert by_label["lr 0.002 (x2)"] == ["optimizer.lr=0.002"]
    assert by_label["crop 512, batch 2"] == ["data.tile_size=512", "data.batch_size=2"]
    assert load_config(overrides=by_label["+ clDice 0.2 (others x0.8)"]).loss.terms == {
        "ce": 0.24, "dice": 0.56, "cldice": 0.2
    }  # fmt: skip
    assert load_config(overrides=by_label["decoder full width"]).model.kwargs == {}
    assert by_label["normalise image"] == ["data.preprocess.normalize=image"]
    assert "normalise dataset" not in by_label  # the planned value is no variant


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.slow
def test_ablation_runs_default_and_variant_per_seed(bench, tmp_path: Path, capsys) -> None:
    dsb = _dsb_like(tmp_path / "dsb_src", np.random.default_rng(1))
    out_md = tmp_path / "ablation.md"
    rows = bench["ablation"].main(["--tiny", "--budget", "3s", "--datasets", "dsb", "--seeds", "2",
                                   "--ablate", "deep_supervision", "--dsb-src", str(dsb),
                                   "--work", str(tmp_path / "w"), "--out", str(out_md)])  # fmt: skip
    assert [(r["lever"], r["seed"]) for r in rows] == [
        ("default", 0), ("default", 1), ("deep_supervision", 0), ("deep_supervision", 1)
    ]  # fmt: skip
    table = out_md.read_text()
    assert table in capsys.readouterr().out
    lines = table.strip().splitlines()
    assert lines[0].startswith("| lever | change | dsb Dice/img") and len(lines) == 4
    for line, lever in zip(lines[2:], ("default", "deep_supervision"), strict=True):
        scores = [r["dice_mean"] for r in rows if r["lever"] == lever]
        assert line.startswith(f"| {lever} |")
        expected = f"{np.mean(scores):.4f} ± {np.std(scores, ddof=1):.4f} ({min(scores):.4f}, n=2)"
        assert expected in line
    assert "no difference" in lines[3] or "better" in lines[3] or "worse" in lines[3]
    saved = json.loads(next((tmp_path / "w").glob("ablation-*/results.json")).read_text())
    assert [r["dice_mean"] for r in saved] == [r["dice_mean"] for r in rows]
