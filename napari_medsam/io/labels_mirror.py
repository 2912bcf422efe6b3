"""Label maps row by row: :class:`LabelsMirror` and the chunked helpers of crash recovery.

Rows are slices along the first axis (axial slices of a (z, y, x) map). Every helper here
works a few rows at a time (:data:`CHUNK_ROWS` per numpy call), so that a worker thread never
holds the GIL long while the UI thread edits the labels.

:class:`LabelsMirror` keeps a private copy of a label map that is refreshed by copying only
the rows that changed, so the caller can take a consistent snapshot cheaply on the thread
that edits the labels and compress it elsewhere (:mod:`napari_medsam.io.recovery`).
:func:`count_objects` and :func:`same_arrays` count and compare the label maps that
:class:`~napari_medsam.io.recovery.RecoveryStore` writes.

No napari or Qt imports here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["CHUNK_ROWS", "LabelsMirror", "count_objects", "row_chunks", "same_arrays"]

#: Rows per numpy call: short calls, so a worker never holds the GIL long.
CHUNK_ROWS = 16


def row_chunks(n_rows: int, step: int = CHUNK_ROWS) -> Iterator[slice]:
    """Slices of ``step`` rows (the last one shorter) covering ``range(n_rows)``."""
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def count_objects(labels: np.ndarray) -> tuple[int, int]:
    """(distinct non-zero labels, non-zero voxels), a few rows at a time."""
    arr = np.asarray(labels)
    if arr.ndim == 0 or arr.size == 0:
        return 0, 0
    ids: set[int] = set()
    voxels = 0
    for rows in row_chunks(arr.shape[0]):
        part = arr[rows]
        labelled = part[part != 0]  # label maps are mostly background
        voxels += labelled.size
        if labelled.size:
            ids.update(np.unique(labelled).tolist())
    return len(ids), voxels


def same_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    """Exact equality of two label maps, a few rows at a time."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.ndim == 0:
        return bool(a == b)
    return all(np.array_equal(a[rows], b[rows]) for rows in row_chunks(a.shape[0]))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1D bool array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


