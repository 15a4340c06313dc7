"""The one stage -> verify -> publish loop of ONNX and TorchScript exports (failure paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.errors import DataError, UsageError
from segflow.export.verify import stage_verify_publish
from segflow.models.bundle import ExportInfo


def _failing(problem: str, seen: list[Path]):
    def run(staged: Path) -> ExportInfo:
        staged.write_bytes(b"half a file")
        seen.append(staged)
        raise DataError(staged.parent, f"{problem}; file not written")

    return run


def test_every_attempt_fails_leaves_no_file_and_names_each(tmp_path: Path) -> None:
    stale = tmp_path / ".model.onnx.999999999-0123abcd.tmp"  # a killed export's (no such pid)
    stale.write_bytes(b"old")
    seen: list[Path] = []
    with pytest.raises(DataError) as info:
        stage_verify_publish(
            tmp_path,
            "model.onnx",
            [("a", _failing("too far off", seen)), ("b", _failing("cannot export", seen))],
            failed=lambda failures: "all failed: " + "; ".join(failures),
        )
    assert info.value.problem == "all failed: a: too far off; b: cannot export"
    assert len(seen) == 2 and not any(p.exists() for p in seen)
    assert not stale.exists() and list(tmp_path.iterdir()) == []


def test_a_lone_attempt_reraises_and_other_errors_pass_through(tmp_path: Path) -> None:
    seen: list[Path] = []
    with pytest.raises(DataError, match="too far off; file not written"):
        stage_verify_publish(
            tmp_path, "model.ts", [("a", _failing("too far off", seen))],
            failed=str, reraise_single=True,
        )  # fmt: skip

    def usage(staged: Path) -> ExportInfo:
        raise UsageError("not an export problem")

    with pytest.raises(UsageError):  # only `catch` (DataError by default) moves on
        stage_verify_publish(tmp_path, "model.ts", [("a", usage), ("b", usage)], failed=str)
    assert list(tmp_path.iterdir()) == []
