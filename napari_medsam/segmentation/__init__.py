"""Prompts, label editing and the segmentation session (no Qt imports)."""

from .labels import LabelEdit, VolumeEdit, merge_mask, replace_object
from .session import SegmentationSession, SliceRef

__all__ = ["LabelEdit", "SegmentationSession", "SliceRef", "VolumeEdit", "merge_mask",
           "replace_object"]
