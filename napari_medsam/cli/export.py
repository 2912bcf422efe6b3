"""``napari-medsam export-model``: export a model to ONNX in the user cache."""

from __future__ import annotations

import argparse

from ._common import EXIT_USAGE, CliError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``export-model`` to ``napari-medsam``'s sub-command parsers."""
    p = subparsers.add_parser("export-model", help="export a model to ONNX in the user cache")
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
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam export-model``; returns the exit code."""
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
