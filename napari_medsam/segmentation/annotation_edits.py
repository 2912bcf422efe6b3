"""Values and numpy of the annotation model (no Qt, no napari).

The pending 3D result (:class:`PendingSlices` from propagation or a 3D box,
:class:`PendingRefine` from *Refine* or *Fill gaps*), the change an accept makes
(:class:`LabelChange`: which voxels go from what to what), the assembly of a 3D edit from a
pending result, cutting a propagation where the user says the object ends
(:func:`cut_pending`), the words for where a propagation stopped (:func:`stop_text`), the anchor
masks propagation starts from, and small helpers the views show (voxels per object, object
names, the intensity mapping of a display range, the displayed slice).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from napari_medsam.io.intensity import CT_WINDOWS, IntensityMapping, ct_window

from .labels import merge_mask, replace_object
from .propagation_stops import DirectionStop, StopReason
from .session import SliceRef

if TYPE_CHECKING:
    from .bulk import RefineResult

__all__ = ["ADDED", "CONTINUABLE", "KEPT", "REMOVED", "LabelChange", "Pending3D", "PendingKind",
           "PendingRefine", "PendingSlices", "anchor_masks", "cut_pending", "displayed_slice",
           "label_counts", "label_name", "mapping_for_limits", "next_label", "pending_change",
           "preview_change", "refine_diff", "refine_pending", "slices_pending", "stop_text"]

#: Values of the 3D preview: the object, voxels a refine adds, voxels it removes.
KEPT, ADDED, REMOVED = 1, 2, 3


class PendingKind(enum.Enum):
    """What a pending 3D result holds."""

    SLICES = "slices"  # masks of some slices along one axis (propagate, 3D box)
    REFINE = "refine"  # the whole object as it should be (refine, fill gaps)


#: Stops a run can be continued past: those made by a stop rule (not the range's end, a
#: slice marked outside, a cancel or the user's cut).
CONTINUABLE = frozenset({StopReason.EMPTY, StopReason.JUMP, StopReason.INTENSITY,
                         StopReason.AREA})


@dataclass(frozen=True)
class PendingSlices:
    """Masks of object ``label`` on some slices along ``axis``, not yet written.

    ``stops`` says where each direction of a propagation ended (empty for a 3D box);
    ``lines`` is what a view shows: the summary's head and one line per stop.
    """

    label: int
    axis: int
    masks: Mapping[int, np.ndarray]
    summary: str
    stops: tuple[DirectionStop, ...] = ()
    lines: tuple[str, ...] = ()
    kind: ClassVar[str] = PendingKind.SLICES.value


@dataclass(frozen=True)
class PendingRefine:
    """A corrected object (:class:`~napari_medsam.segmentation.bulk.RefineResult`)."""

    label: int
    result: RefineResult
    summary: str
    kind: ClassVar[str] = PendingKind.REFINE.value


#: What *Accept 3D* would write.
Pending3D = PendingSlices | PendingRefine


def stop_text(stop: DirectionStop) -> str:
    """Where and why one direction of a propagation ended, in words: "towards lower slices
    stopped at 105 (intensity shift)"; the parts of a multi-part run follow briefly."""
    side = "towards lower slices" if stop.direction < 0 else "towards higher slices"
    if stop.reason is StopReason.END:
        text = f"{side} went to {stop.last} (end of range)"
    else:
        text = f"{side} stopped at {stop.index} ({stop.reason})"
    if stop.parts:
        text += " [parts stopped at " + ", ".join(f"{index} ({reason})"
                                                  for index, reason in stop.parts) + "]"
    return text


