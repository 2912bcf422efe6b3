"""Turn clicks into a mask with a box-only model (LiteMedSAM answers boxes, not points).

A positive click is turned into a box by asking the model about a grid of candidate boxes
centred on the click (eight sizes relative to the slice, three aspect ratios) and keeping
the candidate whose mask best explains the click: the mask's connected component under the
click should have the click near its middle (the user clicks inside the object), stand out
from its surroundings in the image (intensity contrast across its border), fill the box it
came from, and have a high predicted IoU (on CT a learned score of such measurements,
:mod:`.click_ranking`, ranks them instead). Negative clicks shrink every box so that they fall
outside it, and components that still hold a negative (and no positive) click are removed.
No Qt and no napari here. Measured accuracy and cost: ``docs/speed_accuracy.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from napari_medsam.engine.protocol import Box, Embedding, Predictor

from .click_ranking import (
    agreement,
    agreement_with,
    border_contrast,
    box_fill,
    candidate_features,
    centrality,
    learned_score,
)
from .mask_metrics import dice

logger = logging.getLogger(__name__)

#: Half-sides of the candidate boxes, as fractions of the slice's longer side.
CANDIDATE_SCALES: tuple[float, ...] = (0.02, 0.03, 0.045, 0.07, 0.1, 0.15, 0.22, 0.33)
#: Aspect ratios (width, height) of the candidate boxes.
CANDIDATE_ASPECTS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2))
#: Exponents of the candidate score (contrast, centrality, predicted IoU, box fill).
SCORE_WEIGHTS: tuple[float, float, float, float] = (1.0, 2.0, 1.0, 0.5)
#: Margin added around a refitted component, as a fraction of its extent (plus 1 pixel).
MARGIN: float = 0.1
#: Refits per seed at most.
MAX_REFITS: int = 3
#: Rankings of the candidate masks (see :func:`segment_clicks`).
RANKINGS: tuple[str, ...] = ("rule", "learned")


@dataclass(frozen=True)
class ClickResult:
    """What :func:`segment_clicks` found.

    Attributes
    ----------
    mask
        Boolean mask, the slice's size.
    box
        (x_min, y_min, x_max, y_max) the final mask was predicted from, or None when empty.
    iou
        The model's predicted IoU for that box.
    calls
        Decoder calls spent.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int] | None
    iou: float
    calls: int


def _check_points(points: Sequence[Sequence[float]], shape: tuple[int, int], kind: str
                  ) -> list[tuple[int, int]]:
    rows, cols = shape
    out = []
    for p in points:
        if len(p) < 2:
            raise ValueError(f"{kind} click {p!r} needs (x, y)")
        x, y = int(round(float(p[0]))), int(round(float(p[1])))
        if not (0 <= x < cols and 0 <= y < rows):
            raise ValueError(f"{kind} click (x={p[0]}, y={p[1]}) lies outside the slice "
                             f"(columns 0..{cols - 1}, rows 0..{rows - 1})")
        out.append((x, y))
    return out


