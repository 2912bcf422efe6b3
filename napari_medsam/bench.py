"""``napari-medsam bench``: engine vs PyTorch reference timings in one run on real slices."""

from __future__ import annotations

import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bench_report import _ratio as _ratio
from .bench_report import format_report as format_report
from .bench_report import write_json as write_json
from .bench_torch import _torch_net
from .bench_torch import _TorchReference as _TorchReference
from .segmentation.mask_metrics import dice

logger = logging.getLogger(__name__)

# (case folder, image file, label file, label ids): CT organs and an MRI tumour.
BENCH_CASES = (
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz", (5, 1, 2, 3, 6, 21)),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", (1,)),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz", (5, 1, 2, 3)),
)


# Precision agreement (mask Dice of each backend vs fp32 ONNX Runtime): several slices per
# object, CT and MRI. (case, image, label, [(label id, slice offsets from its largest slice)])
AGREEMENT_CASES = (
    ("totalseg_ct_abdomen_pelvis", "image.nii.gz", "label.nii.gz",
     ((5, (0, -6, 4)), (1, (0, 3)), (2, (0, -3)), (3, (0, 2)), (6, (0, -4)), (21, (0, 2)))),
    ("totalseg_ct_abdomen_sm", "image.nii.gz", "label.nii.gz",
     ((5, (0, 3)), (1, (0,)), (2, (0,)), (3, (0,)))),
    ("pyradiomics_brain1_mr", "image.nrrd", "label.nrrd", ((1, (0, -1, 1)),)),
    ("msd_hippocampus_mr", "hippocampus_003_image.nii.gz", "hippocampus_003_label.nii.gz",
     ((1, (0, 2)), (2, (0, -2)))),
    ("msd_hippocampus_mr", "hippocampus_004_image.nii.gz", "hippocampus_004_label.nii.gz",
     ((1, (0,)), (2, (0,)))),
    ("totalseg_mr_abdomen_sm", "image.nii.gz", "label.nii.gz",
     ((5, (0, -2)), (1, (0,)), (2, (0,)), (3, (0,)))),
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


def require_data_dir() -> Path:
    """:func:`default_data_dir`, or exit with a message naming the fix (benchmark scripts)."""
    found = default_data_dir()
    if found is None:
        raise SystemExit("no ../shared/data: set NAPARI_MEDSAM_DATA")
    return found


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


def agreement_slices(data_dir: Path) -> list[BenchSlice]:
    """Real slices with tight reference boxes for precision agreement (CT and MRI).

    Each object of :data:`AGREEMENT_CASES` contributes its largest slice and a few slices
    around it (skipped where the object is absent): 32 slices over 6 scans (2 CT, 4 MRI).
    """
    from napari_medsam.io import read_volume
    from napari_medsam.io.intensity import auto_mapping

    out: list[BenchSlice] = []
    for case, image_name, label_name, objects in AGREEMENT_CASES:
        folder = data_dir / case
        if not folder.is_dir():
            continue
        volume = read_volume(folder / image_name)
        reference = read_volume(folder / label_name).array
        mapping = auto_mapping(volume.array, volume.modality)
        for label, offsets in objects:
            areas = (reference == label).sum(axis=(1, 2))
            best = int(areas.argmax())
            for offset in offsets:
                z = best + offset
                if not 0 <= z < len(areas) or areas[z] == 0:
                    continue
                ys, xs = np.nonzero(reference[z] == label)
                out.append(BenchSlice(case, label, z, mapping.apply(volume.array[z]),
                                      (xs.min(), ys.min(), xs.max(), ys.max())))
    if not out:
        raise FileNotFoundError(f"no agreement cases found in {data_dir}")
    return out


def mask_agreement(reference, other, slices: list[BenchSlice]) -> dict:
    """Mask Dice of ``other`` against ``reference`` (two engines) on the same box prompts.

    Returns the minimum, median and mean Dice, the number of prompts below 0.99, and
    how many masks ``other`` left empty where ``reference`` did not.
    """
    scores, emptied = [], 0
    for s in slices:
        ref_mask = reference.predict(reference.embed(s.image), box=s.box).mask
        mask = other.predict(other.embed(s.image), box=s.box).mask
        scores.append(dice(ref_mask, mask))
        emptied += int(ref_mask.any() and not mask.any())
    return {"prompts": len(scores), "dice_min": round(min(scores), 4),
            "dice_median": round(float(np.median(scores)), 4),
            "dice_mean": round(float(np.mean(scores)), 4),
            "below_0_99": sum(d < 0.99 for d in scores), "emptied": emptied}


def _median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


#: Engine rows of the bench: ``onnxruntime`` (the reference fp32 engine, always first) and,
#: when OpenVINO is installed, ``openvino-f32`` and ``openvino-bf16``.
ENGINE_ROWS = ("onnxruntime", "openvino-f32", "openvino-bf16")
MASK_DICE_BAR = 0.99


def default_rows() -> list[str]:
    """The engine rows this machine can run (OpenVINO rows only when it is installed)."""
    from napari_medsam.engine.backends import openvino_available

    return [r for r in ENGINE_ROWS if r == "onnxruntime" or openvino_available()]


def load_row(row: str, model: str, device: str, threads: int | None):
    """The engine of a bench row (``"onnxruntime"`` or ``"openvino-<precision>"``)."""
    from napari_medsam.engine import load_model

    if row == "onnxruntime":
        return load_model(model, device, threads=threads, backend="onnxruntime")
    backend, _, precision = row.partition("-")
    if backend != "openvino" or precision not in ("f32", "bf16"):
        raise ValueError(f"unknown bench row {row!r}; known rows: {', '.join(ENGINE_ROWS)}")
    return load_model(model, "cpu", threads=threads, backend="openvino", precision=precision)


#: How long the child process of :func:`probe_row` may take (compiling included).
PROBE_TIMEOUT_S = 600
_PROBE_CODE = "import sys; from napari_medsam.bench import _probe_main; _probe_main(sys.argv[1:])"


def _probe_main(argv: list[str]) -> None:
    """Child process of :func:`probe_row`: load one row's engine, embed and decode once."""
    row, model, device, threads = argv[0], argv[1], argv[2], int(argv[3]) or None
    engine = load_row(row, model, device, threads)
    size = engine.spec.input_size
    ramp = np.linspace(0, 255, size * size, dtype=np.float32).reshape(size, size)
    embedding = engine.embed(ramp)
    engine.predict(embedding, box=(size * 0.25, size * 0.25, size * 0.75, size * 0.75))


def probe_row(row: str, model: str, device: str, threads: int | None,
              timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Run a bench row once in a child process first; None when it works, else why not.

    A native crash (OpenVINO's compile cache once crashed the whole process on some CPUs)
    then ends only the child, and the bench reports that row as failed instead of dying.
    The child also fills the compile cache that the timed run then reads.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE_CODE, row, model, device,
                               str(threads or 0)], capture_output=True, encoding="utf-8",
                              errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:.0f} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return f"the engine crashed ({name}) on its first slice"
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


def run_bench(data_dir: Path, *, model: str = "litemedsam", device: str = "cpu",
              count: int = 8, warmup: int = 2, repeats: int = 3, torch_reference: bool = True,
              threads: int | None = None, rows: list[str] | None = None,
              agreement: bool = False, isolate: bool = True) -> dict:
    """Time the engines' encoders and decoders, and the PyTorch reference, on the same inputs.

    Every engine (and PyTorch) is timed in the same run, in rounds (each round times every
    engine on every slice once), so that a change of machine load spreads over all of them.
    The top-level keys describe the first row (ONNX Runtime, the fp32 reference); ``rows``
    holds every engine with its speed-up over PyTorch and its mask Dice against the first
    row on the same box prompts.

    Parameters
    ----------
    rows
        Engine rows (default :func:`default_rows`); the first is the Dice reference.
    agreement
        Also measure mask Dice against the first row on :func:`agreement_slices` (32 real
        slices, CT and MRI), untimed.
    isolate
        Run each row once in a child process first (:func:`probe_row`): a row that fails or
        crashes there is reported in ``failed_rows`` and left out, the others are timed.

    Raises
    ------
    RuntimeError
        When the first (reference) row fails.
    """
    slices = bench_slices(data_dir, count)
    names = list(rows) if rows else default_rows()
    failed = _probe_rows(names, model, device, threads) if isolate else {}
    names = [n for n in names if n not in failed]
    engines = {name: load_row(name, model, device, threads) for name in names}
    base = engines[names[0]]
    prepared = [(base.preprocess(s.image), s) for s in slices]
    net = _torch_net(threads) if torch_reference else None
    enc, dec, embed_times, masks = _timings(engines, prepared, slices, net, warmup, repeats)
    table = _rows_table(engines, names, enc, dec, embed_times, masks, net is not None)
    first = table[0]
    result = {
        "model": model,
        "provider": base.providers[0],
        "providers": base.providers,
        "slices": [f"{s.case}:z{s.index}:label{s.label}" for s in slices],
        "encoder_ms": first["encoder_ms"],
        "embed_with_preprocessing_ms": first["embed_with_preprocessing_ms"],
        "decoder_ms": first["decoder_ms"],
        "threads": threads or os.cpu_count(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "rows": table,
        "failed_rows": [{"row": name, "error": reason} for name, reason in failed.items()],
    }
    if net is not None:
        result.update({"torch_encoder_ms": _median_ms(enc["torch"]),
                       "torch_decoder_ms": _median_ms(dec["torch"]),
                       "torch": net.version, "torch_threads": net.threads,
                       "encoder_speedup": first["encoder_speedup"],
                       "decoder_speedup": first["decoder_speedup"]})
    if agreement:
        many = agreement_slices(data_dir)
        for row in table[1:]:
            row["agreement"] = mask_agreement(base, engines[row["row"]], many)
    return result


def _probe_rows(names: list[str], model: str, device: str, threads: int | None
                ) -> dict[str, str]:
    """Run each row once in a child process (:func:`probe_row`); the rows that failed, with
    why. Raises RuntimeError when the first (reference) row failed."""
    failed: dict[str, str] = {}
    for name in names:
        reason = probe_row(name, model, device, threads)
        if reason is not None:
            logger.error("bench row %s failed: %s", name, reason)
            failed[name] = reason
    if names[0] in failed:
        raise RuntimeError(f"the reference row {names[0]} failed: {failed[names[0]]}")
    return failed


def _timings(engines: dict, prepared: list, slices: list, net, warmup: int, repeats: int):
    """Encoder, embed (with preprocessing) and decoder times per row (and ``"torch"``), in
    rounds over every row; and each row's masks of the slices' boxes."""
    names = list(engines)
    base = engines[names[0]]
    enc: dict[str, list[float]] = {name: [] for name in names}
    dec: dict[str, list[float]] = {name: [] for name in names}
    embed_times: dict[str, list[float]] = {name: [] for name in names}
    embeddings: dict[str, list] = {name: [] for name in names}
    for engine in engines.values():
        for (tensor, resized), s in prepared[:warmup]:
            engine.embed_preprocessed(tensor, s.image.shape, resized)
    if net is not None:
        net.warmup(prepared[:warmup])
        enc["torch"], dec["torch"] = [], []
    for _ in range(repeats):
        for name, engine in engines.items():
            for (tensor, resized), s in prepared:
                enc[name] += _time(lambda e=engine, t=tensor, r=resized, s=s:
                                   e.embed_preprocessed(t, s.image.shape, r), 1)
        if net is not None:
            for (tensor, _), _s in prepared:
                enc["torch"] += _time(lambda t=tensor: net.encode(t), 1)
    for name, engine in engines.items():
        for (tensor, resized), s in prepared:
            embed_times[name] += _time(lambda e=engine, s=s: e.embed(s.image), 1)
            embeddings[name].append(engine.embed_preprocessed(tensor, s.image.shape, resized))
            engine.predict(embeddings[name][-1], box=s.box)
    torch_embeddings = [net.encode(t) for (t, _), _s in prepared] if net is not None else []
    for _ in range(repeats * 3):
        for name, engine in engines.items():
            for emb, s in zip(embeddings[name], slices, strict=True):
                dec[name] += _time(lambda e=engine, m=emb, s=s: e.predict(m, box=s.box), 1)
        if net is not None:
            for emb, s in zip(torch_embeddings, slices, strict=True):
                dec["torch"] += _time(lambda m=emb, s=s: net.decode(m, s, base.spec.input_size),
                                      1)
    masks = {name: [engine.predict(emb, box=s.box).mask
                    for emb, s in zip(embeddings[name], slices, strict=True)]
             for name, engine in engines.items()}
    return enc, dec, embed_times, masks


def _rows_table(engines: dict, names: list[str], enc: dict, dec: dict, embed_times: dict,
                masks: dict, with_torch: bool) -> list[dict]:
    """One row per engine: medians, mask Dice against the first row, speed-ups over
    PyTorch (``with_torch``)."""
    table = []
    for name, engine in engines.items():
        row = {"row": name, "provider": engine.providers[0],
               "precision": str(engine.precision),
               "encoder_ms": _median_ms(enc[name]),
               "embed_with_preprocessing_ms": _median_ms(embed_times[name]),
               "decoder_ms": _median_ms(dec[name])}
        scores = [dice(a, b) for a, b in zip(masks[names[0]], masks[name], strict=True)]
        row["mask_dice_min_bench_slices"] = round(min(scores), 4)
        if with_torch:
            row["encoder_speedup"] = round(_median_ms(enc["torch"]) / row["encoder_ms"], 2)
            row["decoder_speedup"] = round(_median_ms(dec["torch"]) / row["decoder_ms"], 2)
        table.append(row)
    return table