def cut_pending(pending: PendingSlices, index: int, anchors: Collection[int]
                ) -> PendingSlices:
    """``pending`` without slice ``index`` and every slice beyond it, away from the anchors:
    the user says the object ends there (a run that walked into a look-alike neighbour).
    That direction's stop becomes :attr:`StopReason.CUT` at ``index``.

    Parameters
    ----------
    pending
        A propagation's pending result (it has stops).
    index
        The first slice without the object.
    anchors
        The object's anchor slices along ``pending.axis`` (never cut).

    Raises
    ------
    ValueError
        ``pending`` is no propagation, ``index`` is an anchor or lies between anchors, or no
        slice of the preview lies at or beyond it.
    """
    anchors = sorted(int(a) for a in anchors)
    if not pending.stops or not anchors:
        raise ValueError("Cut here applies to a propagation from accepted slices")
    if index in anchors:
        raise ValueError(f"slice {index} is one of your accepted slices of object "
                         f"{pending.label}; go to the first slice past the object's end")
    if anchors[0] < index < anchors[-1]:
        raise ValueError(f"slice {index} lies between your accepted slices {anchors[0]} and "
                         f"{anchors[-1]}; correct it there instead (a box and Accept, or the "
                         "brush)")
    direction = 1 if index > anchors[-1] else -1
    cut = {i for i, m in pending.masks.items() if (i - index) * direction >= 0 and m.any()}
    if not cut:
        raise ValueError(f"no slice of the preview lies at or beyond slice {index}")
    masks = {i: m for i, m in pending.masks.items() if (i - index) * direction < 0}
    stops = [s for s in pending.stops if s.direction != direction]
    stops.append(DirectionStop(direction, int(index), StopReason.CUT,
                               int(index - direction)))
    return slices_pending(pending.label, pending.axis, masks, stops)


def slices_pending(label: int, axis: int, masks: Mapping[int, np.ndarray],
                   stops: Sequence[DirectionStop] = (), cancelled: bool = False
                   ) -> PendingSlices:
    """The pending result of a propagation or a 3D box, with its one-line summary
    ("Object 2: 34 slices segmented along axis 0; towards lower slices stopped at 105
    (intensity shift); towards higher slices went to 141 (end of range).")."""
    head = (f"Object {label}: {sum(1 for m in masks.values() if m.any())} slices "
            f"segmented along axis {axis}")
    if cancelled:
        head += " (cancelled: the slices done so far are kept in the preview)"
    stops = tuple(sorted(stops, key=lambda s: (s.direction, s.last)))
    phrases = [stop_text(s) for s in stops]
    summary = "; ".join([head, *phrases]) + "."
    lines = (head + ".", *(p[0].upper() + p[1:] + "." for p in phrases))
    return PendingSlices(int(label), int(axis), dict(masks), summary, stops, lines)


def refine_pending(operation: str, label: int, result: RefineResult) -> PendingRefine:
    """The pending result of *Refine* or *Fill gaps* (``operation``: its name)."""
    summary = (f"{operation} of object {label}: +{int(result.added.sum())} / "
               f"-{int(result.removed.sum())} voxels.")
    return PendingRefine(int(label), result, summary)


def refine_diff(result: RefineResult, dtype=np.uint8) -> np.ndarray:
    """The preview of a refine: :data:`KEPT`, :data:`ADDED` and :data:`REMOVED` voxels."""
    diff = np.zeros(result.mask.shape, dtype=dtype)
    diff[result.mask & ~result.added] = KEPT
    diff[result.added] = ADDED
    diff[result.removed] = REMOVED
    return diff


@dataclass(frozen=True)
class LabelChange:
    """The voxels an accept changes: at ``indices``, from ``old`` to ``value``.

    ``value`` is one label id (a 2D accept) or one value per voxel (a 3D accept); it is
    what the view writes (napari's ``Labels.data_setitem(indices, value)``, one undo step).
    """

    label: int
    indices: tuple[np.ndarray, ...]
    old: np.ndarray
    value: int | np.ndarray

    @property
    def count(self) -> int:
        """Voxels changed."""
        return int(self.old.size)

    @property
    def new(self) -> np.ndarray:
        """The new value of each changed voxel."""
        return np.broadcast_to(np.asarray(self.value, dtype=self.old.dtype), self.old.shape)

    def apply(self, labels: np.ndarray) -> None:
        """Write the change into ``labels`` (plain arrays; views use the layer's path)."""
        labels[self.indices] = self.value

    def revert(self, labels: np.ndarray) -> None:
        """Undo :meth:`apply` on ``labels``."""
        labels[self.indices] = self.old


