"""Prompts, label editing and the segmentation session (no Qt imports)."""

from .labels import LabelEdit, merge_mask
from .session import SegmentationSession, SliceRef

__all__ = ["LabelEdit", "SegmentationSession", "SliceRef", "merge_mask"]
