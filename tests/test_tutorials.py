"""Every tutorial in docs/tutorials/ runs as written: its ``bash`` blocks, in order, on tiny data.

How a page becomes commands (each page states this in its "How this page is tested" note):

* ```` ```yaml ```` blocks whose first line is ``# file: NAME`` are written to ``NAME``;
* ```` ```bash ```` blocks are split into commands (``\\`` continuations joined, blank and comment
  lines dropped) and each runs with ``bash -c`` in a fresh folder, ``.venv/bin`` first on PATH,
  ``scripts/`` linked in, MLflow left to its local default;
* ``python scripts/tutorial_data.py ...`` gets ``--size tiny``; ``segflow train ...`` gets the
  ``--set ...`` code span of the page's note (rightmost ``--set`` wins, so the page's own config
  is still read and validated);
* a command ending in ``# (interactive)`` only opens a UI and is skipped;
* a command ending in ``# (server)`` is started in the background on a free port (replacing the
  page's port everywhere after it), waited for on ``/health`` and stopped after the last command.

A command that exits non-zero fails the test with its output, and so does a ``segflow`` command
that ``segflow --help`` does not list. After the commands, per-tutorial checks look at the files
the page promises.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "docs" / "tutorials"
BIN = Path(sys.executable).parent
SERVER_WAIT_S = 120
COMMAND_TIMEOUT_S = 400

_BLOCK = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"\s+#\s*\((interactive|server)\)\s*$")
_OVERRIDES = re.compile(r"`(--set [^`]+)`")


@dataclass
class Step:
    """One thing a page asks the reader to do: write a file or run a command."""

    kind: str  # "file", "run", "interactive" or "server"
    text: str  # the command, or the file content
    path: str = ""  # for "file"


def parse_steps(markdown: str) -> list[Step]:
    """The page's steps in order (see the module docstring for the rules)."""
    steps: list[Step] = []
    for indent, lang, raw in _BLOCK.findall(markdown):
        body = "\n".join(line.removeprefix(indent) for line in raw.splitlines()) + "\n"
        if lang == "yaml":
            first = body.partition("\n")[0]
            m = re.fullmatch(r"#\s*file:\s*(\S+)\s*", first)
            if m:
                steps.append(Step("file", body, m.group(1)))
            continue
        if lang != "bash":
            continue
        logical: list[str] = []
        pending = ""
        for line in body.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1].rstrip() + " "
                continue
            logical.append(pending + line.strip())
            pending = ""
        for command in logical:
            if not command or command.startswith("#"):
                continue
            m = _MARKER.search(command)
            kind = m.group(1) if m else "run"
            steps.append(Step(kind, command[: m.start()] if m else command))
    return steps


