"""Zoomed ROI inference and intensity rules (issue 8): 3D Dice per label, zoom off vs on.

Runs :func:`napari_medsam.evaluation.evaluate` (the code behind ``napari-medsam eval``) on the
labelled cases of ``../shared/data`` with a chosen :class:`study_policy.StudyRoiPolicy` (the
product's rule and the variants the study compared), so that rules can be compared without
re-embedding: every encoder input (whole
slices and crops) is cached on disk by the digest of the uint8 image the encoder sees
(float16, exactly what the session's memory cache keeps, so the Dice values equal those of
``napari-medsam eval``).

Examples::

    python research/zoom_roi/roi_eval.py --mode box --zoom off --json /tmp/roi/box_off.json
    python research/zoom_roi/roi_eval.py --mode box --zoom auto --json /tmp/roi/box_on.json
    python research/zoom_roi/roi_eval.py --cases mr --mode box --combine mean --weak-logit -3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_policy import StudyRoiPolicy, install  # noqa: E402

from napari_medsam import evaluation as ev  # noqa: E402
from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.engine.protocol import Embedding  # noqa: E402
from napari_medsam.io import read_volume  # noqa: E402
from napari_medsam.io.intensity import auto_mapping  # noqa: E402
from napari_medsam.segmentation import SegmentationSession  # noqa: E402

logger = logging.getLogger("roi_eval")

DATA = ROOT.parent / "shared" / "data"
#: name -> (image, reference, modality group)
CASES: dict[str, tuple[str, str, str]] = {
    "totalseg_mr_abdomen_sm": ("totalseg_mr_abdomen_sm/image.nii.gz",
                               "totalseg_mr_abdomen_sm/label.nii.gz", "mr"),
    "hippocampus_003": ("msd_hippocampus_mr/hippocampus_003_image.nii.gz",
                        "msd_hippocampus_mr/hippocampus_003_label.nii.gz", "mr"),
    "hippocampus_004": ("msd_hippocampus_mr/hippocampus_004_image.nii.gz",
                        "msd_hippocampus_mr/hippocampus_004_label.nii.gz", "mr"),
    "pyradiomics_brain1_mr": ("pyradiomics_brain1_mr/image.nrrd",
                              "pyradiomics_brain1_mr/label.nrrd", "mr"),
    "dcmqi_ct_3slice": ("dcmqi_ct_3slice/dicom", "dcmqi_ct_3slice/label_liver_spine.nrrd", "ct"),
    "dcmqi_ct_3slice_heart": ("dcmqi_ct_3slice/dicom", "dcmqi_ct_3slice/label_heart.nrrd",
                              "ct"),
    "totalseg_ct_dicom": ("totalseg_ct_dicom/dicom", "totalseg_ct_dicom/label.nii.gz", "ct"),
    "totalseg_ct_abdomen_sm": ("totalseg_ct_abdomen_sm/image.nii.gz",
                               "totalseg_ct_abdomen_sm/label.nii.gz", "ct"),
    "totalseg_ct_abdomen_pelvis": ("totalseg_ct_abdomen_pelvis/image.nii.gz",
                                   "totalseg_ct_abdomen_pelvis/label.nii.gz", "ct"),
}


class DiskCachedModel:
    """A prompt model whose ``embed`` results are kept on disk, keyed by the input's digest."""

    def __init__(self, model, folder: Path) -> None:
        self._model = model
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.encoder_runs = 0
        self.encoder_seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def digest(self, image2d: np.ndarray) -> str:
        image = np.ascontiguousarray(image2d)
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self._model.name}|{image.dtype.str}|{image.shape}|".encode())
        h.update(memoryview(image.reshape(-1).view(np.uint8)))
        return h.hexdigest()

    def path(self, image2d: np.ndarray) -> Path:
        key = self.digest(image2d)
        return self.folder / key[:2] / f"{key}.npy"

    def store(self, image2d: np.ndarray, features: np.ndarray) -> None:
        path = self.path(image2d)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, np.asarray(features, dtype=np.float16))
        tmp.replace(path)

    def embed(self, image2d: np.ndarray) -> Embedding:
        path = self.path(image2d)
        tensor, resized = self._model.preprocess(image2d)
        if path.is_file():
            features = np.load(path)
            return Embedding(features=features, original_size=tuple(np.shape(image2d)),
                             resized_size=tuple(resized), input_size=self._model.spec.input_size,
                             model=self._model.name)
        t0 = time.perf_counter()
        embedding = self._model.embed_preprocessed(tensor, np.shape(image2d), resized)
        self.encoder_seconds += time.perf_counter() - t0
        self.encoder_runs += 1
        self.store(image2d, embedding.features)
        return replace(embedding, features=embedding.features.astype(np.float16))


