"""The Dockerfile stays buildable in principle (no Docker engine here): its inputs exist and are
not excluded by .dockerignore, and the image serves on the port it exposes as a non-root user."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns
    )


def test_copied_files_exist_and_are_not_dockerignored() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copied = [
        src
        for word, rest in _instructions()
        if word == "COPY"
        for src in rest.split()[:-1]
        if not src.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "LICENSE", "src"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), src
        assert not _ignored(src, patterns), f"{src} is excluded by .dockerignore"
    assert (ROOT / "src/segflow/serve/static/index.html").exists()
    assert _ignored(".venv", patterns) and _ignored("tests", patterns)
    assert _ignored("models/cells.segflow", patterns)  # bundles are mounted, not baked in


def test_image_runs_segflow_serve_on_the_exposed_port_as_a_user() -> None:
    steps = _instructions()
    words = [w for w, _ in steps]
    assert words[0] == "ARG" and steps[0][1].startswith("BASE_IMAGE=")
    assert ("FROM", "${BASE_IMAGE}") in steps
    user = [rest for w, rest in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert ("EXPOSE", "9009") in steps
    cmd = next(rest for w, rest in reversed(steps) if w == "CMD")
    assert cmd == '["segflow", "serve", "/model", "--host", "0.0.0.0"]'
    install = " ".join(rest for w, rest in steps if w == "RUN")
    assert re.search(r"pip install \"?\.\[serve\]", install)
