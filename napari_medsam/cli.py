"""The ``napari-medsam`` command line: export-model, models, bench, segment, eval."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("napari_medsam.cli")

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_medsam.models.export import ExportError, export_model
    from napari_medsam.models.registry import check_name

    try:
        check_name(args.name)
    except ValueError as exc:
        raise CliError(f"--name: {exc}", EXIT_USAGE) from None
    try:
        result = export_model(args.name, checkpoint=args.checkpoint, architecture=args.arch,
                              preprocessing=args.preprocess, force=args.force,
                              batched=args.batched)
    except ExportError as exc:
        raise CliError(str(exc)) from exc
    print(f"{result.spec.name}: encoder {result.encoder}")
    print(f"{result.spec.name}: decoder {result.decoder}")
    print(f"decoder parity with PyTorch: max |logit diff| = {result.max_abs_diff:.2e}")
    if result.batched is not None:
        b = result.batched
        print(f"{result.spec.name}: batched encoder {b.path} (batch vs single calls "
              f"{b.batch_diff:.1e}, vs PyTorch {b.torch_diff:.1e})")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from napari_medsam.engine.model_files import ModelFileError, verify_model_files
    from napari_medsam.models.registry import list_specs

    for spec in list_specs():
        try:
            verify_model_files(spec)
            state = "ready"
        except ModelFileError:
            state = "not exported"
        print(f"{spec.name:20s} {state:13s} input {spec.input_size} px, prompts: "
              f"{', '.join(spec.prompts)}  [{spec.directory}]")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from napari_medsam import bench

    data = Path(args.data) if args.data else bench.default_data_dir()
    if data is None or not data.is_dir():
        raise CliError("no data folder: pass --data DIR (e.g. ../shared/data)", EXIT_USAGE)
    torch_ref = not args.no_torch
    if torch_ref:
        from napari_medsam.models.export import missing_export_packages

        missing = missing_export_packages()
        if missing:
            logger.warning("PyTorch reference skipped: %s not installed "
                           "(pip install 'napari-medsam[export]')", ", ".join(missing))
            torch_ref = False
    try:
        result = bench.run_bench(data, model=args.model, device=args.device, count=args.slices,
                                 repeats=args.repeats, torch_reference=torch_ref,
                                 threads=args.threads)
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    print(bench.format_report(result))
    if args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}")
    if result["failed_rows"]:
        raise CliError("engine row(s) failed: " + "; ".join(
            f"{r['row']}: {r['error']}" for r in result["failed_rows"]))
    return 0


class _StderrProgress:
    """Progress on stderr without extra dependencies.

    On a terminal one status line is rewritten in place; otherwise (a log file, a pipe) the
    finished steps are printed, plus an intermediate status at most every ``every`` seconds.
    """

    def __init__(self, stream=None, every: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self._last = time.monotonic()
        self._open = False

    def __call__(self, message: str, done: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + message + ("\n" if done else ""))
            self._open = not done
        elif done or time.monotonic() - self._last >= self.every:
            self.stream.write(message + "\n")
            self._last = time.monotonic()
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _load_model(name: str, device: str, backend: str = "auto", precision: str = "auto"):
    from napari_medsam.engine import load_model

    try:
        return load_model(name, device, backend=backend, precision=precision)
    except KeyError as exc:  # unknown registry name: the message lists the known ones
        raise CliError(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from exc
    except ValueError as exc:  # e.g. --backend openvino with --device cuda
        raise CliError(str(exc), EXIT_USAGE) from exc


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--precision``, as ``napari-medsam embed`` has them."""
    from napari_medsam.engine.backends import BACKENDS, PRECISIONS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="inference backend (auto: ONNX Runtime on a CUDA GPU, else OpenVINO "
                        "when installed, else ONNX Runtime on the CPU)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="OpenVINO CPU precision (auto = f32; bf16 is faster but moves masks)")


def add_slice_gaps_option(p: argparse.ArgumentParser) -> None:
    """``--slice-gaps error|fill``: DICOM series with missing slices."""
    p.add_argument("--slice-gaps", default="error", choices=["error", "fill"],
                   help="a DICOM series with missing slices: refuse it (error, default), or "
                        "open it with blank slices at the missing positions (fill)")


def _add_zoom_option(p: argparse.ArgumentParser) -> None:
    """``--zoom auto|off``: small boxes segmented in a zoomed crop (issue 8)."""
    p.add_argument("--zoom", default="auto", choices=["auto", "off"],
                   help="auto: segment boxes that are small relative to the slice in a zoomed "
                        "crop (one more encoder run per new region); off: whole slices only")


