"""Training recipes for one-call clicks of an adapted decoder (issue 16), hippocampus.

Each variant adapts LiteMedSAM's decoder with the product's :func:`napari_medsam.adaptation.
adapt` (zoom auto, ONNX export, the keep rule) on hippocampus 003 and evaluates on 004, and
the reverse, with the benchmark's own evaluation (``benchmarks/adaptation_eval.py``:
:func:`napari_medsam.evaluation.evaluate`, a tight box or one click at the innermost pixel
of the largest piece per slice, 3D Dice, zoom auto). What a variant changes is patched in
from here, never in the package:

* ``click_share``: the share of training prompts that are one positive click (product: 1/2,
  one of the two kinds drawn uniformly); done by repeating ``"click"`` in
  ``TrainingConfig.prompts`` (the draw picks uniformly among its entries);
* ``inner_share``: the share of training clicks put on the innermost pixel (product 1/2; the
  others on a random pixel of the object), by replacing ``training.draw_prompt``;
* ``select``: what chooses the epoch on the held-out examples: ``"mixed"`` (product: mean of
  box and click Dice) or ``"click"`` (click Dice), by replacing ``EpochScore.score``;
* any :class:`TrainingConfig` field (``lr``, ``max_epochs``, ``patience``,
  ``train_prompt_encoder``, ``schedule``).

Variants are changes to the first product recipe (:data:`FIRST_RECIPE`: decoder only, AdamW
1e-4 constant, up to 8 epochs, patience 2), against which they were measured; ``now`` is the
product's current :class:`TrainingConfig` as it is (since 2026-12-06: the ``pe_e24_cos``
recipe with a step budget).

    NAPARI_MEDSAM_CACHE=/tmp/adapt-cache OMP_NUM_THREADS=1 python \\
        research/adaptation_clicks/click_recipes.py --variants product,c75 [--base]
    python research/adaptation_clicks/click_recipes.py --summary   # results.json + table
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import adaptation_eval as bench  # noqa: E402

from napari_medsam.adaptation import TrainingConfig, adapt, training  # noqa: E402
from napari_medsam.adaptation.examples import innermost_point  # noqa: E402
from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.onnx_model import OnnxPromptModel  # noqa: E402
from napari_medsam.engine.openvino_model import OpenVINOPromptModel  # noqa: E402
from napari_medsam.engine.preprocess import postprocess_logits, prompt_arrays  # noqa: E402
from napari_medsam.engine.protocol import Prediction  # noqa: E402
from napari_medsam.paths import model_dir  # noqa: E402

VALUES = [1, 2]

#: name -> (click share, innermost share, epoch selection, TrainingConfig fields)
#: The product's training recipe when these variants were measured (before 2026-12-06).
FIRST_RECIPE = {"lr": 1e-4, "schedule": "constant", "train_prompt_encoder": False,
                "max_epochs": 8, "patience": 2}
VARIANTS: dict[str, dict] = {
    "now": {},
    # measured while the product's step budget was 1250 (2026-12-06): that budget, 1000
    # steps (then adopted: ``now``), and 2/3 box prompts
    "now_s1250": {"steps": 1250},
    "now_s1000": {"steps": 1000},
    "now_c33": {"click_share": 1 / 3},
    "product": {},
    "c75": {"click_share": 0.75},
    "c75_e16": {"click_share": 0.75, "max_epochs": 16, "patience": 4},
    "c75_pe": {"click_share": 0.75, "train_prompt_encoder": True},
    "c75_pe_e16": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                   "patience": 4},
    "c75_pe_e16_sel": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                       "patience": 4, "select": "click"},
    "c100_pe_e16": {"click_share": 1.0, "train_prompt_encoder": True, "max_epochs": 16,
                    "patience": 4},
    "c75_pe_lr3": {"click_share": 0.75, "train_prompt_encoder": True, "lr": 3e-4},
    "c75_pe_e16_in25": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                        "patience": 4, "inner_share": 0.25},
    "pe_e16": {"train_prompt_encoder": True, "max_epochs": 16, "patience": 4},
    "c75_pe_e16_tok1": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                        "patience": 4, "click_output": 1},
    "c75_pe_e16_mm": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                      "patience": 4, "click_output": "best"},
    "c75_pe_e16_lr2": {"click_share": 0.75, "train_prompt_encoder": True, "max_epochs": 16,
                       "patience": 4, "lr": 2e-4},
    # pe_e16 003->004 chose its last epoch (16/16): does it go on improving?
    "pe_e24": {"train_prompt_encoder": True, "max_epochs": 24, "patience": 4},
    # a stable schedule: the learning rate decays to 0 along a cosine over all 24 epochs
    # (no early stop), so that the last epochs, where the held-out choice falls, move less
    "pe_e24_cos": {"train_prompt_encoder": True, "max_epochs": 24, "patience": 24,
                   "lr": 2e-4, "schedule": "cosine"},
    # the same within the product's time (8 epochs: about 2 min per 100 prompts) and at 12
    "pe_e8_cos": {"train_prompt_encoder": True, "max_epochs": 8, "patience": 8, "lr": 3e-4,
                  "schedule": "cosine"},
    "pe_e12_cos": {"train_prompt_encoder": True, "max_epochs": 12, "patience": 12,
                   "lr": 3e-4, "schedule": "cosine"},
}
RECIPE_KEYS = ("click_share", "inner_share", "select", "click_output")
PRODUCT_SCORE = training.EpochScore.score
PRODUCT_DRAW = training.draw_prompt
PRODUCT_FORWARD = training.DecoderTrainer._forward
PRODUCT_LOSS = training.DecoderTrainer._loss
PRODUCT_PREDICT = OnnxPromptModel.predict
#: Which decoder output answers a lone click (training and inference): None (product:
#: output 0, as boxes), an index 1-3 (a token of its own), or "best" (SAM's multimask rule:
#: trained on the best of outputs 1-3 with the IoU head, answered by the highest IoU).
CLICK_OUTPUT: int | str | None = None


def _prompts(click_share: float) -> tuple[str, ...]:
    """Prompt kinds whose uniform draw gives ``click_share`` clicks (quarters)."""
    share = Fraction(click_share).limit_denominator(4)  # 1/2 -> ("box", "click"), as product
    return ("box",) * (share.denominator - share.numerator) + ("click",) * share.numerator


def _draw_with(inner_share: float):
    def draw(example, kind, rng, jitter, input_size):
        if kind == "box" or rng is None:  # boxes and the evaluation click: the product's
            return PRODUCT_DRAW(example, kind, rng, jitter, input_size)
        if rng.random() < inner_share:
            x, y = innermost_point(example.mask)
        else:
            ys, xs = np.nonzero(example.mask)
            pick = int(rng.integers(0, len(xs)))
            x, y = int(xs[pick]), int(ys[pick])
        return prompt_arrays(None, [(x, y, 1)], example.size, input_size)
    return draw


def _click_score(self) -> float:
    return float(self.click if self.click is not None else PRODUCT_SCORE.fget(self))


class _Outputs:
    """Outputs 1-3 and their IoU predictions of one click (training, ``"best"``)."""

    def __init__(self, masks, iou) -> None:
        self.masks, self.iou = masks, iou


def _is_click(labels: np.ndarray) -> bool:
    return not np.isin(labels, (2, 3)).any()  # 2, 3: box corners


def _forward(self, example, coords, labels):
    """The product's forward, with a lone click answered by :data:`CLICK_OUTPUT`."""
    if CLICK_OUTPUT is None or not _is_click(labels):
        return PRODUCT_FORWARD(self, example, coords, labels)
    torch = self._torch
    features = torch.from_numpy(self.bank.get(example.key).astype(np.float32))
    side = example.target.shape[-1]
    masks, iou = self.module(features, torch.from_numpy(coords), torch.from_numpy(labels),
                             torch.zeros((1, 1, side, side), dtype=torch.float32),
                             torch.zeros(1, dtype=torch.float32))
    if CLICK_OUTPUT != "best":
        return masks[:, int(CLICK_OUTPUT)]
    if self.module.training:
        return _Outputs(masks[:, 1:], iou[:, 1:])
    return masks[:, 1 + int(iou[0, 1:].argmax())]


