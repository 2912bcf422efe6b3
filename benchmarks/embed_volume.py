"""Embed every slice of a real scan in a background thread, as the widget would.

    python benchmarks/embed_volume.py [--case totalseg_ct_abdomen_pelvis] [--axis 0]
        [--configs openvino:async,openvino:loop,onnxruntime:loop] [--interactive] [--json F]

For each configuration (backend:plan) the embeddings go to a fresh temporary disk store;
the script reports the wall time, slices/s, the time until the start slice is ready, the
bytes on disk, and then re-opens the scan (a new store object on the same content) and
checks that no encoder call is needed. With ``--interactive`` the main thread meanwhile
decodes a box every 0.5 s on an already embedded slice and reports the decoder latency
while the background embedding runs (what a user feels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data_dir() -> Path:
    from napari_medsam.bench import require_data_dir

    return require_data_dir()


def run_config(backend: str, plan: str, volume, reference, mapping, axis: int, start: int,
               precision: str, interactive: bool) -> dict:
    from napari_medsam.engine import load_model
    from napari_medsam.engine.disk_cache import DiskEmbeddingStore
    from napari_medsam.engine.volume_embedding import VolumeEmbedder

    t0 = time.perf_counter()
    model = load_model("litemedsam", "cpu", backend=backend, precision=precision)
    load_s = time.perf_counter() - t0
    label = int(np.bincount(reference.ravel())[1:].argmax()) + 1
    z = int((reference == label).sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(reference[z] == label)
    box = (xs.min(), ys.min(), xs.max(), ys.max())
    interactive_emb = model.embed(mapping.apply(volume[z])) if interactive else None
    with tempfile.TemporaryDirectory(prefix="medsam-embed-") as root:
        t0 = time.perf_counter()
        store = DiskEmbeddingStore.for_volume(volume, axis, mapping.key, model, root=Path(root))
        hash_s = time.perf_counter() - t0
        embedder = VolumeEmbedder(model, volume, mapping, axis, store=store,
                                  parallel=(plan == "async"))
        progress = []
        done = threading.Event()
        summary = {}

        def work() -> None:
            summary["s"] = embedder.run(start, progress=progress.append)
            done.set()

        begin = time.perf_counter()
        thread = threading.Thread(target=work, name="embed-volume")
        thread.start()
        latencies = []
        while not done.is_set():
            if interactive_emb is not None:
                t = time.perf_counter()
                model.predict(interactive_emb, box=box)
                latencies.append(time.perf_counter() - t)
            done.wait(0.5)
        thread.join()
        wall = time.perf_counter() - begin
        s = summary["s"]
        first = progress[0] if progress else None
        t0 = time.perf_counter()
        reopened = DiskEmbeddingStore.for_volume(volume.copy(), axis, mapping.key, model,
                                                 root=Path(root))
        again = VolumeEmbedder(model, volume, mapping, axis, store=reopened).run(start)
        reopen_s = time.perf_counter() - t0
        result = {
            "backend": backend, "plan": s.plan.kind, "in_flight": s.plan.in_flight,
            "device": model.device_name, "precision": getattr(model, "precision", "f32"),
            "slices": s.total, "encoded": s.encoded, "wall_s": round(wall, 2),
            "slices_per_s": round(s.encoded / wall, 3),
            "start_slice_ready_s": round(first.elapsed_s, 2) if first else None,
            "model_load_s": round(load_s, 2), "hash_s": round(hash_s, 3),
            "disk_bytes": s.store_bytes,
            "reopen_encoder_calls": again.encoded, "reopen_from_disk": again.from_disk,
            "reopen_s": round(reopen_s, 2),
        }
        if latencies:
            result["decoder_ms_during_embedding_median"] = round(
                1000 * statistics.median(latencies), 1)
            result["decoder_ms_during_embedding_max"] = round(1000 * max(latencies), 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="totalseg_ct_abdomen_pelvis")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--start", type=int, help="start slice (default: the middle one)")
    parser.add_argument("--configs", default="openvino:async,openvino:loop,onnxruntime:loop",
                        help="comma-separated backend:plan (plan: async or loop)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--interactive", action="store_true",
                        help="decode a box every 0.5 s on the main thread meanwhile")
    parser.add_argument("--json")
    args = parser.parse_args()

    from napari_medsam.io import auto_mapping, read_volume

    folder = _data_dir() / args.case
    volume = read_volume(folder / "image.nii.gz")
    reference = read_volume(folder / "label.nii.gz").array
    array = np.ascontiguousarray(volume.array)
    mapping = auto_mapping(array, volume.modality)
    print(f"{args.case}: {array.shape} {array.dtype}, axis {args.axis}, {mapping.key}, "
          f"{os.cpu_count()} cores")
    results = []
    for config in args.configs.split(","):
        backend, _, plan = config.partition(":")
        result = run_config(backend, plan or "async", array, reference, mapping, args.axis,
                            args.start, args.precision, args.interactive)
        results.append(result)
        extra = ""
        if "decoder_ms_during_embedding_median" in result:
            extra = (f", decoder meanwhile {result['decoder_ms_during_embedding_median']} ms "
                     f"median / {result['decoder_ms_during_embedding_max']} ms max")
        print(f"{backend:12s} {result['plan']:15s} x{result['in_flight']} "
              f"{result['encoded']} slices in {result['wall_s']:.1f} s = "
              f"{result['slices_per_s']:.2f} slices/s; start slice after "
              f"{result['start_slice_ready_s']} s; {result['disk_bytes'] / 2**20:.0f} MiB on "
              f"disk; re-open: {result['reopen_encoder_calls']} encoder calls, "
              f"{result['reopen_s']:.2f} s{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