def _mapping(volume, window: str | None):
    from napari_medsam.io.intensity import auto_mapping, mapping_from_name

    if not window:
        return auto_mapping(volume.array, volume.modality)
    try:
        return mapping_from_name(window, volume.array)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def _check_output(path: str) -> Path:
    """The output label map, checked before any model work (folder, permissions, format)."""
    from napari_medsam.io import WRITE_EXTENSIONS, VolumeWriteError, check_writable

    out = Path(path).expanduser()
    if not out.name.lower().endswith(WRITE_EXTENSIONS) or out.name.lower() in WRITE_EXTENSIONS:
        raise CliError(f"--out {out}: label maps are written as {', '.join(WRITE_EXTENSIONS)}",
                       EXIT_USAGE)
    try:
        check_writable(out)
    except VolumeWriteError as exc:
        raise CliError(f"--out: {exc}", EXIT_USAGE) from None
    return out


def _duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _cmd_segment(args: argparse.Namespace) -> int:
    from napari_medsam.io import read_volume, write_labels
    from napari_medsam.segmentation import SegmentationSession
    from napari_medsam.segmentation.prompts_file import (
        PromptFileError,
        apply_prompts,
        load_prompts,
    )

    out = _check_output(args.out)
    volume = read_volume(args.image, slice_gaps=args.slice_gaps)
    if volume.is_label_map:
        logger.warning("%s looks like a label map, not a scan", args.image)
    try:
        prompts = load_prompts(args.prompts, volume.shape)
    except PromptFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    mapping = _mapping(volume, args.window)
    model = _load_model(args.model, args.device, args.backend, args.precision)
    session = SegmentationSession(model, volume.array, mapping, zoom=args.zoom)
    progress = _StderrProgress()
    t0 = time.perf_counter()

    def report(outcome, n: int, total: int) -> None:
        p = outcome.prompt
        where = f"slice {p.slice}" if len(outcome.slices) <= 1 else (
            f"slices {outcome.slices[0]}..{outcome.slices[-1]}")
        kept = f", {outcome.kept} voxels kept by earlier objects" if outcome.kept else ""
        count = len(outcome.slices)
        left = (time.perf_counter() - t0) / n * (total - n)
        eta = f", about {_duration(left)} left" if n < total else ""
        progress(f"[{n}/{total}] {p.title}: {p.mode}, {outcome.voxels} voxels on "
                 f"{count} slice{'s' * (count != 1)} ({where}, axis {p.axis}){kept} "
                 f"({outcome.seconds:.1f} s{eta})", True)

    print(f"segmenting {len(prompts)} objects in {volume.path} ({model.name} on "
          f"{getattr(model, 'device_name', 'cpu')}, intensity {mapping.key})", file=sys.stderr)
    labels, outcomes = apply_prompts(session, prompts, overwrite=args.overwrite,
                                     progress=report)
    progress.close()
    empty = [o.prompt.title for o in outcomes if o.voxels == 0]
    for title in empty:
        logger.warning("%s: the model found nothing (the object is empty)", title)
    names = {p.label: p.name for p in prompts if p.name}
    written = write_labels(labels, out, volume, label_names=names or None)
    print(f"wrote {written}: {len(outcomes)} object{'s' * (len(outcomes) != 1)}, "
          f"{sum(o.voxels for o in outcomes)} voxels ({time.perf_counter() - t0:.1f} s)")
    return 0


def _parse_labels(text: str | None) -> list[int] | None:
    if not text:
        return None
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError as exc:
            raise CliError(f"--labels: {part!r} is not a whole number (use e.g. 1,2,5)",
                           EXIT_USAGE) from exc
        if value <= 0:
            raise CliError(f"--labels: label values are >= 1, got {value}", EXIT_USAGE)
        values.append(value)
    if not values:
        raise CliError("--labels is empty (use e.g. 1,2,5)", EXIT_USAGE)
    return values


