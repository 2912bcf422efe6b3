"""Peak memory of an annotation session on a 512x512x300 CT with the embedding cache full.

    python benchmarks/memory_peak.py [--depth 300] [--slices all] [--budget-mib auto]
        [--backend auto] [--json F]

The volume is built from the real 512x512x20 CT DICOM series in ``../shared/data``
(``totalseg_ct_dicom``), its slices stacked back and forth to 300 (int16, 150 MiB), with the
reference labels resampled onto it in physical space for the boxes. Scenario, as in the
widget: load the model, open a session with the default in-memory budget
(:func:`napari_medsam.engine.backends.default_cache_bytes`), embed every slice in the
background order (middle first) into the memory cache and a temporary disk store, then
predict tight boxes around organs on 30 slices (boxes are computed before the session
starts and the label volume is dropped). Reports the process's peak resident memory
(``VmHWM``) and what it is made of: peak minus the image, minus the cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 1024**2


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def mib(kib: int) -> float:
    return round(kib / 1024, 1)


def build_volume(data: Path, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 [depth, 512, 512], labels uint8) from the real 20-slice CT series."""
    import SimpleITK as sitk

    from napari_medsam.io import read_volume

    ct = read_volume(data / "totalseg_ct_dicom" / "dicom")
    label = sitk.ReadImage(str(data / "totalseg_ct_dicom" / "label.nii.gz"))
    resampled = sitk.Resample(label, ct.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor,
                              0, label.GetPixelID())
    small = ct.array
    small_labels = sitk.GetArrayFromImage(resampled).astype(np.uint8)
    n = small.shape[0]
    cycle = list(range(n)) + list(range(n - 1, -1, -1))  # there and back: no jumps
    image = np.empty((depth, *small.shape[1:]), dtype=small.dtype)
    labels = np.empty((depth, *small.shape[1:]), dtype=np.uint8)
    for z in range(depth):
        image[z] = small[cycle[z % len(cycle)]]
        labels[z] = small_labels[cycle[z % len(cycle)]]
    return image, labels


def boxes_for(labels: np.ndarray, count: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(slice, tight box) around the largest organ of ``count`` evenly spread slices."""
    out = []
    for z in np.linspace(0, labels.shape[0] - 1, count).round().astype(int):
        counts = np.bincount(labels[z].ravel(), minlength=2)
        counts[0] = 0
        if counts.max() == 0:
            continue
        ys, xs = np.nonzero(labels[z] == counts.argmax())
        out.append((int(z), (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--slices", type=int, help="embed only this many (default: all)")
    parser.add_argument("--budget-mib", type=int, help="memory cache budget (default: auto)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--boxes", type=int, default=30)
    parser.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=None,
                        help="OpenVINO: several requests in flight (default: the engine's "
                             "choice)")
    parser.add_argument("--json")
    args = parser.parse_args()

    from napari_medsam.bench import require_data_dir
    from napari_medsam.engine import load_model
    from napari_medsam.engine.backends import default_cache_bytes
    from napari_medsam.engine.cache import EmbeddingCache
    from napari_medsam.engine.disk_cache import DiskEmbeddingStore
    from napari_medsam.engine.volume_embedding import VolumeEmbedder
    from napari_medsam.io import auto_mapping
    from napari_medsam.segmentation.session import SegmentationSession, SliceRef

    data = require_data_dir()
    stages = {"imports": status_kib("VmRSS")}
    image, labels = build_volume(data, args.depth)
    boxes = boxes_for(labels, args.boxes)  # then drop the labels: not part of the session
    del labels
    gc.collect()
    image_mib = image.nbytes / MIB
    stages["volume_built"] = status_kib("VmRSS")
    model = load_model("litemedsam", "cpu", backend=args.backend)
    stages["model_loaded"] = status_kib("VmRSS")
    budget = args.budget_mib * MIB if args.budget_mib else default_cache_bytes()
    mapping = auto_mapping(image, "CT")
    session = SegmentationSession(model, image, mapping, cache=EmbeddingCache(budget))
    count = args.slices or args.depth
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medsam-mem-") as root:
        store = DiskEmbeddingStore.for_volume(image, 0, mapping.key, model, root=Path(root))
        embedder = VolumeEmbedder(model, image, mapping, 0, store=store, cache=session.cache,
                                  cache_key=lambda i: session.cache_key(SliceRef(0, i)),
                                  parallel=args.parallel)
        for progress in embedder.iter_embed(args.depth // 2):
            if progress.done % 50 == 0:
                print(f"  {progress.describe()}  RSS {mib(status_kib('VmRSS'))} MiB",
                      flush=True)
            if progress.done >= count:
                break
        embed_s = time.perf_counter() - t0
        stages["cache_filled"] = status_kib("VmRSS")
        areas = []
        for z, box in boxes:
            mask = session.predict(SliceRef(0, z), box=box).mask
            areas.append(int(mask.sum()))
        stages["boxes_predicted"] = status_kib("VmRSS")
        disk_bytes = store.nbytes
    peak = status_kib("VmHWM")
    cache_mib = session.cache.nbytes / MIB
    result = {
        "volume": list(image.shape), "dtype": str(image.dtype), "image_mib": round(image_mib, 1),
        "device": model.device_name, "plan": embedder.plan.kind,
        "cache_budget_mib": round(budget / MIB, 1),
        "cached_slices": len(session.cache), "cache_mib": round(cache_mib, 1),
        "embedded": embedder.encoder_calls, "embed_s": round(embed_s, 1),
        "encoder_calls_during_boxes": session.encoder_calls,
        "boxes": len(areas), "empty_masks": sum(a == 0 for a in areas),
        "disk_mib": round(disk_bytes / MIB, 1),
        "rss_mib": {k: mib(v) for k, v in stages.items()},
        "peak_rss_mib": mib(peak),
        "peak_minus_image_mib": round(mib(peak) - image_mib, 1),
        "peak_minus_image_and_cache_mib": round(mib(peak) - image_mib - cache_mib, 1),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
