"""The planner's contrast rule: CLAHE for dim, flat colour images, decided from the fingerprint.

The statistic is measured, never guessed from a dataset's name (:func:`colour_stats` in
:mod:`segflow.data.fingerprint`, over the pixels brighter than its floor, i.e. inside a fundus
camera's field of view): ``colour_contrast`` is the median over images of the grey value's
std / mean, ``channel_correlation`` the median of the R, G, B channels' mean pairwise
correlation. Measured values (all images): CHASE_DB1 fundus photographs 0.35 / 0.77 (range of
the contrast 0.18-0.46), DSB2018 nuclei 0.52 / 1.00 (mostly grey stored as RGB), the bundled
nuclei sample 0.63 / 1.00. An image set is "low-contrast colour" when its channels really differ
(correlation below :data:`COLOUR_CORRELATION`) and its contrast is below
:data:`LOW_CONTRAST_CV`: CHASE_DB1 is, the two nuclei sets are not.

CLAHE (``data.preprocess.clahe``, on the L channel of Lab for colour) is the standard remedy
for such images (e.g. retinal vessel segmentation). Whether it wins at a fixed budget is what
the ablation (``benchmarks/quality.py --ablate contrast``) measures; until its rows show a win
on the datasets the rule fires for, :data:`ADOPTED` is False and the rule only reports what it
measured and what it would do (the plan's comment says so). Set it True, citing the rows, when
the evidence is in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segflow.train.plan_rules import Decision, PlanContext

#: Contrast (grey std / mean) below which an 8-bit colour image set counts as dim and flat.
LOW_CONTRAST_CV = 0.45
#: Mean pairwise channel correlation below which the channels carry different information.
COLOUR_CORRELATION = 0.95
#: Whether the rule switches CLAHE on (False until the ablation shows a win; see module doc).
ADOPTED = False


def low_contrast_colour(contrast: float | None, correlation: float | None) -> bool:
    """Whether the fingerprint's colour statistics call for contrast enhancement."""
    if contrast is None or correlation is None:
        return False
    return correlation < COLOUR_CORRELATION and contrast < LOW_CONTRAST_CV


def contrast_rule(adopt: bool) -> Any:
    """The rule ``(ctx, chosen) -> Decision``, switching CLAHE on when it fires if ``adopt``."""

    def choose_contrast(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
        """CLAHE for low-contrast colour images (measured from the fingerprint)."""
        from segflow.train.plan_rules import Decision

        fp = ctx.fingerprint
        contrast, correlation = fp.colour_contrast, fp.channel_correlation
        if contrast is None or correlation is None:
            return Decision(
                {"data.preprocess.clahe": False},
                "not 8-bit colour images (or no colour statistics in the fingerprint): no "
                "contrast enhancement",
            )
        measured = f"grey contrast (std/mean) {contrast:.2f}, channel correlation {correlation:.2f}"
        if not low_contrast_colour(contrast, correlation):
            why = (
                "channels nearly identical (grey stored as colour)"
                if correlation >= COLOUR_CORRELATION
                else "contrast is not low"
            )
            return Decision(
                {"data.preprocess.clahe": False},
                f"{measured}: {why} (CLAHE needs correlation < {COLOUR_CORRELATION} and "
                f"contrast < {LOW_CONTRAST_CV}): no contrast enhancement",
            )
        fires = (
            f"{measured}: low-contrast colour images (correlation < {COLOUR_CORRELATION}, "
            f"contrast < {LOW_CONTRAST_CV})"
        )
        if adopt:
            return Decision({"data.preprocess.clahe": True}, f"{fires}: CLAHE on the L channel")
        return Decision(
            {"data.preprocess.clahe": False},
            f"{fires}; CLAHE stays off until the ablation (benchmarks/quality.py --ablate "
            "contrast) shows a win: set data.preprocess.clahe=true to try it",
        )

    return choose_contrast


#: The rule as registered in ``plan_rules.RULES``.
choose_contrast = contrast_rule(ADOPTED)
