"""The segmentation session: one model, one volume, an embedding cache, the current preview.

This is the model behind the widget (and the CLI): it knows nothing about Qt or napari.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from napari_medsam.engine.cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from napari_medsam.engine.preprocess import PromptError
from napari_medsam.engine.protocol import (
    Box,
    Click,
    Embedding,
    Prediction,
    PromptModel,
    clicks_from,
    split_clicks,
)

from .roi import (
    DEFAULT_POLICY,
    OUTSIDE_LOGIT,
    ZOOM_MODES,
    Crop,
    RoiPolicy,
    choose_crop,
    combine_predictions,
    hysteresis_mask,
    is_fixed_window,
)
from .session_clicks import _SlicePredictor, native_clicks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceRef:
    """A 2D slice of the volume: the array ``axis`` it cuts across and its ``index``."""

    axis: int
    index: int


class SegmentationSession:
    """Embeds slices on demand (cached) and turns prompts into masks.

    Parameters
    ----------
    model
        Any :class:`~napari_medsam.engine.protocol.PromptModel`.
    volume
        The image array in (z, y, x) order (any numeric type).
    mapping
        The intensity mapping (``apply(array) -> uint8`` and a ``key``) that the model sees;
        the same mapping sets the layer's contrast limits.
    data_id
        Identifies the volume's contents in cache keys (e.g. ``id`` of the layer data).
    cache_bytes
        Memory budget of the embedding cache.
    disk_cache
        Also keep embeddings on disk (fp16, keyed by the image's contents, axis, mapping
        and model; see :mod:`napari_medsam.engine.disk_cache`), so that re-opening the same
        scan needs no encoder run.
    zoom
        ``"auto"`` (default): a small box is also segmented in a region of interest around
        it, seen at 4 model pixels per native pixel, and box masks get a hysteresis threshold
        (:mod:`napari_medsam.segmentation.roi`; on MRI and other data-driven mappings, and on
        CT slices larger than the model input). ``"off"``: the whole slice only, exactly as
        before. Settable at any time (``session.zoom = "off"``).
    roi_policy
        The rule's parameters (default :data:`~napari_medsam.segmentation.roi.DEFAULT_POLICY`,
        chosen by measurement, ``docs/speed_accuracy.md``).

    Attributes
    ----------
    encoder_calls
        Encoder runs on whole slices so far.
    roi_encoder_calls
        Encoder runs on regions of interest so far.
    """

    def __init__(self, model: PromptModel, volume: np.ndarray, mapping, *,
                 data_id: object | None = None, cache_bytes: int = DEFAULT_BUDGET_BYTES,
                 cache: EmbeddingCache | None = None, disk_cache: bool = False,
                 zoom: str = "auto", roi_policy: RoiPolicy | None = None) -> None:
        if np.ndim(volume) != 3:
            raise ValueError(f"expected a 3D volume, got shape {np.shape(volume)}")
        self.model = model
        #: Whose embeddings the model decodes (models sharing an encoder share them).
        self._encoder_id = model.spec.encoder_model
        self.volume = volume
        self.mapping = mapping
        self.data_id = id(volume) if data_id is None else data_id
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self._model_lock = threading.Lock()
        self.encoder_calls = 0
        self.disk_cache = disk_cache
        self._stores: dict[tuple[int, str], object] = {}
        self._digest: str | None = None
        self._store_lock = threading.Lock()
        self.zoom = zoom
        self.roi_policy = roi_policy if roi_policy is not None else DEFAULT_POLICY
        self.roi_encoder_calls = 0
        self._warned_point_domain = False
        self._base_decoder: PromptModel | None = None
        #: (decoder, axis, first, last): see :meth:`with_decoder_between`.
        self._range_decoder: tuple[PromptModel, int, int, int] | None = None

    @property
    def zoom(self) -> str:
        """``"auto"`` (regions of interest for small boxes) or ``"off"``."""
        return self._zoom

    @zoom.setter
    def zoom(self, value: str) -> None:
        mode = str(value).strip().lower()
        if mode not in ZOOM_MODES:
            raise ValueError(f"zoom must be one of {', '.join(ZOOM_MODES)}, got {value!r}")
        self._zoom = mode

    def slice_image(self, ref: SliceRef) -> np.ndarray:
        """The slice as the model sees it (uint8 after the intensity mapping)."""
        if not 0 <= ref.axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2, got {ref.axis}")
        size = self.volume.shape[ref.axis]
        if not 0 <= ref.index < size:
            raise IndexError(f"slice {ref.index} is outside 0..{size - 1} along axis {ref.axis}")
        raw = np.take(self.volume, ref.index, axis=ref.axis)
        if raw.dtype.kind == "f" and not np.isfinite(raw).any():
            raise PromptError(f"slice {ref.index} (axis {ref.axis}) holds no image data (every "
                              "value is NaN): there is nothing to segment on it")
        return self.mapping.apply(raw)

    def cache_key(self, ref: SliceRef) -> tuple:
        return (self.data_id, ref.axis, ref.index, self.mapping.key, self._encoder_id)

    def embedding(self, ref: SliceRef) -> Embedding:
        """The slice's embedding, computed once and then taken from the cache."""

        def compute() -> Embedding:
            store = self.disk_store(ref.axis)
            if store is not None:
                stored = store.get(ref.index)
                if stored is not None:
                    return stored
            image = self.slice_image(ref)
            with self._model_lock:
                self.encoder_calls += 1
                embedding = self.model.embed(image)
            if store is not None:
                try:
                    store.put(ref.index, embedding)
                except OSError as exc:  # a full disk must not stop segmentation
                    logger.warning("embedding not written to the disk cache: %s", exc)
            return embedding

        return self.cache.get_or_compute(self.cache_key(ref), compute)

    def disk_store(self, axis: int):
        """The disk store of ``axis`` under the current mapping (None when disabled)."""
        if not self.disk_cache:
            return None
        from napari_medsam.engine.disk_cache import DiskEmbeddingStore, array_digest

        key = (axis, str(self.mapping.key))
        with self._store_lock:
            if key not in self._stores:
                if self._digest is None:
                    self._digest = array_digest(np.asarray(self.volume))
                self._stores[key] = DiskEmbeddingStore.for_volume(
                    self.volume, axis, str(self.mapping.key), self.model,
                    image_digest=self._digest)
            return self._stores[key]

    def is_embedded(self, ref: SliceRef) -> bool:
        return self.cache_key(ref) in self.cache

    def predict(self, ref: SliceRef, *, box: Box | Sequence[float] | None = None,
                points: Sequence[Click | Sequence[float]] | None = None,
                mask_input: np.ndarray | None = None, zoom: bool = True) -> Prediction:
        """A mask on slice ``ref`` for a box and/or clicks.

        ``box`` and ``points`` may also be plain ``(x_min, y_min, x_max, y_max)`` and
        ``(x, y, label)`` tuples (converted here, :meth:`Box.of`, :meth:`Click.of`).

        With ``session.zoom == "auto"`` a box small enough for a region of interest
        (:meth:`crop_for`) is also segmented there, and the two predictions are combined
        (``roi_policy.combine``); the result has the slice's size. ``zoom=False``, a
        ``mask_input`` or a prompt without a box use the whole slice only.
        """
        box = None if box is None else Box.of(box)
        points = None if points is None else [Click.of(p) for p in points]
        embedding = self.embedding(ref)
        with self._model_lock:
            plain = self.decoder_for(ref).predict(embedding, box=box, points=points,
                                                  mask_input=mask_input)
        if not zoom or box is None or mask_input is not None:
            return plain
        crop = self.crop_for(ref, box)
        if crop is None:
            return plain
        roi = self.predict_in_crop(ref, crop, box=box, points=points)
        return combine_predictions(plain, roi, self.roi_policy.combine)

    # -- regions of interest ------------------------------------------------------------
    def slice_shape(self, axis: int) -> tuple[int, int]:
        """(rows, cols) of the slices across ``axis``."""
        return tuple(int(s) for a, s in enumerate(self.volume.shape) if a != axis)

    def _input_size(self) -> int:
        return int(self.model.spec.input_size)

    def crop_key(self, ref: SliceRef, crop: Crop) -> tuple:
        """Cache key of a crop's embedding (the slice's key, the crop and the crop's grey
        value rule)."""
        policy = self.roi_policy
        return (*self.cache_key(ref), "roi", crop.key, policy.intensity,
                tuple(policy.percentiles))

    def crop_for(self, ref: SliceRef, box: Box) -> Crop | None:
        """The region of interest ``box`` is also segmented in, or None (zoom off, or the box
        gets none; see :func:`~napari_medsam.segmentation.roi.choose_crop`).

        The ROI depends on the box alone (it starts on the policy's grids), so the same box
        gets the same mask whatever the session segmented before, and boxes a few pixels
        apart share one ROI embedding.
        """
        if not self.roi_active(ref.axis):
            return None
        return choose_crop(box, self.slice_shape(ref.axis), self._input_size(), self.roi_policy)

    def crop_image(self, ref: SliceRef, crop: Crop) -> np.ndarray:
        """The ROI as the model sees it: uint8 under the slice's own intensity mapping (the
        model min-max normalises its input, so the ROI is stretched to its own range anyway),
        on the ROI's square canvas."""
        if not 0 <= ref.axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2, got {ref.axis}")
        raw = crop.extract(np.take(self.volume, ref.index, axis=ref.axis))
        return crop.canvas_image(self.mapping.apply(raw))

    def crop_embedding(self, ref: SliceRef, crop: Crop) -> Embedding:
        """The crop's embedding, computed once and then taken from the cache."""

        def compute() -> Embedding:
            image = self.crop_image(ref, crop)
            with self._model_lock:
                self.roi_encoder_calls += 1
                return self.model.embed(image)

        return self.cache.get_or_compute(self.crop_key(ref, crop), compute)

    def predict_in_crop(self, ref: SliceRef, crop: Crop, *, box: Box | None = None,
                        points: Sequence[Click] | None = None) -> Prediction:
        """Predict in ``crop`` (prompts given in slice pixels); the result at slice size."""
        embedding = self.crop_embedding(ref, crop)
        crop_box = None if box is None else crop.box_to_crop(box)
        crop_points = None if not points else crop.points_to_crop(points)
        with self._model_lock:
            pred = self.decoder_for(ref).predict(embedding, box=crop_box, points=crop_points)
        shape = self.slice_shape(ref.axis)
        logits = crop.paste(pred.logits.astype(np.float32, copy=False), shape,
                            np.float32(OUTSIDE_LOGIT))
        return Prediction(logits=logits, mask=logits > 0, iou=pred.iou,
                          low_res_logits=pred.low_res_logits)

    def roi_active(self, axis: int = 0) -> bool:
        """Whether slices across ``axis`` use ROIs and the hysteresis threshold:
        ``zoom == "auto"`` and the policy applies to the session's intensity mapping and
        slice size (:meth:`~napari_medsam.segmentation.roi.RoiPolicy.applies_to`)."""
        return self._zoom == "auto" and self.roi_policy.applies_to(
            self.mapping, self.slice_shape(axis), self._input_size())

    def _box_mask(self, ref: SliceRef, box: Box) -> np.ndarray:
        """The 2D box path's mask: with ``zoom == "auto"``, ROI and hysteresis threshold
        (on boxes that got a ROI)."""
        pred = self.predict(ref, box=box)
        policy = self.roi_policy
        if policy.weak_logit is None or not self.roi_active(ref.axis):
            return pred.mask
        if self.crop_for(ref, box) is None:
            return pred.mask
        return hysteresis_mask(pred.logits, policy.weak_logit)

    def predict_prompts(self, ref: SliceRef, boxes: Sequence[Box | Sequence[float]] = (),
                        positives: Sequence[tuple[float, float]] = (),
                        negatives: Sequence[tuple[float, float]] = (), *,
                        clicks: Sequence[Click] = ()) -> np.ndarray | None:
        """The mask for all prompts on a slice (None when there is nothing to segment).

        Clicks are ``clicks`` (:class:`Click` values), or the older ``positives`` and
        ``negatives`` lists of (x, y) (both are accepted and joined, converted here once).

        Boxes alone: the union of their masks. With clicks, the clicks are turned into a box
        by :func:`~napari_medsam.segmentation.clicks.segment_clicks` (LiteMedSAM answers
        boxes only), refined inside the last drawn box if there is one; other boxes add
        their own masks. With ``zoom == "auto"``, small boxes (drawn or found from clicks)
        are segmented in a zoomed crop (see :meth:`predict`).
        """
        boxes = [Box.of(box) for box in boxes]
        clicks = clicks_from(positives, negatives) + [Click.of(c) for c in clicks]
        positives, negatives = split_clicks(clicks)
        if not boxes and not positives:
            return None
        mask = None
        if clicks and self.native_clicks_on(ref):
            mask = self._native_clicks(ref, boxes.pop() if boxes else None, clicks)
        elif clicks:
            from .clicks import segment_clicks

            embedding = self.embedding(ref)
            zoomed = self.roi_active(ref.axis)
            # zoomed: every candidate box goes through self.predict (ROI where it gets one),
            # which takes the model lock per call
            with nullcontext() if zoomed else self._model_lock:
                result = segment_clicks(_SlicePredictor(self, ref) if zoomed
                                        else self.decoder_for(ref),
                                        embedding, positives, negatives,
                                        box=boxes.pop() if boxes else None,
                                        image=self.slice_image(ref),
                                        ranking=self.click_ranking)
            mask = np.asarray(result.mask, dtype=bool)
        for box in boxes:
            box_mask = self._box_mask(ref, box)
            mask = box_mask if mask is None else (mask | box_mask)
        return mask

    def with_decoder_between(self, decoder: PromptModel, axis: int, first: int,
                             last: int) -> SegmentationSession:
        """A session on the same volume, mapping, zoom and embeddings whose prompts on the
        slices ``first..last`` (inclusive) across ``axis`` are decoded by ``decoder`` (one
        adapted to an object's accepted slices, sharing this model's encoder:
        :func:`napari_medsam.adaptation.within_scan.adapt_to_slices`); everywhere else
        this session's decoder answers. This session is unchanged."""
        other = SegmentationSession(self.model, self.volume, self.mapping,
                                    data_id=self.data_id, cache=self.cache,
                                    disk_cache=self.disk_cache, zoom=self.zoom,
                                    roi_policy=self.roi_policy)
        other._digest = self._digest
        other._model_lock = self._model_lock  # one model: its calls stay one at a time
        other._range_decoder = (decoder, int(axis), min(first, last), max(first, last))
        return other

    def decoder_for(self, ref: SliceRef) -> PromptModel:
        """The model that decodes prompts on ``ref``: the session's own, except

        - on the slices of a :meth:`with_decoder_between` session, where its decoder does;
        - for an adapted model on slices unlike those it was trained and checked on (its
          ``point_domain``: longest side within 2x, same CT/MR mapping), where its base
          model's decoder answers (same encoder: the same embeddings). A decoder adapted on
          122-pixel CT slices lost 0.015 box Dice on 512-pixel slices of another CT
          (stomach 0.89 -> 0.85).
        """
        if self._range_decoder is not None:
            decoder, axis, first, last = self._range_decoder
            if ref.axis == axis and first <= ref.index <= last:
                return decoder
        if not self._outside_domain(ref.axis):
            return self.model
        if self._base_decoder is None:
            from napari_medsam.models.registry import get_spec

            base = self.model.spec.source["adapted_from"]
            self._base_decoder = self.model.with_decoder(get_spec(base).path("decoder"))
            logger.info("%s", self.domain_note(ref.axis))
        return self._base_decoder

    def _outside_domain(self, axis: int) -> bool:
        """Whether the model is adapted and the slices across ``axis`` are unlike those it
        was trained and checked on (its base model's decoder answers there)."""
        spec = self.model.spec
        if spec.point_domain is None or not spec.source.get("adapted_from"):
            return False
        return not spec.point_domain.covers(self.slice_shape(axis), self.intensity_kind)

    def domain_note(self, axis: int = 0) -> str | None:
        """None when the session's model answers prompts on the slices across ``axis``
        itself; for an adapted model on slices unlike those it was trained and checked on,
        a line saying so and which decoder answers instead (see :meth:`decoder_for`)."""
        if not self._outside_domain(axis):
            return None
        spec = self.model.spec
        return (f"{spec.name} was trained on {spec.point_domain.describe()}; this scan's "
                f"{self.intensity_kind.upper()} slices of {max(self.slice_shape(axis))} px "
                f"are unlike them, so {spec.source['adapted_from']}'s decoder answers here")

    def native_clicks_on(self, ref: SliceRef) -> bool:
        """Whether the model answers clicks on ``ref`` itself (an adapted model, on slices
        like those its click answers were checked on): one decoder call per prompt instead
        of the click search that box-only models need."""
        spec = self.model.spec
        if not spec.answers("point"):
            return False
        shape = self.slice_shape(ref.axis)
        if spec.answers_points_on(shape, self.intensity_kind):
            return True
        if not self._warned_point_domain:
            self._warned_point_domain = True
            logger.info("%s answered clicks itself on %s; this scan's slices are %s %s px: "
                        "clicks use the click search", spec.name,
                        spec.point_domain.describe(), self.intensity_kind.upper(),
                        max(shape))
        return False

    @property
    def intensity_kind(self) -> str:
        """``"ct"`` under a fixed CT window, else ``"mr"``: the mapping as an adapted model's
        :class:`~napari_medsam.models.registry.PointDomain` records it."""
        return "ct" if is_fixed_window(self.mapping) else "mr"

    def _native_clicks(self, ref: SliceRef, box: Box | None,
                       points: list[Click]) -> np.ndarray:
        """Clicks (and a box) as one point prompt (:func:`.session_clicks.native_clicks`)."""
        return native_clicks(self, ref, box, points, combine_predictions)

    @property
    def click_ranking(self) -> str:
        """How clicks choose among candidate masks: ``"learned"`` under a fixed CT window
        (better there, measured on CT organs), the hand-made ``"rule"`` otherwise (MRI)."""
        return "learned" if is_fixed_window(self.mapping) else "rule"

    def prefetch(self, ref: SliceRef, radius: int = 2):
        """Embed the slices next to ``ref`` (nearest first); yields each index done.

        A generator, so that a worker can stop it between slices when the user acts.
        """
        size = self.volume.shape[ref.axis]
        for step in range(1, radius + 1):
            for index in (ref.index + step, ref.index - step):
                neighbour = SliceRef(ref.axis, index)
                if 0 <= index < size and not self.is_embedded(neighbour):
                    self.embedding(neighbour)
                    yield index
