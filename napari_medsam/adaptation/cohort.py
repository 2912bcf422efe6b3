"""Adapt a model to a structure and cohort from the user's own label maps.

:func:`adapt` runs the whole path: check the (image, label map) pairs, embed their labelled
slices with the product's engine (and disk cache), split off held-out examples, train the
decoder (:mod:`.training`), and save the result as a model of the registry
(:mod:`.adapted_model`) only when it beats the base model on the held-out split. The report
says what happened either way. Torch is imported only once training starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_medsam.io import Volume, read_volume
from napari_medsam.io.intensity import auto_mapping
from napari_medsam.models.registry import PointDomain

from .adapted_model import AdaptError, check_new_name, load_decoder, save_adapted_model
from .examples import EmbeddingBank, Example, collect_examples
from .training import DecoderTrainer, TrainingConfig, TrainingResult

logger = logging.getLogger(__name__)

#: With at least this many scans whole scans are held out; with fewer, every
#: :data:`HELDOUT_EVERY`-th labelled slice of each object is.
WHOLE_SCAN_SPLIT = 4
HELDOUT_EVERY = 5
#: Index (among an object's labelled slices) of its first held-out slice.
HELDOUT_FIRST = 2
#: Fewer held-out object slices cannot show a gain: the run is refused before training. With
#: two (a 7-slice brain tumour), models that lost 0.01-0.03 box Dice on the rest of the
#: tumour passed the check.
MIN_HELDOUT_SLICES = 3


@dataclass(frozen=True)
class TrainingPair:
    """A scan and its label map on the same voxel grid."""

    image: Volume
    labels: np.ndarray
    source: str

    @property
    def digest(self) -> str:
        """Content hash of the scan (what the model card records, not the path)."""
        from napari_medsam.engine.cache_keys import array_digest

        return array_digest(self.image.array)


def read_pair(image: str | Path, labels: str | Path, values: Sequence[int] | None,
              slice_gaps: str = "error") -> TrainingPair:
    """Open a scan and its label map and check that they fit each other and ``values``.

    Raises
    ------
    AdaptError
        For a label map of another shape or geometry, a scan given as the label map, a label
        value it does not hold, or no labelled voxel at all.
    """
    volume = read_volume(image, slice_gaps=slice_gaps)
    reference = read_volume(labels)
    if not reference.is_label_map:
        raise AdaptError(f"{labels} is not a label map (it looks like a scan)")
    if reference.shape != volume.shape or not (
            np.allclose(reference.spacing, volume.spacing, rtol=1e-4)
            and np.allclose(reference.origin, volume.origin, atol=1e-2)
            and np.allclose(reference.direction, volume.direction, atol=1e-3)):
        raise AdaptError(f"{labels} does not fit {image}: label map {reference.shape} spacing "
                         f"{tuple(round(s, 3) for s in reference.spacing)} vs scan "
                         f"{volume.shape} spacing {tuple(round(s, 3) for s in volume.spacing)}"
                         " (they must share the voxel grid)")
    array = np.asarray(reference.array)
    present = {int(v) for v in np.unique(array) if v > 0}
    if not present:
        raise AdaptError(f"{labels} has no labelled voxels")
    missing = sorted(set(values or ()) - present)
    if missing:
        raise AdaptError(f"{labels} has no voxels of label(s) {', '.join(map(str, missing))} "
                         f"(it holds {', '.join(map(str, sorted(present)))})")
    from napari_medsam.evaluation import reference_label_names

    volume.label_names.update(reference_label_names(reference, labels))
    return TrainingPair(volume, array, str(image))


def split_examples(examples: Sequence[Example], scans: int
                   ) -> tuple[list[Example], list[Example], str]:
    """(train, held-out, how): whole scans with :data:`WHOLE_SCAN_SPLIT` scans or more,
    else every :data:`HELDOUT_EVERY`-th labelled slice of each object (both views of a
    held-out slice stay together)."""
    if scans >= WHOLE_SCAN_SPLIT:
        held = set(range(scans - 1, -1, -WHOLE_SCAN_SPLIT))
        return ([e for e in examples if e.scan not in held],
                [e for e in examples if e.scan in held],
                f"held-out scans: {', '.join(str(s + 1) for s in sorted(held))} of {scans}")
    slices: dict[tuple[int, int], list[int]] = {}
    for e in examples:
        slices.setdefault((e.scan, e.label), [])
        if e.index not in slices[(e.scan, e.label)]:
            slices[(e.scan, e.label)].append(e.index)
    held_slices = {(scan, label, index) for (scan, label), indices in slices.items()
                   for n, index in enumerate(sorted(indices))
                   if n % HELDOUT_EVERY == HELDOUT_FIRST}
    return ([e for e in examples if e.group not in held_slices],
            [e for e in examples if e.group in held_slices],
            f"held-out slices: every {HELDOUT_EVERY}th labelled slice of each object")


@dataclass
class AdaptReport:
    """What :func:`adapt` did (``to_json`` for ``--json``)."""

    name: str
    base: str
    saved: bool
    labels: list[int]
    scans: int
    examples: int
    train_examples: int
    heldout_examples: int
    split: str
    prompts: list[str]
    epochs: list[dict[str, Any]]
    best_epoch: int
    heldout_before: dict[str, float | None]
    heldout_after: dict[str, float | None]
    embed_seconds: float
    train_seconds: float
    model_dir: str | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_clicks(trainer: DecoderTrainer, heldout: Sequence[Example],
                   sessions: Sequence) -> dict[str, float]:
    """Held-out Dice of one click at the innermost pixel, on whole slices: the adapted
    decoder answering it (one call) against the base model's click search (the product
    path for a model that answers boxes only)."""
    from napari_medsam.evaluation import dice
    from napari_medsam.segmentation import SliceRef

    from .examples import innermost_point

    native, search = [], []
    for example in (e for e in heldout if e.view == "slice"):
        native.append(dice(trainer.predict_mask(example, "click"), example.mask))
        ref = SliceRef(0, example.index)
        mask = sessions[example.scan].predict_prompts(
            ref, positives=[innermost_point(example.mask)])
        search.append(dice(np.asarray(mask, dtype=bool), example.mask))
    return {"adapted_one_call": round(float(np.mean(native)), 4),
            "base_click_search": round(float(np.mean(search)), 4)}


#: How much held-out box Dice an adapted model may lose when its one-call clicks beat the
#: base model's click search (otherwise boxes, the default prompt, must improve).
BOX_TOLERANCE = 0.01


def worth_keeping(result: TrainingResult, native_clicks: bool) -> tuple[bool, str]:
    """Whether the adapted decoder beats the base model where users will feel it, and why
    not: boxes better on the held-out examples, or clicks answered in one call better than
    the base model's click search with boxes no worse than :data:`BOX_TOLERANCE`."""
    if not result.improved:
        return False, "no epoch beat the base model on the held-out examples: nothing was saved"
    before, after = result.base.box, result.best.box
    if before is None or after is None:  # trained on clicks alone
        if native_clicks:
            return True, ""
        return False, ("one-click answers did not beat the base model's click search on the "
                       "held-out slices: nothing was saved")
    if after > before or (native_clicks and after >= before - BOX_TOLERANCE):
        return True, ""
    clicks = ("" if native_clicks else
              ", and one-click answers did not beat the base model's click search")
    return False, (f"boxes did not improve on the held-out examples ({before:.3f} -> "
                   f"{after:.3f}){clicks}: nothing was saved")