def page_overrides(markdown: str) -> list[str]:
    """The ``--set key=value`` overrides the page's test note declares for ``segflow train``."""
    note = "\n".join(line for line in markdown.splitlines() if line.startswith(">"))
    spans = _OVERRIDES.findall(note)
    if len(spans) != 1:
        raise AssertionError(f"the test note must hold one `--set ...` code span, found {spans}")
    words = shlex.split(spans[0])
    if words[::2] != ["--set"] * (len(words) // 2) or len(words) % 2:
        raise AssertionError(f"malformed overrides {spans[0]!r}")
    return words[1::2]


def segflow_commands() -> set[str]:
    """The commands this checkout's ``segflow --help`` lists."""
    out = subprocess.run(
        [str(BIN / "segflow"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    listing = out.split("Commands:", 1)[-1]
    return {m.group(1) for m in re.finditer(r"^\s{2}(\w+)\s", listing, re.M)}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Runner:
    """Runs one page's steps in ``cwd`` and remembers what happened."""

    cwd: Path
    overrides: list[str]
    available: set[str]
    timings: list[tuple[float, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    servers: list[tuple[subprocess.Popen[bytes], BinaryIO]] = field(default_factory=list)
    port_map: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["NO_ALBUMENTATIONS_UPDATE"] = "1"
        env.pop("SEGFLOW_API_KEY", None)
        env.pop("SEGFLOW_BACKEND", None)
        return env

    def rewrite(self, command: str) -> str:
        """The command as the test runs it (tiny data, the page's training overrides)."""
        for old, new in self.port_map.items():
            command = command.replace(old, new)
        words = shlex.split(command, comments=True)
        if words != shlex.split(command) and words[:1] in (["python"], ["segflow"]):
            # an argument appended after a trailing comment would be silently commented out
            raise AssertionError(f"put the comment on its own line: {command}")
        if words[:2] == ["python", "scripts/tutorial_data.py"]:
            return f"{command} --size tiny"
        if words and words[0] == "segflow" and len(words) > 1:
            self.require(words[1])
            if words[1] == "train":
                return command + "".join(f" --set {shlex.quote(o)}" for o in self.overrides)
        return command

    def require(self, verb: str) -> None:
        """Fail when the page uses a segflow command this checkout does not have."""
        if verb not in self.available:
            raise AssertionError(f"the page runs `segflow {verb}`, which `segflow --help` lacks")

    def run(self, step: Step) -> None:
        """Perform one step; fail the test with the output if a command fails."""
        if step.kind == "file":
            (self.cwd / step.path).write_text(step.text, encoding="utf-8")
            return
        if step.kind == "interactive":
            self.skipped.append(f"(interactive) {step.text}")
            return
        if step.kind == "server":
            self.start_server(step.text)
            return
        command = self.rewrite(step.text)
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        self.timings.append((time.monotonic() - started, command))
        if proc.returncode != 0:
            pytest.fail(
                f"documented command failed (exit {proc.returncode}):\n$ {command}\n"
                f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
            )

    def start_server(self, command: str) -> None:
        """Start a ``# (server)`` command in the background and wait for its /health."""
        words = shlex.split(command)
        if len(words) > 1 and words[0] == "segflow":
            self.require(words[1])
        documented = re.search(r"--port\s+(\d+)", command)
        old = documented.group(1) if documented else "9009"
        port = str(free_port())
        if documented:
            command = command.replace(documented.group(0), f"--port {port}")
        else:
            command += f" --port {port}"
        self.port_map[f":{old}"] = f":{port}"
        log = (self.cwd / f"server-{port}.log").open("wb")
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.servers.append((proc, log))
        url = f"http://127.0.0.1:{port}/health"
        while time.monotonic() - started < SERVER_WAIT_S:
            if proc.poll() is not None:
                pytest.fail(
                    f"server exited with {proc.returncode}:\n$ {command}\n"
                    + (self.cwd / f"server-{port}.log").read_text(errors="replace")[-4000:]
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    self.timings.append((time.monotonic() - started, f"{command} (ready)"))
                    return
            time.sleep(0.5)
        pytest.fail(f"server not healthy after {SERVER_WAIT_S} s: {command}")

    def stop_servers(self) -> None:
        """Stop the servers this page started (their own process groups only)."""
        for proc, log in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=15)
            log.close()


# --------------------------------------------------------------------------- checks per page
def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def assert_masks_match_inputs(pred_dir: Path, inputs: Path) -> None:
    images = sorted(p for p in inputs.iterdir() if p.suffix in (".jpg", ".png"))
    assert images, f"no input images in {inputs}"
    for image in images:
        mask = pred_dir / f"{image.stem}.png"
        assert mask.is_file(), mask
        assert image_size(mask) == image_size(image), mask
        assert (pred_dir / f"{image.stem}_overlay.jpg").is_file()


def assert_eval(out: Path, n_images: int | None = None) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.html").is_file()
    assert {"iou", "dice", "per_class"} <= set(metrics["per_image"])
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(0.0 <= float(r["mIoU"]) <= 1.0 for r in rows)
    if n_images is not None:
        assert len(rows) == metrics["n_images"] == n_images
    return metrics


def split_of(dataset: Path) -> dict[str, str]:
    with (dataset / "splits.csv").open() as fh:
        return {r["stem"]: r["split"] for r in csv.DictReader(fh)}


def check_veins(tmp: Path) -> None:
    data = tmp / "data" / "veins"
    assert (data / "qa_report.html").is_file()
    assert (tmp / "runs" / "veins" / "best.segflow" / "bundle.yaml").is_file()
    db = sqlite3.connect(tmp / "runs" / "mlflow.db")
    try:
        runs = db.execute(
            "select r.status from runs r join experiments e on r.experiment_id = e.experiment_id "
            "where e.name = 'veins'"
        ).fetchall()
        eval_metrics = db.execute("select count(*) from metrics where key like 'test/%'").fetchone()
    finally:
        db.close()
    assert runs == [("FINISHED",)]
    assert eval_metrics[0] > 0  # segflow eval logged to the training run
    tests = sum(1 for s in split_of(data).values() if s == "test")
    assert_eval(tmp / "runs" / "veins" / "eval_test", tests)
    assert_masks_match_inputs(tmp / "predictions" / "veins", tmp / "raw" / "veins" / "new")


def check_thyroid(tmp: Path) -> None:
    bundle = tmp / "runs" / "thyroid" / "best.segflow"
    assert (bundle / "model.onnx").is_file()
    splits = split_of(tmp / "data" / "thyroid")
    patients: dict[str, set[str]] = {}
    for stem, split in splits.items():
        patients.setdefault(stem.split("_")[0], set()).add(split)
    assert all(len(s) == 1 for s in patients.values()), patients  # no patient in two splits
    assert_eval(tmp / "runs" / "thyroid" / "eval_test")
    assert_masks_match_inputs(tmp / "predictions" / "thyroid", tmp / "raw" / "ultrasound" / "new")
    frame = tmp / "raw" / "ultrasound" / "new" / "clip01_frame0001.png"
    assert image_size(tmp / "mask.png") == image_size(frame)
    assert set(np.unique(read_mask(tmp / "mask.png"))) <= {0, 1, 2}
    areas = json.loads((tmp / "areas.json").read_text())
    assert [c["name"] for c in areas["classes"]] == ["background", "nodule", "thyroid"]


def check_vessels(tmp: Path) -> None:
    new = tmp / "raw" / "vessels" / "new"
    pred = tmp / "predictions" / "vessels"
    assert_masks_match_inputs(pred, new)
    photo = next(new.glob("*.jpg"))
    assert json.loads((pred / f"{photo.stem}.geojson").read_text())["type"] == "FeatureCollection"
    mask = read_mask(pred / f"{photo.stem}.png")
    # --min-size vessel=100: no vessel component below 100 px survives
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats((mask == 1).astype(np.uint8), 8)
    assert all(stats[i, cv2.CC_STAT_AREA] >= 100 for i in range(1, n))
    assert image_size(tmp / "vessels_mask.png") == image_size(photo)
    assert_eval(tmp / "runs" / "vessels" / "eval_test")


def check_scenes(tmp: Path) -> None:
    data = tmp / "data" / "scenes"
    with (data / "splits.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by_aoi: dict[str, set[str]] = {}
    for r in rows:
        by_aoi.setdefault(r["stem"].split("_")[0], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_aoi.values()), by_aoi  # an AOI never straddles splits
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    config = (tmp / "runs" / "scenes" / "config.yaml").read_text()
    assert "mosaic: 0.5" in config and "ce: 0.7" in config and "dice: 0.3" in config
    tests = sum(1 for r in rows if r["split"] == "test")
    metrics = assert_eval(tmp / "runs" / "scenes" / "eval_test", tests)
    assert set(metrics["per_image"]["per_class"]) == {"background", "water", "forest", "building"}
    assert_masks_match_inputs(tmp / "predictions" / "scenes", tmp / "raw" / "satellite" / "new")


def check_pets(tmp: Path) -> None:
    data = tmp / "data" / "pets"
    qa = json.loads((data / "qa.json").read_text())
    assert (tmp / "pets_qa_report.html").is_file()
    assert {"excluded"} <= {f["check"] for f in qa["findings"]}
    assert "samoyed_201_copy" in (data / "dataset.yaml").read_text()
    cases = tmp / "runs" / "pets" / "eval_val" / "cases"
    worst = sorted(p.name for p in cases.glob("worst_*.jpg"))
    relabel = (tmp / "relabel.txt").read_text().split()
    assert relabel and len(relabel) == len(worst) <= 10
    coco = json.loads((tmp / "pets_relabel.json").read_text())
    assert len(coco["images"]) == len(relabel)
    back = tmp / "data" / "pets-relabelled"
    for stem in relabel:  # the round trip keeps every labelled pixel (255 is not exported)
        before, after = (
            read_mask(data / "masks" / f"{stem}.png"),
            read_mask(back / "masks" / f"{stem}.png"),
        )
        labelled = before != 255
        assert np.array_equal(before[labelled], after[labelled]), stem


CHECKS: dict[str, Callable[[Path], None]] = {
    "01-labelme-veins-unet-mlflow.md": check_veins,
    "02-roboflow-ultrasound-fpn-onnx-api.md": check_thyroid,
    "03-geojson-vessels-tiled-service.md": check_vessels,
    "04-multitemporal-satellite-grouped-mosaic.md": check_scenes,
    "05-mmseg-pets-qa-worst-cases-coco.md": check_pets,
}


# --------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def available() -> set[str]:
    return segflow_commands()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    yield tmp_path


def test_every_tutorial_is_tested() -> None:
    pages = {p.name for p in TUTORIALS.glob("[0-9][0-9]-*.md")}
    assert pages == set(CHECKS)
    index = (TUTORIALS / "README.md").read_text()
    assert all(f"({name})" in index for name in pages)


def test_parser_rules() -> None:
    page = (
        "> **How this page is tested.** appends `--set a.b=1 --set c=[1,2]` to train.\n\n"
        "```yaml\n# file: cfg.yaml\nx: 1\n```\n\n"
        "```yaml\nnot: written\n```\n\n"
        "```bash\n# a comment\nsegflow train cfg.yaml \\\n  --data d\n\n"
        "mlflow ui --port 5000  # (interactive)\n"
        "segflow serve b --port 9009  # (server)\ncurl http://127.0.0.1:9009/health\n```\n"
        "```text\nnot a command\n```\n"
        "- a list item:\n\n  ```bash\n  echo indented\n  ```\n"
    )
    steps = parse_steps(page)
    assert [(s.kind, s.path or s.text) for s in steps] == [
        ("file", "cfg.yaml"),
        ("run", "segflow train cfg.yaml --data d"),
        ("interactive", "mlflow ui --port 5000"),
        ("server", "segflow serve b --port 9009"),
        ("run", "curl http://127.0.0.1:9009/health"),
        ("run", "echo indented"),
    ]
    assert page_overrides(page) == ["a.b=1", "c=[1,2]"]
    runner = Runner(Path("."), ["a.b=1"], {"train"})
    assert runner.rewrite("segflow train x.yaml") == "segflow train x.yaml --set a.b=1"
    with pytest.raises(AssertionError, match="segflow plan"):
        runner.rewrite("segflow plan d --out p.yaml")  # not in this (pretend) checkout
    assert runner.rewrite("python scripts/tutorial_data.py veins raw") == (
        "python scripts/tutorial_data.py veins raw --size tiny"
    )


def test_tutorial_data_is_seeded(tmp_path: Path) -> None:
    script = [sys.executable, str(REPO / "scripts" / "tutorial_data.py"), "satellite"]
    for name in ("a", "b"):
        subprocess.run([*script, str(tmp_path / name), "--size", "tiny"], check=True)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    refused = subprocess.run([*script, str(tmp_path / "a")], capture_output=True, text=True)
    assert refused.returncode != 0 and "not empty" in refused.stderr


def test_a_failing_command_fails_the_test(tmp_path: Path) -> None:
    runner = Runner(tmp_path, [], {"train"})
    runner.run(Step("run", "true"))
    with pytest.raises(pytest.fail.Exception, match="exit 3"):
        runner.run(Step("run", "echo doc; exit 3"))
    with pytest.raises(AssertionError, match="own line"):
        runner.rewrite("segflow train x.yaml  # a comment")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", sorted(CHECKS))
def test_tutorial_runs_as_written(page: str, workdir: Path, available: set[str]) -> None:
    markdown = (TUTORIALS / page).read_text(encoding="utf-8")
    runner = Runner(workdir, page_overrides(markdown), available)
    started = time.monotonic()
    try:
        for step in parse_steps(markdown):
            runner.run(step)
    finally:
        runner.stop_servers()
        total = time.monotonic() - started
        print(f"\n{page}: {total:.1f} s")
        for seconds, command in runner.timings:
            print(f"  {seconds:6.1f} s  {command[:110]}")
    CHECKS[page](workdir)
