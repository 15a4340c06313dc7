"""Config: defaults < YAML file < --set overrides; unknown keys suggest; no eval."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.config import SegflowConfig, describe, load_config, parse_override
from segflow.errors import ConfigError


def test_precedence_defaults_file_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optimizer: {lr: 0.01, name: sgd}\nmodel: {arch: FPN}\n")
    cfg = load_config(cfg_file, ["optimizer.lr=0.003", "optimizer.lr=0.002"])
    assert cfg.optimizer.lr == 0.002  # rightmost wins
    assert cfg.optimizer.name == "sgd"  # from the file
    assert cfg.model.arch == "FPN"
    assert cfg.model.encoder == SegflowConfig().model.encoder  # default


def test_loss_shorthand_and_set() -> None:
    cfg = load_config(None, ["loss.ce=0.7", "loss.dice=0.3", "loss.class_weights=auto"])
    assert cfg.loss.terms == {"ce": 0.7, "dice": 0.3}
    assert cfg.loss.class_weights == "auto"


def test_loss_shorthand_in_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("loss: {ce: 0.7, dice: 0.3}\n")
    assert load_config(f).loss.terms == {"ce": 0.7, "dice": 0.3}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimzer.lr=1", "unknown key 'optimzer' (did you mean optimizer?)"),
        ("optimizer.lrr=1", "did you mean optimizer.lr?"),
        ("loss.dic=0.5", "did you mean loss.dice?"),
        ("train.epochs=many", "train.epochs"),
        ("optimizer.name=rmsprop", "optimizer.name"),
        ("no_equals_sign", "expected KEY=VALUE"),
        ("data.preprocess.roi=[10, 10, 5, 5]", "x1 > x0"),
    ],
)
def test_errors_are_explained(override: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        load_config(None, [override])


def test_values_are_yaml_never_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _, value = parse_override(f"train.name=__import__('os').system('touch {marker}')")
    assert isinstance(value, str) and not marker.exists()
    assert parse_override("data.preprocess.resize=[256, 320]") == (
        ["data", "preprocess", "resize"],
        [256, 320],
    )
    assert parse_override("model.encoder_weights=null") == (["model", "encoder_weights"], None)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_every_key_has_a_meaning() -> None:
    rows = list(describe(SegflowConfig()))
    assert len(rows) > 50
    assert all(meaning for _, _, meaning in rows), [k for k, _, m in rows if not m]
    assert ("optimizer.lr", 1e-3) in [(k, v) for k, v, _ in rows]


def test_config_show_cli(cli, tmp_path: Path) -> None:
    res = cli("config", "show", "--set", "optimizer.lr=0.05")
    assert res.exit_code == 0
    line = next(li for li in res.stdout.splitlines() if li.startswith("optimizer.lr:"))
    assert "0.05" in line and "# peak learning rate" in line
    defaults = cli("config", "show", "--defaults", "--set", "optimizer.lr=0.05")
    assert "optimizer.lr: 0.001" in defaults.stdout
    bad = cli("config", "show", "--set", "optimzer.lr=1")
    assert bad.exit_code == 2 and "did you mean optimizer" in bad.stderr
