"""The ``napari-medsam`` command line: export-model, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("napari_medsam.cli")

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _cmd_export(args: argparse.Namespace) -> int:
    from napari_medsam.models.export import ExportError, export_model

    try:
        result = export_model(args.name, checkpoint=args.checkpoint, architecture=args.arch,
                              preprocessing=args.preprocess, force=args.force)
    except ExportError as exc:
        raise CliError(str(exc)) from exc
    print(f"{result.spec.name}: encoder {result.encoder}")
    print(f"{result.spec.name}: decoder {result.decoder}")
    print(f"decoder parity with PyTorch: max |logit diff| = {result.max_abs_diff:.2e}")
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
    result = bench.run_bench(data, model=args.model, device=args.device, count=args.slices,
                             repeats=args.repeats, torch_reference=torch_ref,
                             threads=args.threads)
    print(bench.format_report(result))
    if args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}")
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
    except Exception as exc:  # a clear one-line message instead of a traceback
        from napari_medsam.engine import ModelFileError, PromptError

        if isinstance(exc, ModelFileError | PromptError | FileNotFoundError | ValueError):
            print(f"napari-medsam {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    sys.exit(main())
