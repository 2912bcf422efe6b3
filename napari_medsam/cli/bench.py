"""``napari-medsam bench``: time the engine against the PyTorch reference."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import EXIT_USAGE, CliError

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``bench`` to ``napari-medsam``'s sub-command parsers."""
    p = subparsers.add_parser("bench", help="time the engine against the PyTorch reference")
    p.add_argument("--data", help="folder of real cases (default ../shared/data)")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="threads for both ONNX Runtime and PyTorch")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam bench``; returns the exit code."""
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