def seed_from_npz(model: DiskCachedModel, session: SegmentationSession, npz: Path) -> int:
    """Put the axial embeddings of an earlier study (``/tmp/click_emb_*.npz``) in the cache."""
    data = np.load(npz)
    features = data["features"]
    if features.shape[0] != session.volume.shape[0]:
        return 0
    n = 0
    for z in range(features.shape[0]):
        image = session.mapping.apply(session.volume[z])
        if not model.path(image).is_file():
            model.store(image, features[z])
            n += 1
    return n


def build_policy(args: argparse.Namespace):
    fields = {}
    for name in ("context", "upsample", "combine", "intensity", "weak_logit", "clicks"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.no_weak:
        fields["weak_logit"] = None
    if args.on_ct:
        fields["on_ct_windows"] = args.on_ct
    if args.weak_everywhere:
        fields["weak_everywhere"] = True
    if args.percentiles:
        lo, hi = (float(v) for v in args.percentiles.split(","))
        fields["percentiles"] = (lo, hi)
    return StudyRoiPolicy(**fields)


def run_case(model, name: str, args, policy) -> dict:
    image_rel, ref_rel, group = CASES[name]
    image = read_volume(DATA / image_rel)
    reference = read_volume(DATA / ref_rel)
    ref_array, _ = ev.align_reference(image, reference)
    names = {**image.label_names, **ev.reference_label_names(reference, DATA / ref_rel)}
    mapping = auto_mapping(image.array, image.modality)
    session = SegmentationSession(model, image.array, mapping, zoom=args.zoom,
                                  roi_policy=policy, cache_bytes=8 * 1024**3)
    stem = Path(image_rel).name.split(".")[0]
    npz = Path(f"/tmp/click_emb_{Path(image_rel).parts[0]}_{stem}.npz")
    if npz.is_file() and args.axis == 0:
        seeded = seed_from_npz(model, session, npz)
        if seeded:
            logger.info("%s: seeded %d slice embeddings from %s", name, seeded, npz)
    wanted = [int(v) for v in args.labels.split(",")] if args.labels else None
    runs0, secs0 = model.encoder_runs, model.encoder_seconds
    result = ev.evaluate(session, ref_array, args.mode, labels=wanted, axis=args.axis,
                         names=names)
    out = result.to_json()
    out.update(case=name, group=group, intensity=mapping.key, zoom=args.zoom,
               roi_encoder_calls=session.roi_encoder_calls,
               new_encoder_runs=model.encoder_runs - runs0,
               new_encoder_seconds=model.encoder_seconds - secs0)
    logger.info("%s: mean Dice %.3f (%d labels), %d crop encoder calls", name,
                result.mean_dice or 0.0, len(result.labels), session.roi_encoder_calls)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="all",
                   help="comma-separated case names, or all / mr / ct")
    p.add_argument("--mode", default="box", choices=list(ev.MODES))
    p.add_argument("--zoom", default="auto", choices=["auto", "off"])
    p.add_argument("--axis", type=int, default=0)
    p.add_argument("--labels", help="comma-separated labels (default: all)")
    p.add_argument("--context", type=float)
    p.add_argument("--upsample", type=float)
    p.add_argument("--combine", choices=["iou", "mean", "roi"])
    p.add_argument("--clicks", choices=["off", "search", "box", "refit"])
    p.add_argument("--intensity", choices=["auto", "slice", "local"])
    p.add_argument("--percentiles", help="low,high for local intensity")
    p.add_argument("--weak-logit", dest="weak_logit", type=float)
    p.add_argument("--no-weak", action="store_true", help="no hysteresis threshold")
    p.add_argument("--on-ct", choices=["downsampled", "always", "never"],
                   help="where the ROI rule applies on CT windows")
    p.add_argument("--weak-everywhere", action="store_true",
                   help="hysteresis on every box, not only on boxes with a ROI")
    p.add_argument("--emb-cache", default="/tmp/roi/emb", help="disk cache of encoder outputs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the per-case results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("napari_medsam").setLevel(logging.WARNING)
    if args.cases in ("all", "mr", "ct"):
        names = [n for n, (_, _, g) in CASES.items() if args.cases in ("all", g)]
    else:
        names = args.cases.split(",")
    policy = build_policy(args)
    install()
    logger.info("zoom %s, policy %s", args.zoom, policy)
    model = DiskCachedModel(load_model("litemedsam", args.device, backend="onnxruntime"),
                            Path(args.emb_cache))
    results = []
    for name in names:
        results.append(run_case(model, name, args, policy))
        if args.json:
            Path(args.json).write_text(json.dumps({"policy": repr(policy), "zoom": args.zoom,
                                                   "mode": args.mode, "cases": results},
                                                  indent=1))
    for r in results:
        print(f"{r['case']:28s} {r['mean_dice']:.3f}  ({len(r['labels'])} labels, "
              f"{r['roi_encoder_calls']} crops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
