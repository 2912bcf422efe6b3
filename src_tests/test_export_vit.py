"""A user's own SAM/MedSAM ViT-B checkpoint goes through the same export path.

No real ViT-B checkpoint can be downloaded here, so a randomly initialised ViT-B with SAM's
parameter names stands in for one; the engine then runs it like LiteMedSAM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import load_case, tight_box

from napari_medsam.engine import load_model
from napari_medsam.models import export as export_mod
from napari_medsam.models.builders import _sam_parts
from napari_medsam.models.registry import get_spec
from napari_medsam.models.sam_vit import build_vit_encoder, init_random_

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    encoder, prompt_encoder, decoder = _sam_parts(build_vit_encoder("vit_b"), 1024)
    init_random_(encoder, seed=1)
    holder = torch.nn.Module()
    holder.image_encoder, holder.prompt_encoder, holder.mask_decoder = (encoder, prompt_encoder,
                                                                        decoder)
    path = tmp_path_factory.mktemp("vitb") / "sam_vit_b_random.pth"
    torch.save(holder.state_dict(), path)
    n_params = sum(p.numel() for p in holder.parameters())
    assert 85e6 < n_params < 100e6, n_params  # ViT-B SAM has about 94 million parameters
    return path


def test_vit_b_checkpoint_exports_and_runs(vit_checkpoint, model_cache):
    # exported as a user does it: napari-medsam export-model, in its own process
    done = subprocess.run(
        [sys.executable, "-m", "napari_medsam.cli", "export-model", "--name", "my-medsam-vitb",
         "--checkpoint", str(vit_checkpoint), "--arch", "vit_b", "--preprocess", "medsam"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "decoder parity with PyTorch" in done.stdout
    spec = get_spec("my-medsam-vitb")
    assert not spec.builtin and spec.input_size == 1024 and spec.architecture == "vit_b"
    assert (spec.directory / "model.json").is_file()
    info = json.loads((spec.directory / export_mod.EXPORT_INFO).read_text())
    assert info["max_abs_diff"] <= 1e-3  # ONNX Runtime against PyTorch, in the export

    model = load_model("my-medsam-vitb", device="cpu")
    _, reference, mapped = load_case("totalseg_ct_abdomen_pelvis")
    z = int((reference == 5).sum(axis=(1, 2)).argmax())
    embedding = model.embed(mapped[z])
    assert embedding.features.shape == (1, 256, 64, 64)
    assert embedding.resized_size == (848, 1024)
    prediction = model.predict(embedding, box=tight_box(reference[z] == 5))
    assert prediction.logits.shape == mapped[z].shape
    assert np.isfinite(prediction.logits).all()

    # the export's own parity check ran ONNX Runtime's encoder and decoder against PyTorch
    # (max_abs_diff above); a second PyTorch run here would only repeat it


def test_checkpoint_that_does_not_fit_is_refused(vit_checkpoint):
    with pytest.raises(export_mod.ExportError, match="does not fit the architecture"):
        export_mod.export_model("wrong-arch", checkpoint=vit_checkpoint,
                                architecture="litemedsam")


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(export_mod.ExportError, match="does not exist"):
        export_mod.export_model("ghost", checkpoint=tmp_path / "nope.pth", architecture="vit_b")


def test_garbage_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(export_mod.ExportError, match="cannot read checkpoint"):
        export_mod.export_model("garbage", checkpoint=bad, architecture="vit_b")
