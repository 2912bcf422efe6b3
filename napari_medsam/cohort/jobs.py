"""What one scan of ``segment`` or ``embed`` does, for the one-scan commands and for cohorts.

:func:`segment_scan` and :func:`embed_scan` are the core the one-scan commands call (with
their printing hooks); :func:`segment_job` and :func:`embed_job` wrap them for a cohort: skip
a scan that is done, turn any error into a failed :class:`Outcome` with a one-line reason,
and time it. They run in this process or inside a Ray task (see :mod:`.run`), so settings
and outcomes are plain picklable data and the model comes from a picklable factory.

No napari, Qt or Ray imports here.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .records import inputs_record, verify_record, write_record
from .scans import Job

logger = logging.getLogger(__name__)

__all__ = ["EmbedSettings", "Outcome", "SegmentSettings", "embed_job", "embed_scan",
           "local_worker", "segment_job", "segment_scan"]

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass(frozen=True)
class SegmentSettings:
    """How every scan of a ``segment`` run is segmented (the options, not the scans)."""

    open_model: Callable[[], Any]
    model: str = "litemedsam"
    window: str | None = None
    overwrite: bool = False
    zoom: str = "auto"
    slice_gaps: str = "error"

    def recorded(self) -> dict[str, Any]:
        """The settings that change an output: a change redoes a done scan."""
        return {"window": self.window, "overwrite": self.overwrite, "zoom": self.zoom,
                "slice_gaps": self.slice_gaps}


@dataclass(frozen=True)
class EmbedSettings:
    """How every scan of an ``embed`` run is embedded."""

    open_model: Callable[[], Any]
    axis: int = 0
    start: int | None = None
    window: str | None = None
    slice_gaps: str = "error"


@dataclass(frozen=True)
class Outcome:
    """What happened to one scan: ``status`` is ok, skipped or failed; ``detail`` says what
    was done, why it was skipped or the one-line reason it failed; ``where`` names the
    process (and Ray node) that ran it."""

    name: str
    image: str
    status: str
    detail: str
    seconds: float
    where: str = ""
    ran_on: Mapping[str, Any] = field(default_factory=dict)


def local_worker() -> dict[str, Any]:
    """This process: host and pid (a Ray task adds its node, worker and task ids)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "ray": None}


def describe_worker(ran_on: Mapping[str, Any]) -> str:
    """``pid 123`` or ``ray node 9912bf35 pid 123`` (for the summary)."""
    ray = ran_on.get("ray")
    node = f"ray node {str(ray.get('node_id', '?'))[:8]} " if ray else ""
    return f"{node}pid {ran_on.get('pid', '?')} on {ran_on.get('host', '?')}"