def _clip_box(x0: float, y0: float, x1: float, y1: float, shape: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    rows, cols = shape
    return (int(max(0, np.floor(x0))), int(max(0, np.floor(y0))),
            int(min(cols - 1, np.ceil(x1))), int(min(rows - 1, np.ceil(y1))))


def _components_at(mask: np.ndarray, points: Sequence[tuple[int, int]]) -> np.ndarray:
    """The union of the connected components of ``mask`` that contain any of ``points``."""
    if not mask.any() or not points:
        return np.zeros_like(mask)
    lab, _ = ndimage.label(mask)
    ids = {int(lab[y, x]) for x, y in points} - {0}
    if not ids:
        return np.zeros_like(mask)
    return np.isin(lab, list(ids))


def _remove_components_at(mask: np.ndarray, points: Sequence[tuple[int, int]]) -> np.ndarray:
    if not mask.any() or not points:
        return mask
    return mask & ~_components_at(mask, points)


def _fit_box(mask: np.ndarray, shape: tuple[int, int], margin: float = MARGIN
             ) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    mx = margin * (x1 - x0 + 1) + 1
    my = margin * (y1 - y0 + 1) + 1
    return _clip_box(x0 - mx, y0 - my, x1 + mx, y1 + my, shape)


def _exclude(box: tuple[int, int, int, int], positives: Sequence[tuple[int, int]],
             negatives: Sequence[tuple[int, int]]) -> tuple[int, int, int, int]:
    """Shrink ``box`` so every negative click falls outside it (keeping the positives in).

    For each negative inside the box, the side that separates it from the positives and
    keeps the largest area is moved to just before the negative.
    """
    x0, y0, x1, y1 = box
    for nx, ny in negatives:
        if not (x0 <= nx <= x1 and y0 <= ny <= y1):
            continue
        options = []
        if positives:
            pxs = [p[0] for p in positives]
            pys = [p[1] for p in positives]
            if nx > max(pxs):
                options.append((x0, y0, nx - 1, y1))
            if nx < min(pxs):
                options.append((nx + 1, y0, x1, y1))
            if ny > max(pys):
                options.append((x0, y0, x1, ny - 1))
            if ny < min(pys):
                options.append((x0, ny + 1, x1, y1))
        options = [b for b in options if b[2] > b[0] and b[3] > b[1]]
        if options:
            x0, y0, x1, y1 = max(options, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return x0, y0, x1, y1


class Decoded(NamedTuple):
    """One decoder answer during the click search."""

    #: The mask after the negative clicks were applied.
    mask: np.ndarray
    #: The model's predicted IoU.
    iou: float
    #: The decoder's logits at the slice's size (before the negative clicks).
    logits: np.ndarray


class _Decoder:
    """Counts decoder calls and applies the negative clicks to every prediction.

    The box is shrunk so that negatives fall outside it; components that still hold a
    negative click but no positive one are removed.
    """

    def __init__(self, model: Predictor, embedding: Embedding,
                 positives: list[tuple[int, int]], negatives: list[tuple[int, int]]) -> None:
        self.model = model
        self.embedding = embedding
        self.positives = positives
        self.negatives = negatives
        self.calls = 0

    def __call__(self, box: tuple[int, int, int, int]) -> Decoded:
        box = _exclude(box, self.positives, self.negatives)
        self.calls += 1
        pred = self.model.predict(self.embedding, box=Box(*box))
        mask = pred.mask
        if self.negatives:
            cut = _components_at(mask, self.negatives) & ~_components_at(mask, self.positives)
            mask = mask & ~cut
        return Decoded(mask, float(pred.iou), pred.logits)


def _grow(decode: _Decoder, seed: tuple[int, int, int, int], positives: list[tuple[int, int]],
          shape: tuple[int, int]):
    """Refit ``seed`` to the clicked component until it is stable; (mask, box, iou, stability)."""
    box = seed
    previous = None
    mask, iou = None, 0.0
    for _ in range(MAX_REFITS + 1):
        full, iou, _ = decode(box)
        mask = _components_at(full, positives)
        if not mask.any():
            return None
        stability = 1.0 if previous is None else dice(mask, previous)
        new_box = _fit_box(mask, shape)
        if new_box == box or (previous is not None and stability > 0.97):
            return mask, box, iou, stability
        previous, box = mask, new_box
    return mask, box, iou, stability


def segment_clicks(model: Predictor, embedding: Embedding, positives: Sequence[Sequence[float]],
                   negatives: Sequence[Sequence[float]] = (),
                   box: Sequence[float] | None = None,
                   image: np.ndarray | None = None, ranking: str = "rule") -> ClickResult:
    """Segment the object under positive clicks on one embedded slice.

    Parameters
    ----------
    model
        What answers boxes: a prompt model (e.g. ``load_model("litemedsam")``) or any
        :class:`~napari_medsam.engine.protocol.Predictor`.
    embedding
        The slice's embedding from ``model.embed``.
    positives
        Positive clicks (x, y): x = column, y = row, pixel coordinates.
    negatives
        Negative clicks (x, y): what they fall in is cut from the mask.
    box
        An optional drawn box (x_min, y_min, x_max, y_max): clicks then refine inside it.
    image
        The slice as the model saw it (uint8, the slice's shape): lets the choice among
        candidate boxes use the image's contrast. Without it, that term is left out.
    ranking
        How the candidate masks of a click without a drawn box are ranked: ``"rule"`` (the
        hand-made :func:`candidate_score`) or ``"learned"`` (the linear score of
        :mod:`.click_ranking`, fitted on MRI and better on CT; the session uses it for fixed
        CT windows).

    Returns
    -------
    ClickResult
        The mask, the box used, its predicted IoU and the decoder calls spent.

    Raises
    ------
    ValueError
        When a click lies outside the slice, or there is neither a box nor a positive click.
    """
    shape = tuple(int(s) for s in embedding.original_size)
    pos = _check_points(positives, shape, "positive")
    neg = _check_points(negatives, shape, "negative")
    decode = _Decoder(model, embedding, pos, neg)
    if image is not None and tuple(np.shape(image)) != shape:
        raise ValueError(f"image of shape {np.shape(image)} does not match the embedded slice "
                         f"{shape}")
    if box is not None:
        drawn = _clip_box(*box, shape)
        full, iou, _ = decode(drawn)
        mask = _components_at(full, pos) if pos else full
        used = _exclude(drawn, pos, neg)
        if pos and not mask.any():  # the positives missed the box's mask: grow inside the box
            grown = _grow(decode, used, pos, shape)
            if grown is not None:
                mask, used, iou, _ = grown
        return ClickResult(mask=mask, box=used, iou=iou, calls=decode.calls)
    if not pos:
        raise ValueError("segment_clicks needs a positive click or a box")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    candidates = []  # (mask, box, iou, logits)
    for seed in candidate_boxes(pos, shape):
        full, iou, logits = decode(seed)
        mask = _components_at(full, pos)
        if mask.any():
            candidates.append((mask, seed, iou, logits))
    if not candidates:
        return ClickResult(mask=np.zeros(shape, bool), box=None, iou=0.0, calls=decode.calls)
    masks = [c[0] for c in candidates]
    learned = ranking == "learned"

    def score_of(mask, seed, iou, logits, agree_value) -> float:
        """The chosen ranking's score (``agree_value``: mean Dice with the candidates,
        used by the learned ranking only)."""
        if not learned:
            return candidate_score(mask, seed, iou, pos, image)
        return learned_score(candidate_features(mask, seed, iou, logits, pos, image,
                                                _touches_box(mask, seed), agree_value))

    agree = agreement(masks) if learned else [None] * len(candidates)
    scores = [score_of(*c, a) for c, a in zip(candidates, agree, strict=True)]
    best = int(np.argmax(scores))
    mask, seed, iou, _ = candidates[best]
    score = scores[best]
    logger.debug("click at %s: candidate %s of %d (iou %.3f, score %.3f)", pos, seed,
                 len(candidates), iou, score)
    if _touches_box(mask, seed):  # cut by its box: the object may be larger; refit once
        refit = _fit_box(mask, shape)
        full, refit_iou, refit_logits = decode(refit)
        grown = _components_at(full, pos)
        if grown.any():
            agree_value = agreement_with(grown, masks) if learned else None
            if score_of(grown, refit, refit_iou, refit_logits, agree_value) > score:
                mask, seed, iou = grown, refit, refit_iou
    return ClickResult(mask=mask, box=_exclude(seed, pos, neg), iou=iou, calls=decode.calls)


def _touches_box(mask: np.ndarray, box: tuple[int, int, int, int]) -> bool:
    """Whether the mask reaches a side of ``box`` that is not the slice's border."""
    ys, xs = np.nonzero(mask)
    rows, cols = mask.shape
    x0, y0, x1, y1 = box
    return bool((xs.min() <= x0 and x0 > 0) or (ys.min() <= y0 and y0 > 0)
                or (xs.max() >= x1 and x1 < cols - 1) or (ys.max() >= y1 and y1 < rows - 1))


def candidate_boxes(positives: Sequence[tuple[int, int]], shape: tuple[int, int]
                    ) -> list[tuple[int, int, int, int]]:
    """Boxes of several sizes and aspect ratios around the positive clicks (no duplicates)."""
    xs = [p[0] for p in positives]
    ys = [p[1] for p in positives]
    side = max(shape)
    boxes: list[tuple[int, int, int, int]] = []
    for scale in CANDIDATE_SCALES:
        radius = max(2.0, scale * side)
        for ax, ay in CANDIDATE_ASPECTS:
            rx, ry = radius * ax / np.sqrt(ax * ay), radius * ay / np.sqrt(ax * ay)
            box = _clip_box(min(xs) - rx, min(ys) - ry, max(xs) + rx, max(ys) + ry, shape)
            if box not in boxes and box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
    return boxes


def candidate_score(mask: np.ndarray, box: tuple[int, int, int, int], iou: float,
                    positives: Sequence[tuple[int, int]], image: np.ndarray | None) -> float:
    """Log-score of a candidate mask (the clicked component) predicted from ``box``.

    The sum, weighted by :data:`SCORE_WEIGHTS`, of the logs of:

    - *contrast*: |mean inside - mean in a 2-pixel ring outside| / (std inside + std ring
      + 1) on the image the model saw (skipped when ``image`` is None);
    - *centrality*: the clicks' distance to the mask border over the mask's largest one;
    - *iou*: the model's predicted IoU;
    - *fill*: IoU between the mask's bounding box and ``box``.
    """
    w_contrast, w_central, w_iou, w_fill = SCORE_WEIGHTS
    eps = 1e-3
    score = w_iou * np.log(max(iou, eps))
    score += w_central * np.log(max(centrality(mask, positives), eps))
    score += w_fill * np.log(max(box_fill(mask, box), eps))
    if image is not None:
        contrast = border_contrast(mask, image)
        if contrast is not None:
            score += w_contrast * np.log(max(contrast, eps))
    return float(score)