def _cmd_eval(args: argparse.Namespace) -> int:
    from napari_medsam import evaluation as ev
    from napari_medsam.io import read_volume
    from napari_medsam.segmentation import SegmentationSession

    wanted = _parse_labels(args.labels)
    if args.jitter < 0:
        raise CliError(f"--jitter must be >= 0, got {args.jitter}", EXIT_USAGE)
    if args.json and not Path(args.json).expanduser().parent.is_dir():
        raise CliError(f"--json {args.json}: folder does not exist", EXIT_USAGE)
    image = read_volume(args.image, slice_gaps=args.slice_gaps)
    reference = read_volume(args.reference)
    if not reference.is_label_map:
        raise CliError(f"{args.reference} is not a label map: it looks like a scan "
                       f"({reference.modality}, {reference.array.dtype} values "
                       f"{reference.array.min():g}..{reference.array.max():g}). The reference "
                       "must be a segmentation of IMAGE: whole numbers >= 0, one per structure",
                       EXIT_USAGE)
    try:
        ref_array, resampled = ev.align_reference(image, reference)
    except ev.EvalError as exc:
        raise CliError(f"{args.reference} does not fit {args.image}: {exc}",
                       EXIT_USAGE) from exc
    names = {**image.label_names, **ev.reference_label_names(reference, args.reference)}
    mapping = _mapping(image, args.window)
    model = _load_model(args.model, args.device, args.backend, args.precision)
    session = SegmentationSession(model, image.array, mapping, zoom=args.zoom)
    progress = _StderrProgress()
    try:
        result = ev.evaluate(session, ref_array, args.mode, labels=wanted, axis=args.axis,
                             jitter=args.jitter, seed=args.seed, names=names,
                             progress=progress)
    except ev.EvalError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    finally:
        progress.close()
    result.info = {"image": str(args.image), "reference": str(args.reference),
                   "model": model.name, "device": getattr(model, "device_name", "cpu"),
                   "intensity": mapping.key, "resampled_reference": resampled}
    print(ev.format_table(result))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(result.to_json(), indent=1) + "\n",
                                                encoding="utf-8")
        print(f"wrote {args.json}")
    if not result.labels:
        raise CliError("no label was evaluated (see 'skipped')", EXIT_FAILURE)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medsam",
                                     description="Interactive CT/MRI segmentation tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export-model", help="export a model to ONNX in the user cache")
    p.add_argument("--name", default="litemedsam",
                   help="registry name, or a new name for your own checkpoint")
    p.add_argument("--checkpoint", help="your own SAM/MedSAM-style .pth checkpoint")
    p.add_argument("--arch", choices=["vit_b", "vit_l", "vit_h", "litemedsam"],
                   help="architecture of --checkpoint (default vit_b)")
    p.add_argument("--preprocess", choices=["medsam", "sam", "litemedsam"],
                   help="input normalisation of --checkpoint (default medsam: min-max)")
    p.add_argument("--force", action="store_true", help="export again even if present")
    p.add_argument("--batched", action="store_true",
                   help="also export the batch-dynamic encoder that CUDA/TensorRT use to "
                        "embed volumes (exported on demand otherwise)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("models", help="list known models and whether they are exported")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("bench", help="time the engine against the PyTorch reference")
    p.add_argument("--data", help="folder of real cases (default ../shared/data)")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="threads for both ONNX Runtime and PyTorch")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("segment", help="segment a volume from a JSON prompt file (no GUI)",
                       description="Segment IMAGE from the boxes and clicks in PROMPTS.json "
                       "and write the label map with the image's geometry (see docs/cli.md).")
    p.add_argument("image", help="NIfTI/NRRD/MetaImage file or DICOM series folder")
    p.add_argument("--prompts", required=True, help="JSON prompt file (voxel indices, z y x)")
    p.add_argument("--out", required=True, help="label map to write (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="litemedsam")
    _add_backend_options(p)
    p.add_argument("--window", help="intensity mapping (CT window name, mr_percentile, minmax;"
                   " default: automatic, as the viewer opens the image)")
    p.add_argument("--overwrite", action="store_true",
                   help="later objects paint over earlier ones (default: keep earlier ones)")
    _add_zoom_option(p)
    add_slice_gaps_option(p)
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("eval", help="simulate a user from a reference label map; Dice per label",
                       description="Simulate boxes, clicks or propagation from REFERENCE, "
                       "run the model on IMAGE and report 3D Dice per label.")
    p.add_argument("image", help="NIfTI/NRRD/MetaImage file or DICOM series folder")
    p.add_argument("reference", help="reference label map of the same scan")
    p.add_argument("--mode", required=True, choices=["box", "click", "propagate"])
    p.add_argument("--labels", help="comma-separated label values (default: all)")
    p.add_argument("--axis", type=int, default=0, choices=[0, 1, 2],
                   help="array axis the simulated user slices across (default 0)")
    p.add_argument("--jitter", type=int, default=0,
                   help="box mode: enlarge each side by a random 0..PX pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed for --jitter")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="litemedsam")
    _add_backend_options(p)
    p.add_argument("--window", help="intensity mapping (default: automatic)")
    _add_zoom_option(p)
    add_slice_gaps_option(p)
    p.set_defaults(func=_cmd_eval)
    from napari_medsam.cli_adapt import add_adapt_parser
    from napari_medsam.cli_embed import add_embed_parser

    add_embed_parser(sub)
    add_adapt_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"napari-medsam {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; outputs are written last
        clear = "\r\033[K" if sys.stderr.isatty() else ""
        print(f"{clear}napari-medsam {args.command}: interrupted (Ctrl-C); no output was "
              "written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a clear one-line message instead of a traceback
        from napari_medsam.engine import ModelFileError, PromptError

        if isinstance(exc, ModelFileError | PromptError | FileNotFoundError | ValueError):
            print(f"napari-medsam {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    sys.exit(main())
