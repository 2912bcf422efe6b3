"""Adaptation: the decoder learns from the user's label maps and becomes a registry model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import case_dir

from napari_medsam.adaptation import AdaptError, TrainingConfig, TrainingPair, adapt, read_pair
from napari_medsam.adaptation.cohort import WHOLE_SCAN_SPLIT, split_examples, worth_keeping
from napari_medsam.adaptation.examples import (
    EmbeddingBank,
    Example,
    collect_examples,
    low_res_target,
)
from napari_medsam.adaptation.training import EpochScore, TrainingResult
from napari_medsam.cli import main
from napari_medsam.engine import load_model
from napari_medsam.evaluation import dice, interior_click
from napari_medsam.io.intensity import auto_mapping
from napari_medsam.models.registry import get_spec, load_registry
from napari_medsam.segmentation import SegmentationSession, SliceRef

HIPPO = case_dir("msd_hippocampus_mr")
IMAGE_3, LABELS_3 = HIPPO / "hippocampus_003_image.nii.gz", HIPPO / "hippocampus_003_label.nii.gz"
IMAGE_4, LABELS_4 = HIPPO / "hippocampus_004_image.nii.gz", HIPPO / "hippocampus_004_label.nii.gz"


def _session(model, pair: TrainingPair, zoom: str = "auto") -> SegmentationSession:
    return SegmentationSession(model, pair.image.array,
                               auto_mapping(pair.image.array, pair.image.modality), zoom=zoom)


@pytest.fixture(scope="module")
def few_slices():
    """Hippocampus 003, posterior label only, on 15 of its slices (a quick training set)."""
    pair = read_pair(IMAGE_3, LABELS_3, [2])
    slices = np.flatnonzero((pair.labels == 2).any(axis=(1, 2)))[2:17]
    labels = np.zeros_like(pair.labels)
    labels[slices] = np.where(pair.labels[slices] == 2, 2, 0)
    return TrainingPair(pair.image, labels, "hippocampus_003 (15 slices)")


@pytest.fixture(scope="module")
def adapted(few_slices, litemedsam):
    report = adapt([few_slices], [2], "hippo-test", config=TrainingConfig(epochs=5, seed=0))
    return report


@pytest.mark.slow
def test_examples_are_what_inference_sees(few_slices, litemedsam):
    session = _session(litemedsam, few_slices)
    bank = EmbeddingBank()
    labels = few_slices.labels.copy()
    labels[np.flatnonzero(labels.any(axis=(1, 2)))[5:]] = 0  # five slices are enough here
    examples = collect_examples(session, labels, [2], 0, bank)
    slices = [e for e in examples if e.view == "slice"]
    rois = [e for e in examples if e.view == "roi"]
    assert len(slices) == 5 and rois  # small MR objects are also seen zoomed
    first = slices[0]
    ref = SliceRef(0, first.index)
    assert np.array_equal(bank.get(first.key), session.embedding(ref).features.astype(np.float16))
    assert np.array_equal(first.mask, labels[first.index] == 2)
    assert np.array_equal(first.target, low_res_target(first.mask, 256, 256))
    roi = rois[0]
    assert roi.size[0] == roi.size[1] > max(first.size)  # the ROI's canvas, seen at 4x
    assert roi.mask.any() and roi.target.any()  # the object is on the canvas
    bank.close()


def test_training_sees_the_exported_decoders_box_and_click_output(few_slices, litemedsam):
    """The trainer's short forward (no mask input, output 0 only) is the decoder's output 0."""
    import torch

    from napari_medsam.adaptation.adapted_model import load_decoder
    from napari_medsam.engine.preprocess import prompt_arrays

    session = _session(litemedsam, few_slices)
    z = int(np.flatnonzero(few_slices.labels.any(axis=(1, 2)))[5])
    embedding = session.embedding(SliceRef(0, z))
    _, decoder = load_decoder(litemedsam.spec)
    features = torch.from_numpy(embedding.features.astype(np.float32))
    mask = few_slices.labels[z] == 2
    ys, xs = np.nonzero(mask)
    prompts = [((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), None),
               (None, [(int(xs[0]), int(ys[0]), 1)])]
    side = litemedsam.spec.low_res_size
    with torch.no_grad():
        for box, points in prompts:
            coords, labels = (torch.from_numpy(a) for a in prompt_arrays(
                box, points, mask.shape, litemedsam.spec.input_size))
            full, _ = decoder(features, coords, labels, torch.zeros((1, 1, side, side)),
                              torch.zeros(1))
            short = decoder.first_mask(features.contiguous(memory_format=torch.channels_last),
                                       coords, labels, decoder.dense_pe())
            assert short.shape == full[:, 0].shape
            assert float((short - full[:, 0]).abs().max()) < 1e-4
            assert (short > 0).sum() > 10  # a real mask, not an empty answer


@pytest.mark.slow
def test_adapting_saves_a_model_that_beats_the_base_and_shares_its_encoder(adapted):
    assert adapted.saved, adapted.reason
    assert adapted.heldout_after["box"] > adapted.heldout_before["box"]
    assert adapted.heldout_after["click"] > adapted.heldout_before["click"] + 0.2
    spec = get_spec("hippo-test")
    assert "hippo-test" in load_registry() and spec.answers("point") and not spec.builtin
    assert spec.encoder_model == "litemedsam"
    assert spec.path("encoder") == get_spec("litemedsam").path("encoder")
    assert sorted(p.name for p in spec.directory.iterdir()) == [
        "card.json", "decoder.onnx", "export.json", "model.json"]  # the encoder is shared
    card = json.loads((spec.directory / "card.json").read_text())
    assert card["base"] == "litemedsam" and card["labels"] == {"2": "hippocampus posterior "
                                                                   "(body/tail)"}
    assert len(card["scans"][0]["blake2b"]) == 32 and "path" not in json.dumps(card)
    assert card["prompts"] == ["box", "click"] and card["seed"] == 0
    assert card["epochs"] == adapted.best_epoch >= 1
    assert card["heldout_after"]["box"] == adapted.heldout_after["box"]


@pytest.mark.slow
def test_a_click_is_one_decoder_call_and_finds_the_object_on_another_scan(adapted):
    model = load_model("hippo-test", device="cpu")
    other = read_pair(IMAGE_4, LABELS_4, [2])
    session = _session(model, other, zoom="off")
    z = int((other.labels == 2).sum(axis=(1, 2)).argmax())
    truth = other.labels[z] == 2
    ref = SliceRef(0, z)
    session.embedding(ref)
    calls = []
    real = model.predict
    model.predict = lambda *a, **k: calls.append(1) or real(*a, **k)
    mask = session.predict_prompts(ref, positives=[interior_click(truth)])
    assert calls == [1]
    assert dice(mask, truth) > 0.5
    # the embeddings belong to the shared encoder: a base-model session reuses them
    base = SegmentationSession(load_model("litemedsam", device="cpu"), other.image.array,
                               session.mapping, cache=session.cache,
                               data_id=session.data_id, zoom="off")
    assert base.is_embedded(ref)


@pytest.mark.slow
def test_the_base_decoder_answers_on_slices_unlike_those_the_model_was_checked_on(adapted):
    spec = get_spec("hippo-test")
    domain = spec.point_domain
    other = read_pair(IMAGE_4, LABELS_4, [2])
    side = max(other.image.array.shape[1:])
    assert domain is not None and domain.intensities == ("mr",)
    assert domain.min_side / 2 <= side <= domain.max_side * 2
    assert spec.answers_points_on(other.image.array.shape[1:], "mr")
    assert not spec.answers_points_on(other.image.array.shape[1:], "ct")
    # the same scan at 5x the pixels: far outside the slice sizes the clicks were checked on
    big = np.repeat(np.repeat(other.image.array, 5, axis=1), 5, axis=2)
    truth_big = np.repeat(np.repeat(other.labels == 2, 5, axis=1), 5, axis=2)
    model = load_model("hippo-test", device="cpu")
    session = SegmentationSession(model, big, auto_mapping(big, "MR"), zoom="off")
    assert session.domain_note(0) == (
        f"hippo-test was trained on {domain.describe()}; this scan's MR slices of "
        f"{max(big.shape[1:])} px are unlike them, so litemedsam's decoder answers here")
    z = int(truth_big.sum(axis=(1, 2)).argmax())
    ref = SliceRef(0, z)
    assert not session.native_clicks_on(ref)
    session.embedding(ref)
    click = interior_click(truth_big[z])
    mask = session.predict_prompts(ref, positives=[click])
    assert dice(mask, truth_big[z]) > 0.5
    # boxes and the click search there are the base model's, on the shared embeddings
    base = SegmentationSession(load_model("litemedsam", device="cpu"), big, session.mapping,
                               cache=session.cache, data_id=session.data_id, zoom="off")
    assert np.array_equal(mask, base.predict_prompts(ref, positives=[click]))
    ys, xs = np.nonzero(truth_big[z])
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    assert np.array_equal(session.predict(ref, box=box).logits, base.predict(ref, box=box).logits)
    assert base.encoder_calls == 0
    # on slices like its own the adapted decoder answers
    own = _session(model, other, zoom="off")
    own_base = SegmentationSession(base.model, other.image.array, own.mapping, cache=own.cache,
                                   data_id=own.data_id, zoom="off")
    z4 = int((other.labels == 2).sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(other.labels[z4] == 2)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    assert own.decoder_for(SliceRef(0, z4)) is model and own.domain_note(0) is None
    assert base.domain_note(0) is None  # not an adapted model
    assert not np.array_equal(own.predict(SliceRef(0, z4), box=box).logits,
                              own_base.predict(SliceRef(0, z4), box=box).logits)


def test_the_epochs_follow_a_step_budget():
    config = TrainingConfig()
    assert config.planned_epochs(52) == 20  # the hippocampus case: 1040 steps
    assert config.planned_epochs(100) == 10  # ~100 prompts: 1000 steps
    assert config.planned_epochs(30) == 24  # at most 24 epochs
    assert config.planned_epochs(300) == 6  # large sets: at least 6 epochs
    assert TrainingConfig(epochs=3).planned_epochs(1000) == 3
    with pytest.raises(ValueError, match="schedule"):
        TrainingConfig(schedule="linear")


def test_a_model_is_kept_only_where_users_gain():
    def result(before: float, after: float) -> TrainingResult:
        return TrainingResult(epochs=[EpochScore(0, before, 0.01, None, 0.0),
                                      EpochScore(1, after, 0.7, 0.3, 1.0)], best_epoch=1)

    assert worth_keeping(result(0.80, 0.85), native_clicks=False) == (True, "")
    assert worth_keeping(result(0.80, 0.795), native_clicks=True) == (True, "")
    kept, reason = worth_keeping(result(0.80, 0.795), native_clicks=False)
    assert not kept and "boxes did not improve" in reason and "click search" in reason
    kept, reason = worth_keeping(result(0.80, 0.78), native_clicks=True)
    assert not kept and "0.800 -> 0.780" in reason


@pytest.mark.slow
def test_the_adapted_model_runs_without_torch(adapted, model_cache):
    code = ("import sys, numpy as np\n"
            "from napari_medsam.engine import load_model\n"
            "m = load_model('hippo-test', device='cpu', auto_export=False)\n"
            "e = m.embed(np.tile(np.arange(128, dtype=np.uint8), (100, 1)))\n"
            "m.predict(e, points=[(60, 50, 1)])\n"
            "assert 'torch' not in sys.modules, 'torch imported at run time'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8",
                          errors="replace", env={**os.environ,
                                                 "NAPARI_MEDSAM_CACHE": str(model_cache)})
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_segment_and_models_know_the_adapted_model(adapted, tmp_path, capsys):
    assert main(["models"]) == 0
    assert "hippo-test" in capsys.readouterr().out
    other = read_pair(IMAGE_4, LABELS_4, [2])
    z = int((other.labels == 2).sum(axis=(1, 2)).argmax())
    x, y = interior_click(other.labels[z] == 2)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": 2, "slice": z, "points": [[y, x, 1]]}]}))
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(IMAGE_4), "--prompts", str(prompts), "--out", str(out),
                 "--model", "hippo-test"]) == 0
    assert "hippo-test" in capsys.readouterr().err


@pytest.mark.parametrize("pair,labels,name,message", [
    ((IMAGE_3, LABELS_4), "1", "x1", "does not fit"),
    ((IMAGE_3, LABELS_3), "1,7", "x2", "no voxels of label(s) 7"),
    ((IMAGE_3, IMAGE_3), "1", "x3", "is not a label map"),
    ((IMAGE_3, LABELS_3), "1", "litemedsam", "exists already"),
    ((IMAGE_3, LABELS_3), "1", "../x", "invalid model name"),
])
def test_adapt_refuses_bad_input_with_one_line(pair, labels, name, message, capsys):
    code = main(["adapt", "--pair", str(pair[0]), str(pair[1]), "--labels", labels,
                 "--name", name])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-medsam adapt: error: ")
    assert message in err[0]


@pytest.mark.slow
def test_too_few_slices_to_check_a_gain_are_refused_before_training(few_slices, litemedsam):
    labels = few_slices.labels.copy()
    labels[np.flatnonzero(labels.any(axis=(1, 2)))[10:]] = 0  # 10 slices: 2 held out
    pair = TrainingPair(few_slices.image, labels, "hippocampus_003 (10 slices)")
    with pytest.raises(AdaptError, match=r"too few labelled slices .*2 held out, 3 needed"):
        adapt([pair], [2], "hippo-too-few", config=TrainingConfig(epochs=1, seed=0))
    assert "hippo-too-few" not in load_registry()


def test_a_label_map_without_labels_is_refused(tmp_path):
    from napari_medsam.io import read_volume, write_labels

    image = read_volume(IMAGE_3)
    empty = tmp_path / "empty_label.nii.gz"
    write_labels(np.zeros(image.shape, np.uint8), empty, image)
    with pytest.raises(AdaptError, match="has no labelled voxels"):
        read_pair(IMAGE_3, empty, [1])


def test_a_model_with_another_decoder_shares_the_embeddings(few_slices, litemedsam):
    session = _session(litemedsam, few_slices)
    z = int(np.flatnonzero(few_slices.labels.any(axis=(1, 2)))[4])
    session.embedding(SliceRef(0, z))
    other = litemedsam.with_decoder(litemedsam.spec.path("decoder"))
    shared = SegmentationSession(other, session.volume, session.mapping,
                                 cache=session.cache, data_id=session.data_id)
    assert shared.is_embedded(SliceRef(0, z))  # no new encoder run
    box = (10, 10, 30, 30)
    assert np.array_equal(shared.predict(SliceRef(0, z), box=box).logits,
                          session.predict(SliceRef(0, z), box=box).logits)


def test_slices_are_held_out_below_four_scans_and_whole_scans_from_four():
    """What the widget's Also learn from and the docs promise about the held-out split."""
    def examples(scans: int) -> list[Example]:
        empty = np.zeros((4, 4), dtype=bool)
        return [Example(s, 1, i, view, (s, i, view), (4, 4), empty, empty.astype(np.float32))
                for s in range(scans) for i in range(10) for view in ("slice", "roi")]

    train, heldout, how = split_examples(examples(2), 2)
    assert how.startswith("held-out slices") and {e.scan for e in heldout} == {0, 1}
    held = {e.group for e in heldout}
    assert len(held) == 4 and not held & {e.group for e in train}  # both views go together
    assert WHOLE_SCAN_SPLIT == 4
    train, heldout, how = split_examples(examples(4), 4)
    assert how == "held-out scans: 4 of 4" and {e.scan for e in heldout} == {3}
    assert {e.scan for e in train} == {0, 1, 2}