class LabelsMirror:
    """A private copy of a label map, refreshed by copying only the rows that changed.

    Rows are slices along the first axis (axial slices of a (z, y, x) map). The owner marks
    rows changed by edits (:meth:`mark_rows`), a replaced array (:meth:`mark_all`) or a
    change it cannot locate, such as an undo (:meth:`mark_unknown`: every row edited since
    the mirror was made, or holding labels then, is compared and copied if it differs).
    :meth:`refresh` then makes :attr:`base` equal to the labels.

    The copy itself (:meth:`copy_of`) and the search for rows that differ
    (:meth:`differing_rows`) only read, so they may run on another thread while the owner
    edits the labels, as long as every row edited meanwhile gets marked: :meth:`refresh`
    (on the owner's thread, with nobody reading :attr:`base`) then copies those rows.

    Parameters
    ----------
    shape, dtype
        Of the label map.
    """

    def __init__(self, shape: Sequence[int], dtype: Any):
        self.shape = tuple(int(s) for s in shape)
        if not self.shape:
            raise ValueError("cannot mirror a 0-dimensional array")
        self.dtype = np.dtype(dtype)
        self.base: np.ndarray | None = None
        self._pending = np.zeros(self.shape[0], dtype=bool)
        self._touched = np.zeros(self.shape[0], dtype=bool)
        self._all = False
        self._unknown = False

    @classmethod
    def of(cls, data: np.ndarray) -> LabelsMirror:
        """A mirror of ``data``, made at once on this thread."""
        mirror = cls(data.shape, data.dtype)
        mirror.set_base(*cls.copy_of(data))
        return mirror

    @staticmethod
    def copy_of(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(copy of ``data``, which rows hold labels): a lazily allocated zero array for an
        all-zero map, so the copy costs memory only for rows that get labels later."""
        arr = np.asarray(data)
        n = arr.shape[0]
        if not arr.any():
            return np.zeros(arr.shape, dtype=arr.dtype), np.zeros(n, dtype=bool)
        base = np.array(arr, copy=True, order="C")
        return base, base.reshape(n, -1).any(axis=1)

    def set_base(self, base: np.ndarray, rows_with_labels: np.ndarray) -> None:
        """Adopt a copy made by :meth:`copy_of` (rows holding labels may be undone)."""
        if tuple(base.shape) != self.shape or base.dtype != self.dtype:
            raise ValueError(f"base {base.dtype} {base.shape} is not {self.dtype} {self.shape}")
        self.base = base
        self._touched |= np.asarray(rows_with_labels, dtype=bool)

    @property
    def ready(self) -> bool:
        """The copy exists."""
        return self.base is not None

    @property
    def stale(self) -> bool:
        """Whether rows were marked since the last :meth:`refresh`."""
        return bool(self._all or self._unknown or self._pending.any())

    def mark_rows(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` changed (clipped to the array)."""
        n = len(self._pending)
        start, stop = max(0, int(start)), min(n, int(stop))
        if start < stop:
            self._pending[start:stop] = True
            self._touched[start:stop] = True

    def mark_all(self) -> None:
        """The whole array may have changed (e.g. it was replaced)."""
        self._all = True

    def mark_unknown(self) -> None:
        """Something may have changed rows edited before (an undo or redo)."""
        self._unknown = True

    def mark_row_mask(self, rows: np.ndarray) -> None:
        """The rows where ``rows`` (one bool per row) is True changed."""
        for start, stop in _runs(np.asarray(rows, dtype=bool)):
            self.mark_rows(start, stop)

    def take_unknown(self) -> np.ndarray | None:
        """The rows an unknown change may have touched (and clears the mark), or None."""
        if not self._unknown:
            return None
        self._unknown = False
        return self._touched & ~self._pending

    def differing_rows(self, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Which of ``rows`` differ between ``data`` and :attr:`base` (read-only)."""
        base = self.base
        found = np.zeros(len(rows), dtype=bool)
        if base is None or tuple(data.shape) != self.shape:
            found[rows] = True
            return found
        for start, stop in _runs(rows):
            for chunk in row_chunks(stop - start):
                chunk = slice(start + chunk.start, start + chunk.stop)
                part = np.asarray(data[chunk])
                if not np.array_equal(base[chunk], part):
                    found[chunk] = (base[chunk] != part).reshape(len(part), -1).any(axis=1)
        return found

    def rebase(self, data: np.ndarray) -> None:
        """Start again from a new copy of ``data`` made on this thread (e.g. while another
        thread still reads the old :attr:`base`); rows known to be edited stay known."""
        base, rows = self.copy_of(data)
        self.base = None
        self.shape, self.dtype = tuple(base.shape), base.dtype
        if len(self._touched) != self.shape[0]:
            self._touched = np.ones(self.shape[0], dtype=bool)
        self._pending = np.zeros(self.shape[0], dtype=bool)
        self._all = self._unknown = False
        self.set_base(base, rows)

    def copy_pending(self, data: np.ndarray) -> int:
        """Copy the marked rows into :attr:`base` (nobody else may read it meanwhile);
        returns how many rows were copied. Requires :attr:`ready`."""
        base = self.base
        if base is None:
            raise ValueError("the mirror has no copy yet")
        if tuple(data.shape) != self.shape or np.dtype(data.dtype) != self.dtype:
            self.rebase(data)
            return self.shape[0]
        if self._all:
            base[...] = data
            self._touched[:] = True
            self._pending[:] = False
            self._all = False
            return self.shape[0]
        copied = 0
        for start, stop in _runs(self._pending):
            base[start:stop] = data[start:stop]
            copied += stop - start
        self._pending[:] = False
        return copied

    def refresh(self, data: np.ndarray) -> tuple[bool, int]:
        """Make :attr:`base` equal to ``data``, all on this thread.

        Returns
        -------
        (bool, int)
            Whether rows checked for an unknown change (or a new shape or dtype) differed,
            and how many rows were copied.
        """
        if tuple(data.shape) != self.shape or np.dtype(data.dtype) != self.dtype:
            self.rebase(data)
            return True, self.shape[0]
        differed = False
        rows = self.take_unknown()
        if rows is not None and not self._all:
            found = self.differing_rows(data, rows)
            differed = bool(found.any())
            self._pending |= found
        return differed, self.copy_pending(data)
