"""The prompt decoder on ONNX Runtime vs OpenVINO, beside OpenVINO's encoder (issue 4/7).

    python research/performance/decoder_runtimes.py [--rounds 10]

Embeds every third slice of the precision agreement set (real CT and MRI, tight reference
boxes) once, then times ``model.predict(embedding, box=...)`` (decoder call plus the logits
brought back to the slice) for both decoder runtimes, interleaved round by round so that
load from other jobs hits both alike. Prints the medians and the largest logit difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    from napari_medsam.bench import agreement_slices, require_data_dir
    from napari_medsam.engine.openvino_model import OpenVINOPromptModel
    from napari_medsam.models.registry import get_spec

    spec = get_spec("litemedsam")
    models = {name: OpenVINOPromptModel(spec, "cpu", decoder=name)
              for name in ("onnxruntime", "openvino")}
    slices = agreement_slices(require_data_dir())[::3]
    prompts = [(models["openvino"].embed(s.image), s.box) for s in slices]
    times: dict[str, list[float]] = {name: [] for name in models}
    worst = 0.0
    for round_ in range(args.rounds + 1):
        order = list(models) if round_ % 2 else list(reversed(models))
        for embedding, box in prompts:
            logits = {}
            for name in order:
                start = time.perf_counter()
                logits[name] = models[name].predict(embedding, box=box).logits
                if round_:  # round 0 warms up
                    times[name].append((time.perf_counter() - start) * 1000)
            worst = max(worst, float(np.abs(logits["onnxruntime"] - logits["openvino"]).max()))
    for name, values in times.items():
        print(f"decoder on {name:11s}: predict() median {np.median(values):6.1f} ms "
              f"({len(values)} calls)")
    print(f"largest logit difference: {worst:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
