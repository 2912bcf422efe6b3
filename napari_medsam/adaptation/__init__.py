"""Adaptation: fine-tune a model's prompt decoder on the user's own label maps.

- :mod:`.examples`: what the model sees (the product's embeddings, ROI views) and the targets;
- :mod:`.training`: the PyTorch training loop (decoder only, held-out epoch choice);
- :mod:`.adapted_model`: the result as a registry model (shared encoder, new ``decoder.onnx``,
  model card);
- :mod:`.cohort`: the whole path from (scan, label map) pairs, as ``napari-medsam adapt``
  runs it.

Torch is imported only when training or exporting starts, never on the annotation path: the
adapted model runs on ONNX Runtime or OpenVINO like the base one.
"""

from .adapted_model import AdaptError
from .cohort import AdaptReport, TrainingPair, adapt, read_pair
from .training import TrainingConfig

__all__ = ["AdaptError", "AdaptReport", "TrainingConfig", "TrainingPair", "adapt", "read_pair"]
