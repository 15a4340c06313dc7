"""Label-quality scores and suspected label errors from a model's probabilities (numpy + OpenCV).

The method is Lad & Mueller, "Estimating label quality and errors in semantic segmentation data
via any model" (2023), implemented here from its description (no code of theirs is used):

* the *self-confidence* of a pixel is the probability the model gives to the pixel's given
  label, ``p[y]``; ignored pixels (``ignore_index``) are left out;
* an image's *label-quality score* pools its pixels' self-confidences with a soft minimum,
  ``sum(p * exp(-p / T)) / sum(exp(-p / T))`` with temperature ``T`` (0.1, the paper's default):
  a few confidently contradicted pixels pull the score towards 0. Lower = more suspect.

The probabilities should be out-of-sample (a model that did not train on the image); in-sample
probabilities have learnt the image's labels, errors included, and understate them.

Suspected errors (segflow's own, measurable rule): a pixel is *suspicious* when the model's
most probable class differs from the given label with ``p[predicted] > CONFIDENT`` and
``p[given] < DOUBT``. Suspicious pixels with the same (given, predicted) pair are grouped into
8-connected components of at least ``MIN_PIXELS`` pixels, and each component gets one kind:

* ``wrong class``: both the given and the predicted class are foreground (not class 0);
* ``boundary off``: at least ``BOUNDARY_SHARE`` of its pixels lie within ``BAND_PX`` pixels of
  the *agreed object*, the pixels that the given mask and the prediction both give the
  component's foreground class: both see the object, and their outlines differ by a thin band
  along it (a ring around a labelled object the model sees larger, or inside one it sees
  smaller);
* ``missing object``: the label says background where the model sees an object;
* ``extra object``: the label has an object where the model sees background.

An image's kind is the kind covering the most suspicious pixels (``none`` without any).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Softmin temperature (the paper's default).
TEMPERATURE = 0.1
#: A pixel is suspicious when p[predicted] > CONFIDENT and p[given] < DOUBT.
CONFIDENT = 0.5
DOUBT = 0.2
#: "boundary off": this share of a component's pixels within BAND_PX of the agreed object.
BAND_PX = 3
BOUNDARY_SHARE = 0.8
#: Components smaller than this are not reported (isolated pixels at soft edges).
MIN_PIXELS = 4

MISSING, EXTRA, WRONG, BOUNDARY = "missing object", "extra object", "wrong class", "boundary off"
#: Error kinds, in the order of their codes (1..4) in :attr:`ImageScore.kinds`.
KINDS = (MISSING, EXTRA, WRONG, BOUNDARY)
NONE = "none"


@dataclass(frozen=True)
class Component:
    """One connected group of suspicious pixels."""

    kind: str
    pixels: int
    given: int  # the class the label gives these pixels
    predicted: int  # the class the model sees
    box: tuple[int, int, int, int]  # x, y, width, height


@dataclass
class ImageScore:
    """The review of one labelled image."""

    score: float  # softmin of self-confidence; NaN when no pixel is labelled
    components: list[Component]
    prediction: np.ndarray  # H x W uint8: the most probable class
    kinds: np.ndarray  # H x W uint8: 0 = not suspicious, else 1 + index in KINDS

    @property
    def pixels(self) -> int:
        """Suspicious pixels in the reported components."""
        return sum(c.pixels for c in self.components)

    @property
    def by_kind(self) -> dict[str, int]:
        """Suspicious pixels per kind present, most first."""
        totals = {k: sum(c.pixels for c in self.components if c.kind == k) for k in KINDS}
        return {k: n for k, n in sorted(totals.items(), key=lambda kv: -kv[1]) if n > 0}

    @property
    def kind(self) -> str:
        """The kind with the most suspicious pixels (``none`` without any)."""
        return next(iter(self.by_kind), NONE)


def class_probabilities(probs: np.ndarray, binary: bool) -> np.ndarray:
    """``K x H x W`` class probabilities; a binary model's ``1 x H x W`` becomes ``[1 - p, p]``."""
    if binary:
        if probs.shape[0] != 1:
            raise ValueError(f"a binary model gives 1 x H x W probabilities, got {probs.shape}")
        return np.concatenate([1.0 - probs, probs]).astype(np.float32)
    return np.asarray(probs, dtype=np.float32)


def softmin(values: np.ndarray, temperature: float = TEMPERATURE) -> float:
    """``sum(v * exp(-v / T)) / sum(exp(-v / T))``: a soft minimum of ``values`` (NaN if empty)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        return float("nan")
    w = np.exp(-(v - v.min()) / temperature)  # shifted: the ratio is unchanged, no underflow
    return float((v * w).sum() / w.sum())


def _check_mask(probs: np.ndarray, mask: np.ndarray, ignore_index: int) -> np.ndarray:
    if probs.ndim != 3 or probs.shape[1:] != mask.shape:
        raise ValueError(f"probabilities {probs.shape} do not cover mask {mask.shape}")
    valid: np.ndarray = mask != ignore_index
    bad = np.unique(mask[valid & (mask >= probs.shape[0])])
    if bad.size:
        raise ValueError(
            f"mask values {bad.tolist()} are not class ids 0..{probs.shape[0] - 1} "
            "(run `segflow check`)"
        )
    return valid


def self_confidence(probs: np.ndarray, mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``p[given label]`` of each labelled pixel, as a flat array (ignored pixels left out)."""
    valid = _check_mask(probs, mask, ignore_index)
    given = np.where(valid, mask, 0).astype(np.intp)
    conf = np.take_along_axis(probs, given[None], axis=0)[0]
    out: np.ndarray = conf[valid]
    return out


