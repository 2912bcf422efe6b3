"""Checks of the study tool, run by hand (they were in the test suite while the study ran).

1. :class:`StagedEncoder` refuses plans that are not one ``f``/``b`` letter per stage.
2. The all-f32 chain of stages reproduces the one-piece OpenVINO f32 encoder (max |diff|
   <= 1e-4 on a real MRI slice of the agreement set), so cutting the encoder costs nothing.

    .venv/bin/python research/openvino_precision/check_staged_encoder.py

Needs the ``openvino`` extra and ``../shared/data``; exits non-zero when a check fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from precision_study import ENCODER_STAGES, StagedEncoder  # noqa: E402

from napari_medsam.bench import agreement_slices, require_data_dir  # noqa: E402


def check_bad_plans_are_refused() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for plan in ("ffff", "ffffx", "bf16"):
            try:
                StagedEncoder(Path(tmp) / "encoder.onnx", plan)
            except ValueError as err:
                assert "one of f/b per stage" in str(err), err
            else:
                raise AssertionError(f"plan {plan!r} was accepted")
    print("ok: bad plans are refused")


def check_f32_chain_is_the_whole_encoder() -> None:
    from napari_medsam.engine import load_model
    from napari_medsam.engine.model_files import ensure_model_files

    model = load_model("litemedsam", "cpu", backend="openvino", precision="f32")
    staged = StagedEncoder(ensure_model_files(model.spec)["encoder"], "f" * len(ENCODER_STAGES))
    s = agreement_slices(require_data_dir())[-4]  # an MRI slice
    tensor, resized = model.preprocess(s.image)
    whole = model.embed_preprocessed(tensor, s.image.shape, resized).features
    features = staged(tensor)
    assert features.shape == whole.shape == (1, 256, 64, 64), (features.shape, whole.shape)
    diff = float(np.abs(features - whole).max())
    assert diff <= 1e-4, f"max |staged - whole| = {diff}"
    print(f"ok: the all-f32 chain matches the one-piece encoder (max |diff| {diff:.1e})")


if __name__ == "__main__":
    check_bad_plans_are_refused()
    check_f32_chain_is_the_whole_encoder()
