"""Within-scan adaptation, second round: today's recipe, and the adapted decoder used only
between the accepted slices (issue 16, item 5).

The first round (``propagation_adapted.py``, README) found that a decoder trained on two or
three accepted slices segments a held-out slice between them much better from a box, yet
propagates worse beyond them. This script separates the two: the five MRI objects, three
accepted slices (the largest, and the slices at 1/4 and 3/4 of the extent: the reference
masks, as a user would accept them), the product's propagation (zoom auto), and

* ``base``: LiteMedSAM everywhere;
* ``adapted``: the decoder trained on the three slices with the product's recipe
  (:class:`~napari_medsam.adaptation.training.TrainingConfig` defaults: boxes and clicks,
  prompt encoder, cosine), used everywhere;
* ``inside``: the adapted decoder between the outermost accepted slices, LiteMedSAM beyond
  them (an adapted decoder kept to the slices it learned from, as cohort models are kept to
  their domain).

3D Dice overall, between the outermost anchors and beyond them; the adaptation's time.

    NAPARI_MEDSAM_CACHE=/tmp/adapt-cache python \\
        research/adaptation_within_scan/between_anchors.py \\
        --json research/adaptation_within_scan/results_between.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src_tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from helpers import case_dir, dice  # noqa: E402
from propagation_adapted import OBJECTS, anchor_slices  # noqa: E402

from napari_medsam.adaptation.adapted_model import export_checked, load_decoder  # noqa: E402
from napari_medsam.adaptation.examples import EmbeddingBank, collect_examples  # noqa: E402
from napari_medsam.adaptation.training import DecoderTrainer, TrainingConfig  # noqa: E402
from napari_medsam.adaptation.within_scan import adapt_to_slices  # noqa: E402
from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession  # noqa: E402
from napari_medsam.segmentation.propagation import propagate_volume  # noqa: E402


def adapted_decoder(session, anchors: dict, folder: Path, config: TrainingConfig,
                    held: int | None = None):
    """Train on the anchors and export; (path, stats). Nothing held out: the last epoch;
    ``held``: that anchor chooses the epoch, and stats say whether it beat the base."""
    labels = np.zeros(session.volume.shape, dtype=np.uint8)
    for index, mask in anchors.items():
        labels[index] = mask
    bank = EmbeddingBank()
    try:
        examples = collect_examples(session, labels, [1], 0, bank, axis=0, min_pixels=1)
        image_encoder, decoder = load_decoder(session.model.spec)
        trainer = DecoderTrainer(decoder, bank, session.model.spec.input_size, config)
        train = [e for e in examples if e.index != held]
        heldout = [e for e in examples if e.index == held]
        result = trainer.fit(train, heldout)
        trainer.module.eval()
        path = folder / "decoder.onnx"
        export_checked(image_encoder, trainer.module, session.model.spec, path)
    finally:
        bank.close()
    stats = {"examples": len(examples), "epochs": len(result.epochs) - 1,
             "train_seconds": round(result.seconds, 1)}
    if heldout:
        stats.update(improved=result.improved, held=held, best_epoch=result.best_epoch,
                     heldout_base=round(result.base.score, 4),
                     heldout_best=round(result.best.score, 4))
    return path, stats


def split_dice(volume: np.ndarray, obj: np.ndarray, low: int, high: int) -> dict:
    inside = np.zeros(obj.shape[0], dtype=bool)
    inside[low:high + 1] = True
    return {"all": round(dice(volume, obj), 4),
            "between": round(dice(volume[inside], obj[inside]), 4),
            "beyond": round(dice(volume[~inside], obj[~inside]), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=3)
    parser.add_argument("--prompts", default="box,click")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--check", action="store_true",
                        help="also train with the middle anchor held out; 'checked' uses "
                             "the adapted decoder between the anchors only if it beat the "
                             "base there")
    parser.add_argument("--product", action="store_true",
                        help="also the product's path (adapt_to_slices: >= 3 slices, the "
                             "held-out check, boxes, the decoder between the slices)")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = TrainingConfig(prompts=tuple(args.prompts.split(",")), epochs=args.epochs)
    model = load_model("litemedsam", "cpu")
    rows = []
    for case, image, label, value in OBJECTS:
        volume = read_volume(case_dir(case) / image)
        obj = read_volume(case_dir(case) / label).array == value
        session = SegmentationSession(model, volume.array,
                                      auto_mapping(volume.array, volume.modality),
                                      zoom="auto", disk_cache=True)
        picked = anchor_slices(obj, args.anchors)
        anchors = {z: obj[z] for z in picked}
        low, high = min(picked), max(picked)
        base = propagate_volume(session, 0, anchors)
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            path, stats = adapted_decoder(session, anchors, Path(tmp), config)
            stats["adapt_seconds"] = round(time.perf_counter() - started, 1)
            adapted_session = SegmentationSession(model.with_decoder(path), volume.array,
                                                  session.mapping, zoom="auto",
                                                  cache=session.cache,
                                                  data_id=session.data_id)
            adapted = propagate_volume(adapted_session, 0, anchors)
        inside = base.copy()
        inside[low:high + 1] = adapted[low:high + 1]
        row = {"object": f"{case}/{label}:{value}", "anchors": picked,
               "slices": int(obj.any(axis=(1, 2)).sum()),
               "base": split_dice(base, obj, low, high),
               "adapted": split_dice(adapted, obj, low, high),
               "inside": split_dice(inside, obj, low, high), **stats}
        if args.product:
            started = time.perf_counter()
            learned = adapt_to_slices(session, 0, anchors)
            product = propagate_volume(learned.session_for(session), 0, anchors)
            row["product"] = split_dice(product, obj, low, high)
            row["product_seconds"] = round(time.perf_counter() - started, 1)
            row["product_adapt_seconds"] = round(learned.seconds, 1)
            row["product_says"] = learned.describe()
            learned.close()
        if args.check and len(picked) >= 3:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                path, check = adapted_decoder(session, anchors, Path(tmp), config,
                                              held=picked[len(picked) // 2])
                check["check_seconds"] = round(time.perf_counter() - started, 1)
                outer_session = SegmentationSession(model.with_decoder(path), volume.array,
                                                    session.mapping, zoom="auto",
                                                    cache=session.cache,
                                                    data_id=session.data_id)
                outer = base.copy()
                if check["improved"]:
                    outer[low:high + 1] = propagate_volume(outer_session, 0,
                                                           anchors)[low:high + 1]
            row["check"] = check
            row["checked"] = row["inside"] if check["improved"] else row["base"]
            row["outer"] = split_dice(outer, obj, low, high)
        elif args.check:
            row["checked"] = row["outer"] = row["base"]
        rows.append(row)
        print(row, flush=True)
    for method in ("base", "adapted", "inside", "checked", "outer", "product"):
        if all(method in r for r in rows):
            print(f"{method}: mean 3D Dice {np.mean([r[method]['all'] for r in rows]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
