"""Mixed-precision study: OpenVINO with bf16 in some LiteMedSAM encoder stages only.

Cuts the exported encoder into its five stages (:data:`ENCODER_STAGES`), compiles each with
its own ``INFERENCE_PRECISION_HINT`` and chains them (:class:`StagedEncoder`), then measures
every plan of :data:`STUDY_PLANS` against fp32 ONNX Runtime on the bench's 32 agreement
slices (mask Dice, embedding error) and times it beside PyTorch and ONNX Runtime.
Results and conclusion: ``README.md`` beside this file. About 6 minutes on 2 cores::

    .venv/bin/python research/openvino_precision/precision_study.py [--data ../shared/data]
        [--plans fffff,ffffb] [--repeats 3] [--json out/precision_study.json]

Needs the ``openvino`` extra (and the ``export`` extra for the PyTorch column).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from napari_medsam.bench import (  # noqa: E402
    MASK_DICE_BAR,
    _dice,
    _median_ms,
    _ratio,
    _time,
    _torch_net,
    agreement_slices,
    bench_slices,
    require_data_dir,
)

#: The LiteMedSAM encoder's stages as ``(name, tensor that ends the stage)`` in the ONNX file
#: written by ``napari-medsam export-model``; the neck ends at the model output.
ENCODER_STAGES = (
    ("patch_embed+layers.0", "/image_encoder/layers.0/downsample/Transpose_output_0"),
    ("layers.1", "/image_encoder/layers.1/downsample/Transpose_1_output_0"),
    ("layers.2", "/image_encoder/layers.2/downsample/Transpose_1_output_0"),
    ("layers.3", "/image_encoder/layers.3/blocks.1/Add_1_output_0"),
    ("neck", None),
)
#: Stage plans of :func:`precision_study`: one letter per stage, ``f`` (f32) or ``b`` (bf16).
STUDY_PLANS = ("fffff", "bffff", "fbfff", "ffbff", "fffbf", "ffffb", "fffbb", "bbbbb")


def _stage_model(core, encoder: Path, start: str | None, end: str | None):
    """The encoder's sub-model from tensor ``start`` (None: the image) to ``end`` (None: out)."""
    import openvino as ov

    model = core.read_model(str(encoder))

    def output(name: str):
        for op in model.get_ordered_ops():
            for out in op.outputs():
                if name in out.get_names():
                    return out
        raise KeyError(f"{encoder}: no tensor {name!r} (not a napari-medsam LiteMedSAM export)")

    params = [model.get_parameters()[0]]
    if start is not None:
        cut = output(start)
        param = ov.opset13.parameter(cut.get_partial_shape(), cut.get_element_type())
        for target in list(cut.get_target_inputs()):
            target.replace_source_output(param.output(0))
        params = [param]
    result = model.get_results()[0].input_value(0) if end is None else output(end)
    return ov.Model([result], params, f"encoder_{start}_{end}")


class StagedEncoder:
    """The encoder compiled by OpenVINO as one sub-model per stage, each at its own precision.

    It shows which stages tolerate bf16 (a single compiled model cannot keep its Linear
    layers in f32 under a bf16 hint; see this folder's README).

    Parameters
    ----------
    encoder
        The encoder ONNX file.
    plan
        One letter per :data:`ENCODER_STAGES` entry: ``"f"`` (f32) or ``"b"`` (bf16).
    threads
        ``INFERENCE_NUM_THREADS`` of every stage (default: OpenVINO's choice).
    """

    def __init__(self, encoder: Path, plan: str, threads: int | None = None) -> None:
        import openvino as ov

        if len(plan) != len(ENCODER_STAGES) or set(plan) - {"f", "b"}:
            raise ValueError(f"plan {plan!r}: one of f/b per stage "
                             f"({', '.join(n for n, _ in ENCODER_STAGES)})")
        core = ov.Core()
        self.plan = plan
        starts = [None] + [end for _, end in ENCODER_STAGES[:-1]]
        self._requests = []
        for start, (_, end), letter in zip(starts, ENCODER_STAGES, plan, strict=True):
            config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                         "INFERENCE_PRECISION_HINT": "bf16" if letter == "b"
                                         else "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            compiled = core.compile_model(_stage_model(core, encoder, start, end), "CPU", config)
            self._requests.append(compiled.create_infer_request())
        for previous, following in zip(self._requests, self._requests[1:], strict=False):
            following.set_input_tensor(previous.get_output_tensor(0))  # no copy between stages

    def __call__(self, tensor: np.ndarray) -> np.ndarray:
        """Features [1, 256, 64, 64] of a preprocessed [1, 3, S, S] tensor."""
        import openvino as ov

        self._requests[0].set_input_tensor(ov.Tensor(np.ascontiguousarray(tensor, np.float32)))
        for request in self._requests:
            request.infer()
        return np.array(self._requests[-1].get_output_tensor(0).data, dtype=np.float32)


