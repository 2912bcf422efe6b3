"""``napari-medsam adapt``: fine-tune a model's decoder on the user's own label maps.

Wired into :mod:`napari_medsam.cli` with :func:`add_parser`::

    napari-medsam adapt --pair IMAGE LABELS [--pair IMAGE LABELS ...] --labels 1,2 \\
        --name hippo-t1 [--epochs auto] [--prompts box,click] [--json report.json]

The new model is listed by ``napari-medsam models`` and used with ``--model NAME`` by
``segment``, ``eval`` and ``embed``. Needs the export extra (torch) to train.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliError,
    StderrProgress,
    add_server_options,
    add_slice_gaps_option,
    api_key,
    check_json_folder,
    parse_labels,
)

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``adapt`` command to ``napari-medsam``'s sub-command parsers."""
    from napari_medsam.engine.backends import BACKENDS
    from napari_medsam.engine.providers import DEVICES

    p = subparsers.add_parser(
        "adapt", help="fine-tune a model's decoder on your label maps (a new model)",
        description="Train the prompt decoder of --base on the labelled slices of the given "
                    "scans, keep it only if it beats the base model on held-out slices or "
                    "scans, and save it as model NAME (its encoder is the base model's).")
    p.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "LABELS"),
                   required=True, help="a scan (file or DICOM folder) and its label map; "
                                       "repeat for more scans")
    p.add_argument("--labels", required=True, help="comma-separated label values to learn")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("--base", default="litemedsam", help="model to adapt (default litemedsam)")
    p.add_argument("--epochs", default="auto",
                   help="auto (about 1000 training steps: 6 to 24 epochs; the best on the "
                        "held-out split is kept) or a number")
    p.add_argument("--prompts", default="box,click",
                   help="prompts to train for: box, click or box,click (default)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=int, help="CPU threads for training")
    p.add_argument("--zoom", default="auto", choices=["auto", "off"],
                   help="train on the zoomed regions small objects get too (auto, default)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS))
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    add_server_options(p)
    p.add_argument("--json", help="write the report here")
    add_slice_gaps_option(p)
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace):
    from napari_medsam.adaptation import TrainingConfig

    epochs = None
    if args.epochs != "auto":
        try:
            epochs = int(args.epochs)
        except ValueError:
            raise CliError(f"--epochs: {args.epochs!r} is neither auto nor a number",
                           EXIT_USAGE) from None
    prompts = tuple(p.strip() for p in args.prompts.split(",") if p.strip())
    try:
        return TrainingConfig(prompts=prompts, epochs=epochs, seed=args.seed,
                              threads=args.threads)
    except ValueError as exc:
        raise CliError(f"--prompts/--epochs: {exc}", EXIT_USAGE) from None


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam adapt``; returns the exit code."""
    from napari_medsam.adaptation import AdaptError, adapt, read_pair
    from napari_medsam.models.export import missing_export_packages

    values = parse_labels(args.labels)
    config = _config(args)
    check_json_folder(args.json)
    missing = missing_export_packages()
    if missing:
        raise CliError("adapting needs the export extra; missing: " + ", ".join(missing)
                       + ". Install it with: pip install 'napari-medsam[export]'")
    try:
        pairs = [read_pair(image, labels, values, args.slice_gaps)
                 for image, labels in args.pair]
    except AdaptError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    progress = StderrProgress()
    try:
        report = adapt(pairs, values, args.name, base=args.base, device=args.device,
                       backend=args.backend, zoom=args.zoom, config=config,
                       progress=progress, server=args.server, api_key=api_key(args))
    except AdaptError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except KeyError as exc:  # unknown --base: the message lists the known models
        raise CliError(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    finally:
        progress.close()
    print(format_report(report))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(report.to_json(), indent=1) + "\n")
        print(f"wrote {args.json}")
    if not report.saved:
        raise CliError(report.reason, EXIT_FAILURE)
    return 0


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(report) -> str:
    """The report as a few lines of text."""
    lines = [f"{report.name}: adapted from {report.base} on labels "
             f"{', '.join(map(str, report.labels))} of {report.scans} scan(s): "
             f"{report.train_examples} training, {report.heldout_examples} held-out examples "
             f"({report.split})",
             f"  embedding {report.embed_seconds:.1f} s, training {report.train_seconds:.1f} s",
             "  epoch  held-out box  held-out click"]
    for row in report.epochs:
        mark = "  <- kept" if row["epoch"] == report.best_epoch and report.saved else ""
        lines.append(f"  {row['epoch']:5d}  {_fmt(row['box']):>12s}  {_fmt(row['click']):>14s}"
                     f"{mark}")
    clicks = report.extra.get("heldout_clicks")
    if clicks:
        verdict = ("it answers clicks itself" if report.extra.get("answers_clicks")
                   else "clicks keep the click search")
        lines.append(f"  one click on held-out slices: adapted (one decoder call) "
                     f"{clicks['adapted_one_call']:.3f}, base click search "
                     f"{clicks['base_click_search']:.3f}: {verdict}")
    if report.saved:
        lines.append(f"saved as model {report.name!r} in {report.model_dir}; use it with "
                     f"--model {report.name}")
    else:
        lines.append(report.reason)
    return "\n".join(lines)
