"""Fine-tune a model's prompt decoder on :class:`~.examples.Example` s (PyTorch, CPU).

The image encoder stays frozen (its embeddings are the examples'), and only the mask decoder
(optionally the prompt encoder too) learns, through the very module the exporter turns into
``decoder.onnx`` (:class:`napari_medsam.models.onnx_wrappers.DecoderForExport`), with the
prompts encoded exactly as the engine encodes them (:func:`~napari_medsam.engine.preprocess.
prompt_arrays`). Loss: binary cross-entropy plus Dice on the single-mask output's
low-resolution logits. Prompts are drawn as users give them: boxes around the object with
0..``box_jitter`` pixels more on each side, and single positive clicks (the innermost pixel
or any pixel of the object), so that after training a click is answered by one decoder call.

The prompt encoder's point embeddings learn too (clicks within 0.02 of boxes on another
scan of the cohort instead of 0.06-0.11: ``research/adaptation_clicks``), with AdamW's
learning rate decaying to 0 along a half cosine over about ``steps`` steps. After each epoch
the held-out examples are scored (mean Dice of a tight box and of one click at the innermost
pixel, in the decoder's low-resolution space); the best epoch is kept. Everything is seeded.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_medsam.engine.preprocess import prompt_arrays

from .examples import EmbeddingBank, Example, innermost_point, tight_box

logger = logging.getLogger(__name__)

PROMPT_KINDS = ("box", "click")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainingConfig:
    """How the decoder is trained.

    Attributes
    ----------
    prompts
        Prompt kinds drawn during training (``"box"``, ``"click"``).
    epochs
        Fixed number of epochs, or None: enough epochs for about ``steps`` training steps
        (one step per example and epoch), at least ``min_epochs`` and at most
        ``max_epochs``. With the ``"constant"`` schedule, training also stops after
        ``patience`` epochs without a better held-out score.
    steps
        The step budget that sets the number of epochs when ``epochs`` is None.
    lr, weight_decay
        AdamW's learning rate and weight decay.
    schedule
        ``"cosine"``: the learning rate decays from ``lr`` to 0 along a half cosine over
        all planned steps (every epoch runs); ``"constant"``: it stays at ``lr``.
    box_jitter
        Boxes are grown by 0..``box_jitter`` pixels on each side (of the embedded image).
    seed
        Seeds the prompt draws, the example order and torch.
    threads
        Torch CPU threads (default: torch's choice).
    train_prompt_encoder
        Also train the prompt encoder (point embeddings); the mask decoder always learns.
    """

    prompts: tuple[str, ...] = PROMPT_KINDS
    epochs: int | None = None
    steps: int = 1000
    min_epochs: int = 6
    max_epochs: int = 24
    patience: int = 2
    lr: float = 2e-4
    schedule: str = "cosine"
    weight_decay: float = 1e-2
    box_jitter: int = 3
    seed: int = 0
    threads: int | None = None
    train_prompt_encoder: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.prompts) - set(PROMPT_KINDS)
        if not self.prompts or unknown:
            raise ValueError(f"prompts must be some of {', '.join(PROMPT_KINDS)}, got "
                             f"{', '.join(self.prompts) or 'none'}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}")

    def planned_epochs(self, examples: int) -> int:
        """Epochs to run on ``examples`` training examples."""
        if self.epochs is not None:
            return self.epochs
        wanted = math.ceil(self.steps / max(1, examples))
        return max(1, min(self.max_epochs, max(self.min_epochs, wanted)))


@dataclass(frozen=True)
class EpochScore:
    """Held-out Dice after one epoch (epoch 0: the base model)."""

    epoch: int
    box: float | None
    click: float | None
    loss: float | None
    seconds: float

    @property
    def score(self) -> float:
        """What chooses the epoch: the mean of the prompt kinds that were trained."""
        values = [v for v in (self.box, self.click) if v is not None]
        return float(np.mean(values)) if values else 0.0


@dataclass
class TrainingResult:
    """What :meth:`DecoderTrainer.fit` did: every epoch's held-out score and the best."""

    epochs: list[EpochScore] = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0
    seconds: float = 0.0
    cancelled: bool = False

    @property
    def base(self) -> EpochScore:
        return self.epochs[0]

    @property
    def best(self) -> EpochScore:
        return self.epochs[self.best_epoch]

    @property
    def improved(self) -> bool:
        """Whether an epoch beat the base model on the held-out examples."""
        return self.best_epoch > 0 and self.best.score > self.base.score


def draw_prompt(example: Example, kind: str, rng: np.random.Generator | None,
                jitter: int, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoder prompt arrays for ``example``: a box or one positive click.

    With ``rng`` None the prompt is the evaluation one: the tight box, or the innermost pixel.
    """
    mask = example.mask
    if kind == "box":
        x0, y0, x1, y1 = tight_box(mask)
        if rng is not None and jitter > 0:
            grow = rng.integers(0, jitter + 1, size=4)
            rows, cols = mask.shape
            x0, y0 = max(0, x0 - int(grow[0])), max(0, y0 - int(grow[1]))
            x1, y1 = min(cols - 1, x1 + int(grow[2])), min(rows - 1, y1 + int(grow[3]))
        return prompt_arrays((x0, y0, x1, y1), None, example.size, input_size)
    if rng is None or rng.random() < 0.5:
        x, y = innermost_point(mask)
    else:
        ys, xs = np.nonzero(mask)
        pick = int(rng.integers(0, len(xs)))
        x, y = int(xs[pick]), int(ys[pick])
    return prompt_arrays(None, [(x, y, 1)], example.size, input_size)


def _dice(logits, target) -> float:
    predicted = logits > 0
    truth = target > 0.5
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


class DecoderTrainer:
    """Trains a copy of ``decoder`` (a :class:`DecoderForExport`) on examples.

    Parameters
    ----------
    decoder
        The base model's prompt decoder module (left untouched; a copy learns).
    bank
        The examples' embeddings.
    input_size
        The model's input side (prompt coordinates are in its pixels).
    config
        Prompts, epochs, learning rate, seed.
    """

    def __init__(self, decoder, bank: EmbeddingBank, input_size: int,
                 config: TrainingConfig | None = None) -> None:
        import torch

        self.config = config or TrainingConfig()
        self.bank = bank
        self.input_size = int(input_size)
        torch.manual_seed(self.config.seed)
        if self.config.threads:
            torch.set_num_threads(int(self.config.threads))
        self.module = copy.deepcopy(decoder).float()
        for param in self.module.parameters():
            param.requires_grad_(False)
        trainable = list(self.module.mask_decoder.parameters())
        if self.config.train_prompt_encoder:
            trainable += list(self.module.prompt_encoder.parameters())
        for param in trainable:
            param.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(trainable, lr=self.config.lr,
                                           weight_decay=self.config.weight_decay, fused=True)
        self._image_pe = self.module.dense_pe()
        self._torch = torch

    # -- one example ---------------------------------------------------------------------
    def _forward(self, example: Example, coords: np.ndarray, labels: np.ndarray):
        """The single-mask output's low-resolution logits [1, 4E, 4E] (see
        :meth:`DecoderForExport.first_mask`)."""
        torch = self._torch
        features = torch.from_numpy(self.bank.get(example.key)).to(
            torch.float32, memory_format=torch.channels_last)
        return self.module.first_mask(features, torch.from_numpy(coords),
                                      torch.from_numpy(labels), self._image_pe)

    def _loss(self, logits, target):
        torch = self._torch
        target = torch.from_numpy(target)[None]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        return bce + dice

    # -- scoring -------------------------------------------------------------------------
    def score(self, examples: Sequence[Example], kind: str) -> float | None:
        """Mean low-resolution Dice of the evaluation prompt of ``kind`` (None: no examples)."""
        if not examples:
            return None
        torch = self._torch
        self.module.eval()
        scores = []
        with torch.inference_mode():
            for example in examples:
                coords, labels = draw_prompt(example, kind, None, 0, self.input_size)
                logits = self._forward(example, coords, labels)[0].numpy()
                scores.append(_dice(logits, example.target))
        return float(np.mean(scores))

    def predict_mask(self, example: Example, kind: str) -> np.ndarray:
        """The mask of the evaluation prompt of ``kind`` at the example's image size (what
        the exported decoder gives on the whole image)."""
        from napari_medsam.engine.preprocess import postprocess_logits, resized_shape

        torch = self._torch
        self.module.eval()
        coords, labels = draw_prompt(example, kind, None, 0, self.input_size)
        with torch.inference_mode():
            low = self._forward(example, coords, labels)[0].numpy()
        resized = resized_shape(*example.size, self.input_size)
        return postprocess_logits(low, resized, example.size, self.input_size) > 0

    def _epoch_score(self, epoch: int, heldout: Sequence[Example], loss: float | None,
                     seconds: float) -> EpochScore:
        kinds = self.config.prompts
        return EpochScore(epoch, self.score(heldout, "box") if "box" in kinds else None,
                          self.score(heldout, "click") if "click" in kinds else None,
                          loss, seconds)

    # -- the loop ------------------------------------------------------------------------
    def _schedule(self, total: int):
        """The learning rate per step: a half cosine from ``lr`` to 0 over ``total`` steps,
        or constant."""
        cosine = self.config.schedule == "cosine"

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)) if cosine else 1.0

        return self._torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def fit(self, train: Sequence[Example], heldout: Sequence[Example], *,
            progress: Callable[[int, int, int, float | None], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> TrainingResult:
        """Train; keep the weights of the best held-out epoch in :attr:`module`.

        Parameters
        ----------
        train, heldout
            Examples to learn from, and to choose the epoch with.
        progress
            Called after every step with (epoch, step, steps per epoch, seconds left or
            None).
        cancel
            Polled between steps; training then ends with the best epoch so far.
        """
        if not train:
            raise ValueError("no training examples")
        config = self.config
        rng = np.random.default_rng(config.seed)
        result = TrainingResult()
        start = time.perf_counter()
        result.epochs.append(self._epoch_score(0, heldout, None, 0.0))
        best_state = copy.deepcopy(self.module.state_dict())
        planned = config.planned_epochs(len(train))
        schedule = self._schedule(planned * len(train))
        for epoch in range(1, planned + 1):
            began = time.perf_counter()
            self.module.train()
            losses = []
            for step, i in enumerate(rng.permutation(len(train)), start=1):
                if cancel is not None and cancel():
                    result.cancelled = True
                    break
                example = train[int(i)]
                kind = config.prompts[int(rng.integers(0, len(config.prompts)))]
                coords, labels = draw_prompt(example, kind, rng, config.box_jitter,
                                             self.input_size)
                loss = self._loss(self._forward(example, coords, labels), example.target)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                schedule.step()
                losses.append(loss.item())
                result.steps += 1
                if progress is not None:
                    rate = result.steps / max(time.perf_counter() - start, 1e-6)
                    left = (planned - epoch) * len(train) + len(train) - step
                    progress(epoch, step, len(train), left / rate)
            if result.cancelled:
                break
            scored = self._epoch_score(epoch, heldout, float(np.mean(losses)),
                                       time.perf_counter() - began)
            result.epochs.append(scored)
            logger.info("adaptation epoch %d: loss %.4f, held-out box %s, click %s", epoch,
                        scored.loss, scored.box, scored.click)
            if not heldout or scored.score > result.best.score:  # nothing held out: the last
                result.best_epoch = epoch
                best_state = copy.deepcopy(self.module.state_dict())
            elif (config.epochs is None and config.schedule == "constant"
                  and epoch - result.best_epoch >= config.patience):
                break
        self.module.load_state_dict(best_state)
        result.seconds = time.perf_counter() - start
        return result
