"""Turn clicks into a mask with a box-only model (LiteMedSAM answers boxes, not points).

A positive click is turned into a box by letting the model grow it: boxes of several sizes
are centred on the click; each is refitted to the bounding box (plus a margin) of the
predicted mask's connected component that contains the click until the box stops moving.
Among those fixed points the one with the best predicted IoU times stability (Dice between
the last two refits) wins. Negative clicks shrink every box so that they fall outside it, and
components that still hold a negative (and no positive) click are removed. No Qt and no napari here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

#: Half-sides of the seed boxes, as fractions of the slice's longer side.
SEED_SCALES: tuple[float, ...] = (0.03, 0.06, 0.1, 0.16, 0.25)
#: Margin added around a refitted component, as a fraction of its extent (plus 1 pixel).
MARGIN: float = 0.1
#: Refits per seed at most.
MAX_REFITS: int = 3


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


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


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


class _Decoder:
    """Counts decoder calls and applies the negative clicks to every prediction.

    The box is shrunk so that negatives fall outside it; components that still hold a
    negative click but no positive one are removed.
    """

    def __init__(self, model, embedding, positives: list[tuple[int, int]],
                 negatives: list[tuple[int, int]]) -> None:
        self.model = model
        self.embedding = embedding
        self.positives = positives
        self.negatives = negatives
        self.calls = 0

    def __call__(self, box: tuple[int, int, int, int]):
        box = _exclude(box, self.positives, self.negatives)
        self.calls += 1
        pred = self.model.predict(self.embedding, box=box)
        mask = pred.mask
        if self.negatives:
            cut = _components_at(mask, self.negatives) & ~_components_at(mask, self.positives)
            mask = mask & ~cut
        return mask, float(pred.iou)


def _grow(decode: _Decoder, seed: tuple[int, int, int, int], positives: list[tuple[int, int]],
          shape: tuple[int, int]):
    """Refit ``seed`` to the clicked component until it is stable; (mask, box, iou, stability)."""
    box = seed
    previous = None
    mask, iou = None, 0.0
    for _ in range(MAX_REFITS + 1):
        full, iou = decode(box)
        mask = _components_at(full, positives)
        if not mask.any():
            return None
        stability = 1.0 if previous is None else _dice(mask, previous)
        new_box = _fit_box(mask, shape)
        if new_box == box or (previous is not None and stability > 0.97):
            return mask, box, iou, stability
        previous, box = mask, new_box
    return mask, box, iou, stability


def segment_clicks(model, embedding, positives: Sequence[Sequence[float]],
                   negatives: Sequence[Sequence[float]] = (),
                   box: Sequence[float] | None = None) -> ClickResult:
    """Segment the object under positive clicks on one embedded slice.

    Parameters
    ----------
    model
        A prompt model (e.g. ``load_model("litemedsam")``) with ``predict``.
    embedding
        The slice's embedding from ``model.embed``.
    positives
        Positive clicks (x, y): x = column, y = row, pixel coordinates.
    negatives
        Negative clicks (x, y): what they fall in is cut from the mask.
    box
        An optional drawn box (x_min, y_min, x_max, y_max): clicks then refine inside it.

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
    if box is not None:
        drawn = _clip_box(*box, shape)
        full, iou = decode(drawn)
        mask = _components_at(full, pos) if pos else full
        used = _exclude(drawn, pos, neg)
        if pos and not mask.any():  # the positives missed the box's mask: grow inside the box
            grown = _grow(decode, used, pos, shape)
            if grown is not None:
                mask, used, iou, _ = grown
        return ClickResult(mask=mask, box=used, iou=iou, calls=decode.calls)
    if not pos:
        raise ValueError("segment_clicks needs a positive click or a box")
    xs = [p[0] for p in pos]
    ys = [p[1] for p in pos]
    side = max(shape)
    best = None
    best_score = -1.0
    for scale in SEED_SCALES:
        r = max(2.0, scale * side)
        seed = _clip_box(min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r, shape)
        grown = _grow(decode, seed, pos, shape)
        if grown is None:
            continue
        mask, fitted, iou, stability = grown
        score = iou * stability
        logger.debug("seed scale %.2f -> box %s iou %.3f stability %.3f", scale, fitted, iou,
                     stability)
        if score > best_score:
            best, best_score = grown, score
    if best is None:
        return ClickResult(mask=np.zeros(shape, bool), box=None, iou=0.0, calls=decode.calls)
    mask, fitted, iou, _ = best
    return ClickResult(mask=mask, box=fitted, iou=iou, calls=decode.calls)