def label_quality(
    probs: np.ndarray, mask: np.ndarray, ignore_index: int = 255, temperature: float = TEMPERATURE
) -> float:
    """The image's label-quality score: softmin of its pixels' self-confidence (lower = worse)."""
    return softmin(self_confidence(probs, mask, ignore_index), temperature)


def suspicious_pixels(
    probs: np.ndarray, mask: np.ndarray, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """``(suspicious H x W bool, prediction H x W uint8)`` (see the module's rule)."""
    valid = _check_mask(probs, mask, ignore_index)
    pred = probs.argmax(axis=0).astype(np.uint8)
    given = np.where(valid, mask, 0).astype(np.intp)
    p_given = np.take_along_axis(probs, given[None], axis=0)[0]
    p_pred = probs.max(axis=0)
    flagged = valid & (pred != mask) & (p_pred > CONFIDENT) & (p_given < DOUBT)
    return flagged, pred


def _agreed_distance(mask: np.ndarray, pred: np.ndarray, cls: int) -> np.ndarray:
    """Distance (px) of every pixel to the nearest pixel both ``mask`` and ``pred`` call ``cls``."""
    import cv2

    agreed = (mask == cls) & (pred == cls)
    if not agreed.any():
        return np.full(mask.shape, np.inf, np.float32)
    dist: np.ndarray = cv2.distanceTransform((~agreed).astype(np.uint8), cv2.DIST_L2, 3)
    return dist


def _kind(given: int, predicted: int, distance: np.ndarray) -> str:
    """The kind of a component whose pixels lie ``distance`` px from the agreed object."""
    if given != 0 and predicted != 0:
        return WRONG
    if (distance <= BAND_PX).mean() >= BOUNDARY_SHARE:
        return BOUNDARY
    return MISSING if given == 0 else EXTRA


def find_errors(
    flagged: np.ndarray, mask: np.ndarray, pred: np.ndarray, num_classes: int
) -> tuple[list[Component], np.ndarray]:
    """Group suspicious pixels into components and name each one's kind.

    Returns the components and an H x W uint8 map: 1 + the index in :data:`KINDS` of each
    reported suspicious pixel, 0 elsewhere.
    """
    import cv2

    kinds = np.zeros(mask.shape, np.uint8)
    if not flagged.any():
        return [], kinds
    agreed: dict[int, np.ndarray] = {}  # foreground class -> distance to its agreed object
    pair = np.where(flagged, mask.astype(np.int32) * num_classes + pred, -1)
    out = []
    for code in np.unique(pair[flagged]).tolist():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(
            (pair == code).astype(np.uint8), connectivity=8
        )
        given, predicted = divmod(int(code), num_classes)
        for i in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[i])
            if area < MIN_PIXELS:
                continue
            inside = labels[y : y + h, x : x + w] == i
            cls = predicted if given == 0 else given
            if cls not in agreed:
                agreed[cls] = _agreed_distance(mask, pred, cls)
            kind = _kind(given, predicted, agreed[cls][y : y + h, x : x + w][inside])
            kinds[y : y + h, x : x + w][inside] = KINDS.index(kind) + 1
            out.append(Component(kind, area, given, predicted, (x, y, w, h)))
    return out, kinds


def score_image(
    probs: np.ndarray, mask: np.ndarray, ignore_index: int = 255, temperature: float = TEMPERATURE
) -> ImageScore:
    """Score one labelled image: ``probs`` are ``K x H x W`` class probabilities."""
    score = label_quality(probs, mask, ignore_index, temperature)
    flagged, pred = suspicious_pixels(probs, mask, ignore_index)
    components, kinds = find_errors(flagged, mask, pred, probs.shape[0])
    return ImageScore(score, components, pred, kinds)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-pixel entropy of ``K x H x W`` probabilities, divided by ``log K`` (0..1)."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    h: np.ndarray = -(p * np.log(p)).sum(axis=0) / np.log(probs.shape[0])
    return h.astype(np.float32)


def uncertainty(members: list[np.ndarray]) -> tuple[float, np.ndarray]:
    """``(score, H x W map)`` of how unsure the models are about an unlabelled image.

    One model: the mean per-pixel entropy. Several: their disagreement, the mean mutual
    information ``H(mean of p) - mean of H(p)`` (each divided by ``log K``).
    """
    mean = np.mean(members, axis=0)
    total = entropy(mean)
    per_pixel = (
        total - np.mean([entropy(m) for m in members], axis=0) if len(members) > 1 else total
    )
    per_pixel = np.clip(per_pixel, 0.0, 1.0).astype(np.float32)
    return float(per_pixel.mean()), per_pixel
