"""A learned ranking of the click search's candidate masks (used on CT slices).

:func:`~napari_medsam.segmentation.clicks.segment_clicks` predicts ~24 candidate boxes around
a click and keeps one mask. Its hand-made score (contrast, centrality, predicted IoU, box
fill) was chosen on an abdominal MRI. This module holds a second ranking: a linear score of
ten measurements of each candidate, with weights fitted on the **MRI cases only** of
``../shared/data`` (every second reference slice, one interior click each; a softmax over
each click's candidates maximised the expected Dice, L2-regularised). On the CT organs, which
it never saw, it picks better masks than the hand-made score (CT organs of the sample CT:
0.898 against 0.879 mean Dice per click); on a held-out MRI it did not, so MRI keeps the
hand-made score. No Qt and no napari here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Weight of each candidate measurement in the learned score (``sum(w * feature)``). The
#: fitted weights of the standardised features divided by the features' spread in the
#: training data (an additive constant does not change the ranking).
CT_WEIGHTS: dict[str, float] = {
    "log_contrast": 0.1998,    # |mean in - mean in a 2-px ring| / (std in + std ring + 1)
    "log_centrality": 0.4708,  # the clicks' distance to the border / the mask's largest
    "log_iou": 1.3699,         # the model's predicted IoU
    "log_fill": 0.0946,        # IoU of the mask's bounding box with the candidate box
    "log_stability": 0.2513,   # pixels above logit +1 / the clicked region above logit -1
    "log_area": 0.0373,        # the mask's share of the slice
    "touches_box": -0.0792,    # 1 when the box cuts the mask (a side that is not the border)
    "inside_std": -0.0363,     # grey-value spread inside the mask (0..1)
    "mean_logit": 0.1028,      # mean logit inside the mask
    "agreement": 1.1772,       # mean Dice with the other candidates' masks
}

_EPS = 1e-3


def agreement(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Mean Dice of each mask with every other one (1.0 for a single mask)."""
    if len(masks) < 2:
        return np.ones(len(masks))
    flat = np.stack([np.asarray(m, bool).ravel() for m in masks]).astype(np.float32)
    inter = flat @ flat.T
    sizes = flat.sum(axis=1)
    dice = 2.0 * inter / np.maximum(sizes[:, None] + sizes[None, :], 1.0)
    return (dice.sum(axis=1) - 1.0) / (len(masks) - 1)


def agreement_with(mask: np.ndarray, masks: Sequence[np.ndarray]) -> float:
    """Mean Dice of ``mask`` with ``masks``."""
    if not masks:
        return 1.0
    mask = np.asarray(mask, bool)
    size = int(mask.sum())
    return float(np.mean([2.0 * int((mask & m).sum()) / max(size + int(m.sum()), 1)
                          for m in masks]))


def centrality(mask: np.ndarray, positives: Sequence[tuple[int, int]]) -> float:
    """The clicks' mean distance to the border of ``mask`` over the mask's largest one."""
    dist = ndimage.distance_transform_edt(mask)
    return float(np.mean([dist[y, x] for x, y in positives])) / max(float(dist.max()), _EPS)


def box_fill(mask: np.ndarray, box: Sequence[int]) -> float:
    """IoU of the bounding box of ``mask`` (non-empty) with ``box`` (x0, y0, x1, y1)."""
    ys, xs = np.nonzero(mask)
    bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max(), ys.max()
    ix = max(0, min(bx1, box[2]) - max(bx0, box[0]) + 1)
    iy = max(0, min(by1, box[3]) - max(by0, box[1]) + 1)
    area_mask = (bx1 - bx0 + 1) * (by1 - by0 + 1)
    area_box = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    return float(ix * iy / (area_mask + area_box - ix * iy))


def border_contrast(mask: np.ndarray, image: np.ndarray) -> float | None:
    """|mean inside - mean in a 2-pixel ring outside| / (std inside + std ring + 1), or
    None when the mask has no ring (it fills the slice)."""
    ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
    if not ring.any():
        return None
    inside = image[mask].astype(np.float64)
    outside = image[ring].astype(np.float64)
    return float(abs(inside.mean() - outside.mean()) / (inside.std() + outside.std() + 1))


def candidate_features(mask: np.ndarray, box: Sequence[int], iou: float, logits: np.ndarray,
                       positives: Sequence[tuple[int, int]], image: np.ndarray | None,
                       touches_box: bool, agreement_value: float) -> dict[str, float]:
    """The measurements :data:`CT_WEIGHTS` weighs, for one candidate mask (non-empty).

    Without ``image`` the grey-value measurements (contrast, inside spread) are left out.
    """
    mask = np.asarray(mask, bool)
    rows, cols = mask.shape
    central = centrality(mask, positives)
    fill = box_fill(mask, box)
    x, y = positives[0]
    weak, _ = ndimage.label(logits > -1.0)
    region = weak == weak[y, x] if weak[y, x] else mask
    stability = int(((logits > 1.0) & mask).sum()) / max(int(region.sum()), 1)
    features = {
        "log_centrality": np.log(max(central, _EPS)),
        "log_iou": np.log(max(float(iou), _EPS)),
        "log_fill": np.log(max(fill, _EPS)),
        "log_stability": np.log(max(stability, _EPS)),
        "log_area": np.log(max(mask.sum() / (rows * cols), 1e-9)),
        "touches_box": float(touches_box),
        "mean_logit": float(np.asarray(logits)[mask].mean()),
        "agreement": float(agreement_value),
    }
    if image is not None:
        contrast = border_contrast(mask, image)
        features["log_contrast"] = np.log(max(contrast or 0.0, _EPS))
        features["inside_std"] = float(image[mask].astype(np.float64).std() / 255.0)
    return features


def learned_score(features: dict[str, float], weights: dict[str, float] = CT_WEIGHTS) -> float:
    """``sum(weight * feature)`` over the measurements present."""
    return float(sum(weights[name] * value for name, value in features.items()))