def precision_study(data_dir: Path, *, plans: tuple[str, ...] = STUDY_PLANS,
                    model: str = "litemedsam", count: int = 4, repeats: int = 3,
                    threads: int | None = None, torch_reference: bool = True) -> dict:
    """Mask Dice and encoder time of OpenVINO with bf16 in some encoder stages only.

    Every plan's encoder feeds the OpenVINO model's f32 decoder; masks are compared with fp32 ONNX
    Runtime on the :func:`agreement_slices` (32 real slices, tight reference boxes). The
    encoders (and PyTorch and ONNX Runtime) are timed in one run, in rounds, on ``count``
    bench slices.

    Returns
    -------
    dict
        ``rows``: per plan ``encoder_ms``, ``encoder_speedup`` (over PyTorch, same run),
        ``dice_min``, ``dice_mean``, ``below_0_99``, ``embedding_max_abs`` and
        ``embedding_cos_min`` (against ONNX Runtime's embeddings).
    """
    from napari_medsam.engine import load_model
    from napari_medsam.engine.model_files import ensure_model_files
    from napari_medsam.engine.protocol import Embedding

    reference = load_model(model, "cpu", threads=threads, backend="onnxruntime")
    decoder = load_model(model, "cpu", threads=threads, backend="openvino", precision="f32")
    encoder_path = ensure_model_files(decoder.spec)["encoder"]
    encoders = {plan: StagedEncoder(encoder_path, plan, threads) for plan in plans}
    many = agreement_slices(data_dir)
    refs = []
    for s in many:
        embedding = reference.embed(s.image)
        refs.append((embedding.features, reference.predict(embedding, box=s.box).mask))
    rows = []
    for plan, encode in encoders.items():
        scores, max_abs, cosines = [], [], []
        for s, (ref_features, ref_mask) in zip(many, refs, strict=True):
            tensor, resized = decoder.preprocess(s.image)
            features = encode(tensor)
            embedding = Embedding(features=features, original_size=tuple(s.image.shape),
                                  resized_size=tuple(resized), input_size=decoder.spec.input_size,
                                  model=decoder.name)
            scores.append(_dice(ref_mask, decoder.predict(embedding, box=s.box).mask))
            a, b = features.ravel().astype(np.float64), ref_features.ravel().astype(np.float64)
            max_abs.append(float(np.abs(a - b).max()))
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        rows.append({"plan": plan, "dice_min": round(min(scores), 4),
                     "dice_mean": round(float(np.mean(scores)), 4),
                     "below_0_99": sum(d < MASK_DICE_BAR for d in scores),
                     "embedding_max_abs": round(max(max_abs), 4),
                     "embedding_cos_min": round(min(cosines), 6)})
    tensors = [reference.preprocess(s.image)[0] for s in bench_slices(data_dir, count)]
    runners = {"onnxruntime": lambda t: reference.embed_preprocessed(t, (1, 1), (1, 1)),
               **encoders}
    net = _torch_net(threads) if torch_reference else None
    if net is not None:
        runners = {"torch": net.encode, **runners}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for fn in runners.values():
        fn(tensors[0])
    for _ in range(repeats):
        for name, fn in runners.items():
            for tensor in tensors:
                times[name] += _time(lambda f=fn, t=tensor: f(t), 1)
    medians = {name: _median_ms(values) for name, values in times.items()}
    rows.insert(0, {"plan": "onnxruntime"})
    for row in rows:
        row["encoder_ms"] = medians[row["plan"]]
        if net is not None:
            row["encoder_speedup"] = round(medians["torch"] / row["encoder_ms"], 2)
    result = {"model": model, "stages": [name for name, _ in ENCODER_STAGES],
              "agreement_slices": len(many), "timed_slices": len(tensors),
              "rows": rows, "load": _load_average()}
    if net is not None:
        result["torch_encoder_ms"] = medians["torch"]
    return result


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def format_precision_study(result: dict) -> str:
    """The study as a table (plan letters follow ``result['stages']``)."""
    lines = [f"stages: {' | '.join(result['stages'])}   load {result['load']}",
             f"  {'plan':12s} {'encoder':>9s} {'x torch':>8s} {'Dice min':>9s} {'mean':>7s} "
             f"{'<0.99':>6s} {'max|emb diff|':>14s}"]
    if "torch_encoder_ms" in result:
        lines.append(f"  {'PyTorch':12s} {result['torch_encoder_ms']:7.1f}ms {'x1.00':>8s}")
    for row in result["rows"]:
        dice = (f"{row['dice_min']:9.4f} {row['dice_mean']:7.4f} "
                f"{row['below_0_99']:3d}/{result['agreement_slices']:<2d} "
                f"{row['embedding_max_abs']:14.4f}") if "dice_min" in row else "  (reference)"
        lines.append(f"  {row['plan']:12s} {row['encoder_ms']:7.1f}ms "
                     f"{_ratio(row, 'encoder_speedup'):>8s} {dice}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the shared data folder (default: found)")
    parser.add_argument("--plans", default=",".join(STUDY_PLANS),
                        help="comma-separated plans, one f/b letter per stage")
    parser.add_argument("--count", type=int, default=4, help="timed bench slices")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data = args.data or require_data_dir()
    result = precision_study(data, plans=tuple(args.plans.split(",")), count=args.count,
                             repeats=args.repeats, threads=args.threads,
                             torch_reference=not args.no_torch)
    print(format_precision_study(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
