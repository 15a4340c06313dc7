"""The CLI calls the API: a bad option gives the same one-line message through both."""

from __future__ import annotations

from pathlib import Path

import pytest

import segflow
from segflow.errors import UsageError
from tests.conftest import run_cli
from tests.hostile._corpus import labelme


@pytest.mark.parametrize(
    ("option", "value", "flag"),
    [("line_width", 0, "--line-width"), ("crowd", "maybe", "--crowd"), ("workers", 0, "--workers")],
)
def test_import_option_errors_read_the_same(
    tmp_path: Path, option: str, value: object, flag: str
) -> None:
    src = labelme(tmp_path / "src").parent
    with pytest.raises(UsageError) as info:
        segflow.import_dataset("labelme", src, tmp_path / "api", **{option: value})
    message = str(info.value)
    assert message.startswith(f"{flag}: ")
    res = run_cli("import", "labelme", src, tmp_path / "cli", flag, str(value))
    assert res.exit_code == 2 and message in res.stderr
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_check_through_the_api_writes_what_the_cli_writes(tmp_path: Path) -> None:
    src = labelme(tmp_path / "src").parent
    segflow.import_dataset("labelme", src, tmp_path / "ds")
    res = run_cli("check", tmp_path / "ds", "--json", tmp_path / "cli.json")
    result = segflow.check(tmp_path / "ds", json_out=tmp_path / "api.json")
    assert res.exit_code == 0
    assert set(result.paths) == {"json", "fingerprint", "html"}
    assert result.paths["html"] == tmp_path / "ds" / "qa_report.html"
    assert segflow.check(tmp_path / "ds", html=False).paths.keys() == {"json", "fingerprint"}
