"""The review gallery in a real headless Chromium: pages, lazy thumbnails, the stem list.

Probabilities come from a ``source`` (what out-of-fold probabilities will plug into): a model
sure of the true masks, so no network is needed and every score is known.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segflow.api import review
from segflow.data.dataset import CanonicalDataset
from segflow.review.gallery import PAGE_SIZE
from tests.fixtures.synthetic import make_dataset

N = PAGE_SIZE + 3  # two pages


def _sure_source(root: Path) -> Any:
    """Probabilities 0.9 / 0.05 / 0.05 of the true masks (read before any corruption)."""
    truth = {p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in (root / "masks").iterdir()}

    def source(stem: str, image: np.ndarray) -> list[np.ndarray]:
        probs = np.full((3, *truth[stem].shape), 0.05, np.float32)
        np.put_along_axis(probs, truth[stem][None].astype(np.intp), 0.9, axis=0)
        return [probs]

    return source


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("gallery")
    root = make_dataset(tmp / "ds", n=N, size=(32, 40), num_classes=3, seed=4)
    (root / "splits.csv").write_text("stem,split\ns000,train\n")
    source = _sure_source(root)
    bad = root / "masks" / "s007.png"
    mask = cv2.imread(str(bad), cv2.IMREAD_GRAYSCALE)
    mask[mask == 2] = 1  # class 2 relabelled as class 1
    cv2.imwrite(str(bad), mask)
    result = review(root, out=tmp / "rev", source=source, top=3)
    # A source stands for out-of-sample probabilities: training images are scored too.
    assert result.skipped_train == 0 and len(result.rows) == N
    assert result.rows[0]["stem"] == "s007" and result.rows[0]["kind"] == "wrong class"
    assert all(r["kind"] == "none" for r in result.rows[1:])
    assert CanonicalDataset(root).meta.exclude == []  # the dataset is never modified
    return result.out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None
    )
    if executable is None:
        pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.slow
def test_pages_and_the_stem_list(reviewed: Path, browser: Any) -> None:
    page = browser.new_page()
    page.goto((reviewed / "review.html").as_uri())
    assert page.inner_text("#page-label") == f"page 1 of 2 ({N} images)"
    visible = page.locator("#rows tr.row:not([hidden])")
    assert visible.count() == PAGE_SIZE
    assert visible.first.get_attribute("data-stem") == "s007"
    # Lazy thumbnails: the first row's load, the hidden second page's are not fetched.
    page.wait_for_function(
        "[...document.querySelectorAll('#rows tr.row')[0].querySelectorAll('img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    later = page.eval_on_selector_all(
        "#rows tr.row[hidden] img", "imgs => imgs.map(i => i.naturalWidth)"
    )
    assert len(later) == 4 * (N - PAGE_SIZE) and not any(later)
    # No box ticked: the stems shown on this page, one a line (a `check --exclude` file).
    page.click("#copy")
    shown = page.input_value("#stem-list").split("\n")[:-1]
    assert shown == [visible.nth(i).get_attribute("data-stem") for i in range(PAGE_SIZE)]
    page.click("#next")
    assert page.inner_text("#page-label") == f"page 2 of 2 ({N} images)"
    assert visible.count() == N - PAGE_SIZE
    page.wait_for_function(  # shown now: fetched
        "[...document.querySelectorAll('#rows tr.row:not([hidden]) img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    visible.nth(1).locator(".pick").check()
    picked = visible.nth(1).get_attribute("data-stem")
    page.click("#copy")
    assert page.input_value("#stem-list") == f"{picked}\n"
    assert page.inner_text("#copied").startswith("1 stem(s) ")
    page.click("#next")  # past the last page: stays
    assert page.inner_text("#page-label").startswith("page 2 of 2")


def test_stems_txt_is_a_valid_exclude_file(reviewed: Path, cli) -> None:
    root = reviewed.parent / "ds"
    assert (reviewed / "stems.txt").read_text().split()[0] == "s007"
    res = cli("check", root, "--exclude", reviewed / "stems.txt", "--workers", "1")
    assert res.exit_code in (0, 1), res.stderr  # findings may exist; the file must be accepted
    assert CanonicalDataset(root).meta.exclude == sorted(
        (reviewed / "stems.txt").read_text().split()
    )