def _loss(self, logits, target):
    """The product's loss; for ``"best"``: the lowest of outputs 1-3 plus the IoU head's
    squared error against each output's real IoU (SAM's multimask training)."""
    if not isinstance(logits, _Outputs):
        return PRODUCT_LOSS(self, logits, target)
    torch = self._torch
    losses = torch.stack([PRODUCT_LOSS(self, logits.masks[:, k], target) for k in range(3)])
    truth = torch.from_numpy(target)[None] > 0.5
    with torch.no_grad():
        predicted = logits.masks > 0
        inter = (predicted & truth[:, None]).sum(dim=(-1, -2)).float()
        union = (predicted | truth[:, None]).sum(dim=(-1, -2)).float().clamp(min=1)
    return losses.min() + torch.nn.functional.mse_loss(logits.iou, inter / union)


def _predict(self, embedding, *, box=None, points=None, mask_input=None, output=0):
    """The engine's predict, with a lone click on a research model answered by
    :data:`CLICK_OUTPUT` (the product change such a recipe needs)."""
    if (CLICK_OUTPUT is None or box is not None or not points or mask_input is not None
            or output != 0 or not self.spec.name.startswith("research-clicks")):
        return PRODUCT_PREDICT(self, embedding, box=box, points=points,
                               mask_input=mask_input, output=output)
    coords, labels = prompt_arrays(None, points, embedding.original_size,
                                   embedding.input_size)
    low_res, iou = self.decode(embedding, coords, labels, None)
    if not _is_click(labels):  # never: no box
        output = 0
    elif CLICK_OUTPUT == "best":
        output = 1 + int(np.argmax(iou[0, 1:]))
    else:
        output = int(CLICK_OUTPUT)
    low = low_res[0, output]
    logits = postprocess_logits(low, embedding.resized_size, embedding.original_size,
                                embedding.input_size)
    return Prediction(logits=logits, mask=logits > 0, iou=float(iou[0, output]),
                      low_res_logits=low)