def preview_change(labels: np.ndarray, ref: SliceRef, mask: np.ndarray, label: int, *,
                   overwrite: bool) -> LabelChange:
    """The change that writes a 2D preview ``mask`` on slice ``ref`` as object ``label``.

    Raises
    ------
    ValueError
        The label id is not positive or does not fit the labels' type, or the mask does
        not fit the slice.
    """
    edit = merge_mask(labels, mask, ref.axis, ref.index, label, overwrite=overwrite)
    return LabelChange(edit.value, edit.indices, np.asarray(labels[edit.indices]), edit.value)


def pending_change(labels: np.ndarray, pending: Pending3D, *, overwrite: bool) -> LabelChange:
    """The change that writes a pending 3D result into ``labels`` (one undo step).

    A refine replaces the whole object; slices replace the object on those slices only.
    """
    label = pending.label
    if isinstance(pending, PendingRefine):
        edit = replace_object(labels, pending.result.mask, label, overwrite=overwrite)
    else:
        new = labels == label
        region = np.zeros(labels.shape, dtype=bool)
        for index, mask in pending.masks.items():
            key: list[Any] = [slice(None)] * labels.ndim
            key[pending.axis] = index
            new[tuple(key)] = mask
            region[tuple(key)] = True
        edit = replace_object(labels, new, label, region=region, overwrite=overwrite)
    return LabelChange(label, edit.indices, np.asarray(labels[edit.indices]), edit.values)


def anchor_masks(labels: np.ndarray, indices: set[int] | frozenset[int], label: int,
                 ref: SliceRef) -> dict[int, np.ndarray]:
    """Masks of ``label`` on its anchor slices along ``ref.axis`` (the displayed slice is
    one when the object is on it); slices where the object is empty are left out."""
    indices = set(indices)
    if (np.take(labels, ref.index, axis=ref.axis) == label).any():
        indices.add(ref.index)
    masks = {i: np.take(labels, i, axis=ref.axis) == label for i in sorted(indices)}
    return {i: m for i, m in masks.items() if m.any()}


def label_counts(data: np.ndarray) -> dict[int, int]:
    """Voxels per non-zero label id."""
    flat = np.asarray(data).ravel()
    if flat.dtype.kind == "u" and flat.dtype.itemsize <= 2:
        counts = np.bincount(flat)
        ids = np.nonzero(counts)[0]
        return {int(i): int(counts[i]) for i in ids if i}
    ids, counts = np.unique(flat, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i}


def label_name(metadata: Mapping | None, label_id: int) -> str:
    """The name of ``label_id`` in ``metadata["label_names"]`` (int or str keys)."""
    names = (metadata or {}).get("label_names") or {}
    return str(names.get(label_id, names.get(str(label_id), "")))


def next_label(labels: np.ndarray | None, current: int) -> int:
    """The next free label id: above every label in use and at least ``current``."""
    used = int(labels.max()) if labels is not None and labels.size else 0
    return max(used, current - 1) + 1


def mapping_for_limits(low: float, high: float) -> IntensityMapping:
    """The mapping of a display range, named after a CT preset if it equals one."""
    low, high = float(low), float(high)
    name = "display"
    for preset in CT_WINDOWS:
        window = ct_window(preset)
        if np.isclose(window.low, low) and np.isclose(window.high, high):
            name = preset
            break
    if high <= low:
        high = low + 1.0
    return IntensityMapping(name, low, high)


def displayed_slice(ndisplay: int, displayed: Sequence[int], point: Sequence[float],
                    shape: Sequence[int]) -> SliceRef | None:
    """The slice a 2D view of a 3D volume shows.

    Parameters
    ----------
    ndisplay, displayed
        The number of displayed dimensions and which array axes they are.
    point
        The view's position in the volume's array (data) coordinates.
    shape
        The volume's shape.
    """
    if ndisplay != 2:
        return None
    sliced = [a for a in range(3) if a not in displayed]
    if len(sliced) != 1:
        return None
    axis = sliced[0]
    index = int(np.clip(np.round(point[axis]), 0, shape[axis] - 1))
    return SliceRef(axis, index)