def one_line(exc: BaseException) -> str:
    """An error as one line: the message (its type too when it is not a user error)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    # the project's own errors (bad files, a missing model, an unreachable server, a usage
    # error from the command line) carry messages written for users
    if isinstance(exc, ValueError | OSError) or type(exc).__module__.startswith(
            "napari_medsam."):
        return text
    return f"{type(exc).__name__}: {text}"


def default_mapping(volume, window: str | None):
    """The intensity mapping: ``window`` by name, else automatic (as the viewer opens it)."""
    from napari_medsam.io import auto_mapping, mapping_from_name

    if window:
        return mapping_from_name(window, volume.array)
    return auto_mapping(volume.array, volume.modality)


# -- segment ---------------------------------------------------------------------------------
@dataclass
class SegmentResult:
    """What :func:`segment_scan` wrote."""

    written: Path
    outcomes: list
    seconds: float

    @property
    def voxels(self) -> int:
        return sum(o.voxels for o in self.outcomes)


def segment_scan(image: str, prompts: str, out: str | os.PathLike[str],
                 settings: SegmentSettings, *, mapping_for: Callable | None = None,
                 on_start: Callable | None = None,
                 progress: Callable | None = None) -> SegmentResult:
    """Segment ``image`` from the prompt file ``prompts`` and write the label map ``out``.

    ``mapping_for(volume, window)`` gives the intensity mapping (default
    :func:`default_mapping`); ``on_start(volume, model, mapping, prompts)`` is called before
    the first object, ``progress`` after each (see ``apply_prompts``). Raises what reading,
    the prompt file, the model or writing raise (``PromptFileError`` for a bad prompt file).
    """
    from napari_medsam.io import read_volume, write_labels
    from napari_medsam.segmentation import SegmentationSession
    from napari_medsam.segmentation.prompts_file import apply_prompts, load_prompts

    begin = time.perf_counter()
    volume = read_volume(image, slice_gaps=settings.slice_gaps)
    if volume.is_label_map:
        logger.warning("%s looks like a label map, not a scan", image)
    objects = load_prompts(prompts, volume.shape)
    mapping = (mapping_for or default_mapping)(volume, settings.window)
    model = settings.open_model()
    session = SegmentationSession(model, volume.array, mapping, zoom=settings.zoom)
    if on_start is not None:
        on_start(volume, model, mapping, objects)
    labels, outcomes = apply_prompts(session, objects, overwrite=settings.overwrite,
                                     progress=progress)
    for title in (o.prompt.title for o in outcomes if o.voxels == 0):
        logger.warning("%s: the model found nothing (the object is empty)", title)
    names = {p.label: p.name for p in objects if p.name}
    written = write_labels(labels, out, volume, label_names=names or None)
    return SegmentResult(written, outcomes, time.perf_counter() - begin)


def segment_job(job: Job, settings: SegmentSettings, ran_on: Mapping[str, Any]) -> Outcome:
    """One scan of a ``segment`` cohort: skipped when done (see :mod:`.records`), else
    segmented and recorded; never raises (except KeyboardInterrupt)."""
    begin = time.perf_counter()

    def outcome(status: str, detail: str) -> Outcome:
        return Outcome(job.name, job.image, status, detail, time.perf_counter() - begin,
                       describe_worker(ran_on), dict(ran_on))

    assert job.prompts is not None and job.out is not None
    try:
        why = verify_record(job.out, job.image, job.prompts, settings.model,
                            settings.recorded())
        if why is None:
            return outcome(SKIPPED, "done")
        logger.info("%s: segmenting (%s)", job.name, why)
        try:  # the inputs as they are before segmenting (what the record will say)
            inputs = inputs_record(job.image, job.prompts, settings.model, settings.recorded())
        except OSError:  # a missing image or prompt file: segment_scan says so in its words
            inputs = None
        result = segment_scan(job.image, job.prompts, job.out, settings)
        if inputs is None:
            inputs = inputs_record(job.image, job.prompts, settings.model, settings.recorded())
        write_record(result.written, inputs, ran_on)
    except Exception as exc:  # one bad scan never stops the others: its reason is reported
        logger.debug("%s failed", job.name, exc_info=True)
        return outcome(FAILED, one_line(exc))
    n = len(result.outcomes)
    return outcome(OK, f"{n} object{'s' * (n != 1)}, {result.voxels} voxels -> "
                       f"{result.written}")


# -- embed -----------------------------------------------------------------------------------
@dataclass
class EmbedResult:
    """What :func:`embed_scan` did; ``summary`` is None when it skipped a done scan."""

    embedder: Any
    summary: Any | None


def embed_scan(image: str, settings: EmbedSettings, *, skip_done: bool = False,
               on_ready: Callable | None = None, progress: Callable | None = None,
               started: Callable[[], None] | None = None) -> EmbedResult:
    """Embed every slice of ``image`` along ``settings.axis`` into the disk cache.

    ``on_ready(volume, mapping, model, embedder, seconds)`` is called once the embedder is
    set up (``seconds``: its set-up time), ``started()`` just before encoding begins,
    ``progress`` after every slice. With ``skip_done`` nothing runs when every slice is
    already in the disk cache (``VolumeEmbedder.missing()`` empty).
    """
    from napari_medsam.engine.volume_embedding import VolumeEmbedder
    from napari_medsam.io import read_volume

    volume = read_volume(image, slice_gaps=settings.slice_gaps)
    mapping = default_mapping(volume, settings.window)
    model = settings.open_model()
    begin = time.perf_counter()
    embedder = VolumeEmbedder(model, volume.array, mapping, settings.axis)
    if on_ready is not None:
        on_ready(volume, mapping, model, embedder, time.perf_counter() - begin)
    if skip_done and not embedder.missing():
        return EmbedResult(embedder, None)
    if started is not None:
        started()
    return EmbedResult(embedder, embedder.run(settings.start, progress=progress))


def embed_job(job: Job, settings: EmbedSettings, ran_on: Mapping[str, Any]) -> Outcome:
    """One scan of an ``embed`` cohort: skipped when every slice is cached, else embedded;
    never raises (except KeyboardInterrupt)."""
    begin = time.perf_counter()

    def outcome(status: str, detail: str) -> Outcome:
        return Outcome(job.name, job.image, status, detail, time.perf_counter() - begin,
                       describe_worker(ran_on), dict(ran_on))

    try:
        result = embed_scan(job.image, settings, skip_done=True)
    except Exception as exc:  # one bad scan never stops the others: its reason is reported
        logger.debug("%s failed", job.name, exc_info=True)
        return outcome(FAILED, one_line(exc))
    summary = result.summary
    if summary is None:
        return outcome(SKIPPED, "done")
    if summary.cancelled:
        return outcome(FAILED, f"stopped after {summary.done} of {summary.total} slices")
    rate = f", {summary.slices_per_s:.2f} slices/s" if summary.encoded else ""
    return outcome(OK, f"{summary.encoded} encoded, {summary.from_disk} already cached{rate}")
