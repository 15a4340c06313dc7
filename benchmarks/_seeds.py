"""Seed statistics for the quality benchmarks: mean ± sd and min over seeds, and when to call a gap.

Imported by ``quality.py`` and ``ablation.py`` next to it. A contender (or an ablation variant) is
trained once per seed with the same budget; its score is summarised by the mean, the sample
standard deviation (``ddof=1``; 0 for one seed) and the worst seed. A difference between two
summaries is *called* only when it exceeds the seed spread, i.e. ``|mean_a - mean_b| >
max(sd_a, sd_b)``, and only with at least two seeds on both sides (one seed has no spread).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """A score over seeds."""

    mean: float
    sd: float
    min: float
    n: int

    def cell(self, digits: int = 4) -> str:
        """``0.7412 ± 0.0081 (min 0.7301, 3 seeds)``."""
        seeds = "seed" if self.n == 1 else "seeds"
        return (
            f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} "
            f"(min {self.min:.{digits}f}, {self.n} {seeds})"
        )


def check_seeds(seeds: int) -> int:
    """``seeds`` if it is at least 1, else ValueError with a one-line message."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    return seeds


def summarise(values: Iterable[float]) -> Summary:
    """Mean, sample sd (0 for one value) and min; refuses an empty or non-finite list."""
    data = [float(v) for v in values]
    if not data:
        raise ValueError("no scores to summarise")
    if not all(math.isfinite(v) for v in data):
        raise ValueError(f"scores must be finite, got {data}")
    mean = math.fsum(data) / len(data)
    sd = (
        math.sqrt(math.fsum((v - mean) ** 2 for v in data) / (len(data) - 1))
        if len(data) > 1
        else 0.0
    )
    return Summary(mean=mean, sd=sd, min=min(data), n=len(data))


def compare(ours: Summary, theirs: Summary) -> str:
    """``better`` / ``worse`` when the gap exceeds the seed spread, else why it is not called."""
    if ours.n < 2 or theirs.n < 2:
        return "not called (needs >= 2 seeds each)"
    gap = ours.mean - theirs.mean
    spread = max(ours.sd, theirs.sd)
    if abs(gap) <= spread:
        return f"no difference ({gap:+.4f} within sd {spread:.4f})"
    return f"{'better' if gap > 0 else 'worse'} ({gap:+.4f} > sd {spread:.4f})"


def by_group(
    rows: Sequence[dict[str, Any]], keys: Sequence[str], score: str = "dice_mean"
) -> dict[tuple[Any, ...], Summary]:
    """Summaries of ``score`` per distinct value of ``keys`` (first-seen order)."""
    groups: dict[tuple[Any, ...], list[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(float(row[score]))
    return {key: summarise(values) for key, values in groups.items()}


def seed_table(rows: Sequence[dict[str, Any]], reference: str = "baseline") -> str:
    """Per dataset and contender: mean ± sd and min over seeds; each contender vs ``reference``."""
    head = f"{'dataset':8s} {'contender':14s} {'Dice/img over seeds':40s} {'Dice pix mean':>13s}"
    lines = [head, "-" * len(head)]
    dice = by_group(rows, ("dataset", "contender"))
    pooled = by_group(rows, ("dataset", "contender"), "dice_pooled")
    for (dataset, contender), summary in dice.items():
        lines.append(
            f"{dataset:8s} {contender:14s} {summary.cell():40s} "
            f"{pooled[(dataset, contender)].mean:13.4f}"
        )
    for (dataset, contender), summary in dice.items():
        ref = dice.get((dataset, reference))
        if contender in (reference, "2nd annotator") or ref is None:
            continue
        lines.append(
            f"{dataset}: {contender} vs {reference} per-image mean Dice "
            f"{summary.mean:.4f} vs {ref.mean:.4f}: {compare(summary, ref)}"
        )
    return "\n".join(lines)