def configure(variant: dict, now: bool = False) -> TrainingConfig:
    """Patch the training module (and the engine's predict) for ``variant``; its
    TrainingConfig (``now``: the product's current defaults, ``variant`` on top)."""
    global CLICK_OUTPUT
    CLICK_OUTPUT = variant.get("click_output")
    training.DecoderTrainer._forward = _forward
    training.DecoderTrainer._loss = _loss
    OnnxPromptModel.predict = OpenVINOPromptModel.predict = _predict
    training.draw_prompt = _draw_with(variant.get("inner_share", 0.5))
    training.EpochScore.score = (property(_click_score) if variant.get("select") == "click"
                                 else PRODUCT_SCORE)
    fields = {k: v for k, v in variant.items() if k not in RECIPE_KEYS}
    if not now:  # the first recipe ran max_epochs epochs (patience aside), whatever the data
        fields = FIRST_RECIPE | fields
        fields["min_epochs"] = fields["max_epochs"]
    return TrainingConfig(prompts=_prompts(variant.get("click_share", 0.5)), seed=0,
                          threads=1, **fields)


def run_direction(variant_name: str, config: TrainingConfig, train: str, test: str,
                  cases: dict, base: bool) -> dict:
    """Adapt on case ``train``, evaluate on ``test`` (adapted; base too with ``base``)."""
    name = f"research-clicks-{variant_name}-{train}"
    if model_dir(name).exists():
        shutil.rmtree(model_dir(name))
    report = adapt([cases[train]], VALUES, name, config=config)
    row = {"report": report.to_json()}
    models = {"adapted": load_model(name, "cpu")} if report.saved else {}
    if base:
        models["base"] = load_model("litemedsam", "cpu")
    for key, model in models.items():
        for mode in ("box", "click"):
            began = time.perf_counter()
            scores = bench._evaluate(model, cases[test], VALUES, mode)
            row[f"{key}_{mode}"] = scores
            row[f"{key}_{mode}_mean"] = round(float(np.mean(list(scores.values()))), 4)
            row[f"{key}_{mode}_seconds"] = round(time.perf_counter() - began, 1)
    if report.saved:
        row["click_cost"] = bench._click_cost(models["adapted"], cases[test], VALUES[0])
        shutil.rmtree(model_dir(name))
    return row


def run_variant(variant_name: str, base: bool, directions: list[str]) -> None:
    """Run ``variant_name`` in ``directions`` ("003->004"...); results/<variant>.json is
    rewritten after each direction (what ran before is kept)."""
    variant = VARIANTS[variant_name]
    config = configure(variant, now=variant_name.startswith("now"))
    cases = {c: bench._pair(bench.HIPPO / f"hippocampus_{c}_image.nii.gz",
                            bench.HIPPO / f"hippocampus_{c}_label.nii.gz", VALUES)
             for c in ("003", "004")}
    path = HERE / "results" / f"{variant_name}.json"
    path.parent.mkdir(exist_ok=True)
    for direction in directions:
        train, test = direction.split("->")
        started = time.perf_counter()
        row = run_direction(variant_name, config, train, test, cases, base)
        row["seconds"] = round(time.perf_counter() - started, 1)
        out = json.loads(path.read_text()) if path.exists() else {}
        out |= {"variant": variant, "config": {k: getattr(config, k) for k in (
            "prompts", "max_epochs", "patience", "lr", "train_prompt_encoder", "seed",
            "threads")}, direction: row}
        path.write_text(json.dumps(out, indent=1))
        print(variant_name, direction, {k: v for k, v in row.items() if k.endswith("_mean")},
              "best epoch", row["report"]["best_epoch"], "train s",
              row["report"]["train_seconds"], flush=True)


def summary() -> None:
    """Merge results/*.json into results.json and print the table (markdown)."""
    merged = {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "results").glob(
        "*.json"))}
    (HERE / "results.json").write_text(json.dumps(merged, indent=1))
    print("| variant | dir | box | click | click - box | best/run epochs | train s | "
          "click ms off/auto (calls) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, out in merged.items():
        for direction in ("003->004", "004->003"):
            row = out.get(direction)
            if row is None or "adapted_box_mean" not in row:
                continue
            rep, cost = row["report"], row["click_cost"]
            box, click = row["adapted_box_mean"], row["adapted_click_mean"]
            print(f"| {name} | {direction} | {box:.3f} | {click:.3f} | {click - box:+.3f} | "
                  f"{rep['best_epoch']}/{len(rep['epochs']) - 1} | {rep['train_seconds']:.0f} "
                  f"| {cost['off']['median_ms']:.0f} ({cost['off']['decoder_calls']}) / "
                  f"{cost['auto']['median_ms']:.0f} ({cost['auto']['decoder_calls']}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="")
    parser.add_argument("--base", action="store_true", help="evaluate the base model too")
    parser.add_argument("--directions", default="003->004,004->003")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in filter(None, args.variants.split(",")):
        run_variant(name, args.base, args.directions.split(","))
    if args.summary:
        summary()


if __name__ == "__main__":
    main()