def point_domain(examples: Sequence[Example], sessions: Sequence) -> PointDomain:
    """The slices an adapted model is trusted on: the sizes and intensity mappings of the
    whole slices it was trained and checked on (elsewhere its base model's decoder
    answers)."""
    sides = [max(e.size) for e in examples if e.view == "slice"]
    kinds = sorted({s.intensity_kind for s in sessions})
    return PointDomain(min(sides), max(sides), tuple(kinds))


def _scores(result: TrainingResult, epoch: int) -> dict[str, float | None]:
    row = result.epochs[epoch]
    return {"box": row.box, "click": row.click, "score": row.score}


# Long on purpose: the recipe of one adaptation read top to bottom (embed, split, train,
# compare clicks, decide, save the model and its card); every step is its own function.
def adapt(pairs: Sequence[TrainingPair], values: Sequence[int], name: str, *,
          base: str = "litemedsam", device: str = "auto", backend: str = "auto",
          zoom: str = "auto", config: TrainingConfig | None = None,
          label_names: dict[int, str] | None = None,
          progress: Callable[[str], None] | None = None,
          cancel: Callable[[], bool] | None = None, server: str | None = None,
          api_key: str | None = None) -> AdaptReport:
    """Adapt ``base``'s decoder to ``values`` in ``pairs`` and save it as model ``name``.

    Parameters
    ----------
    pairs
        Scans with their label maps (:func:`read_pair`).
    values
        Label values to learn (in every pair's label map).
    name
        The new model's registry name (must be free).
    device, backend, zoom
        The engine and zoom rule the embeddings are made with (as inference will use).
    config
        Prompts, epochs, seed (:class:`~.training.TrainingConfig`).
    label_names
        Names of the labels, for the model card.
    progress
        Called with one line of text per stage and per training step.
    cancel
        Polled between slices and steps; a cancelled run saves nothing.
    server, api_key
        Embed on a ``napari-medsam serve`` server (see :func:`~napari_medsam.engine.
        load_model`); the training runs here either way.
    """
    from napari_medsam.engine import load_model
    from napari_medsam.segmentation import SegmentationSession

    config = config or TrainingConfig()
    check_new_name(name)
    if not pairs:
        raise AdaptError("give at least one scan with its label map")
    say = progress or (lambda _text: None)
    model = load_model(base, device, backend=backend, server=server, api_key=api_key)
    bank = EmbeddingBank()
    start = time.perf_counter()
    examples: list[Example] = []
    sessions = []
    try:
        for scan, pair in enumerate(pairs):
            session = SegmentationSession(model, pair.image.array,
                                          auto_mapping(pair.image.array, pair.image.modality),
                                          zoom=zoom, disk_cache=True)
            sessions.append(session)
            examples += collect_examples(
                session, pair.labels, values, scan, bank, cancel=cancel,
                progress=lambda done, total, s=scan: say(
                    f"embedding scan {s + 1}/{len(pairs)}: {done}/{total} object slices"))
        embed_seconds = time.perf_counter() - start
        if cancel is not None and cancel():
            raise AdaptError("cancelled: nothing was saved")
        train, heldout, how = split_examples(examples, len(pairs))
        held_slices = len({e.group for e in heldout})
        if not train or held_slices < MIN_HELDOUT_SLICES:
            raise AdaptError(
                f"too few labelled slices to train and check a gain ({held_slices} held out, "
                f"{MIN_HELDOUT_SLICES} needed): label at least "
                f"{HELDOUT_EVERY * (MIN_HELDOUT_SLICES - 1) + HELDOUT_FIRST + 1} slices of an "
                "object, or add scans")
        say(f"{len(train)} training and {len(heldout)} held-out examples ({how})")
        image_encoder, decoder = load_decoder(model.spec)
        trainer = DecoderTrainer(decoder, bank, model.spec.input_size, config)

        def step(epoch: int, done: int, total: int, left: float | None) -> None:
            eta = f", about {left:.0f} s left" if left is not None else ""
            say(f"epoch {epoch}: {done}/{total}{eta}")

        result = trainer.fit(train, heldout, progress=step, cancel=cancel)
        clicks = {}
        if "click" in config.prompts and result.improved and not result.cancelled:
            say("comparing clicks with the base model's click search on held-out slices")
            clicks = compare_clicks(trainer, heldout, sessions)
    finally:
        bank.close()
    if result.cancelled:
        raise AdaptError("cancelled: nothing was saved")
    native_clicks = bool(clicks) and clicks["adapted_one_call"] > clicks["base_click_search"]
    domain = point_domain(examples, sessions)
    report = AdaptReport(
        name=name, base=model.spec.name, saved=False, labels=[int(v) for v in values],
        scans=len(pairs), examples=len(examples), train_examples=len(train),
        heldout_examples=len(heldout), split=how, prompts=list(config.prompts),
        epochs=[asdict(e) | {"score": e.score} for e in result.epochs],
        best_epoch=result.best_epoch, heldout_before=_scores(result, 0),
        heldout_after=_scores(result, result.best_epoch),
        embed_seconds=round(embed_seconds, 2), train_seconds=round(result.seconds, 2),
        extra={"heldout_clicks": clicks, "answers_clicks": native_clicks})
    keep, report.reason = worth_keeping(result, native_clicks)
    if not keep:
        return report
    names = {int(v): (label_names or {}).get(int(v), pairs[0].image.label_names.get(int(v), ""))
             for v in values}
    from napari_medsam.engine.model_files import file_digest

    card = {"base": model.spec.name,
            "base_encoder_sha256": file_digest(model.spec.path("encoder")),
            "scans": [{"blake2b": p.digest, "shape": list(p.image.shape),
                       "modality": p.image.modality} for p in pairs],
            "labels": {str(k): v for k, v in names.items()}, "prompts": list(config.prompts),
            "epochs": result.best_epoch, "epochs_run": len(result.epochs) - 1,
            "seed": config.seed, "split": how, "heldout_before": report.heldout_before,
            "heldout_after": report.heldout_after, "zoom": zoom,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    card["answers_clicks"], card["heldout_clicks"] = native_clicks, clicks
    card["point_domain"] = domain.to_json()
    spec = save_adapted_model(name, model.spec, image_encoder, trainer.module,
                              answers_points=native_clicks, point_domain=domain, card=card)
    report.saved, report.model_dir = True, str(spec.directory)
    return report
