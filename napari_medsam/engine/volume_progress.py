"""Progress and outcome records of a whole-volume embedding run.

:class:`EmbedProgress` is yielded after every slice by
:meth:`~.volume_embedding.VolumeEmbedder.iter_embed`; :class:`EmbedSummary` is returned by
:meth:`~.volume_embedding.VolumeEmbedder.run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .volume_encode_plan import EncodePlan


@dataclass(frozen=True)
class EmbedProgress:
    """Where a volume embedding stands after one more slice.

    Attributes
    ----------
    index
        The slice just finished.
    done, total
        Slices ready (encoded or found on disk) and slices along the axis.
    encoded
        Encoder calls so far (slices found on disk cost none).
    from_disk
        Slices found in the disk cache.
    elapsed_s
        Seconds since the start.
    rate
        Encoded slices per second so far (0 before the first).
    eta_s
        Estimated seconds left (None until a rate is known).
    """

    index: int
    done: int
    total: int
    encoded: int
    from_disk: int
    elapsed_s: float
    rate: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    def describe(self) -> str:
        """One line for a status bar: ``"37/112 slices, 2.9 slices/s, ETA 26 s"``."""
        text = f"{self.done}/{self.total} slices"
        if self.rate > 0:
            text += f", {self.rate:.1f} slices/s"
        if self.eta_s is not None and self.done < self.total:
            text += f", ETA {self.eta_s:.0f} s"
        return text


@dataclass(frozen=True)
class EmbedSummary:
    """The outcome of :meth:`~.volume_embedding.VolumeEmbedder.run`."""

    total: int
    done: int
    encoded: int
    from_disk: int
    cancelled: bool
    wall_s: float
    plan: EncodePlan
    store_dir: Path | None
    store_bytes: int

    @property
    def slices_per_s(self) -> float:
        return self.encoded / self.wall_s if self.wall_s > 0 and self.encoded else 0.0
