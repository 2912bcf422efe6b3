"""``napari-medsam eval``: simulate a user from a reference label map; Dice per label."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CliError,
    StderrProgress,
    add_backend_options,
    add_slice_gaps_option,
    add_zoom_option,
    check_json_folder,
    intensity_mapping,
    open_args_model,
    parse_labels,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` to ``napari-medsam``'s sub-command parsers."""
    p = subparsers.add_parser("eval", help="simulate a user from a reference label map; Dice "
                              "per label", description="Simulate boxes, clicks or propagation "
                              "from REFERENCE, run the model on IMAGE and report 3D Dice per "
                              "label.")
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
    add_backend_options(p)
    p.add_argument("--window", help="intensity mapping (default: automatic)")
    add_zoom_option(p)
    add_slice_gaps_option(p)
    p.set_defaults(func=run)
    return p


def _reference(args: argparse.Namespace, image):
    """The reference as an array on IMAGE's grid, and whether it was resampled."""
    from napari_medsam import evaluation as ev
    from napari_medsam.io import read_volume

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
    return ref_array, resampled, names


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam eval``; returns the exit code."""
    from napari_medsam import evaluation as ev
    from napari_medsam.io import read_volume
    from napari_medsam.segmentation import SegmentationSession

    wanted = parse_labels(args.labels)
    if args.jitter < 0:
        raise CliError(f"--jitter must be >= 0, got {args.jitter}", EXIT_USAGE)
    check_json_folder(args.json)
    image = read_volume(args.image, slice_gaps=args.slice_gaps)
    ref_array, resampled, names = _reference(args, image)
    mapping = intensity_mapping(image, args.window)
    model = open_args_model(args)
    session = SegmentationSession(model, image.array, mapping, zoom=args.zoom)
    progress = StderrProgress()
    try:
        result = ev.evaluate(session, ref_array, args.mode, labels=wanted, axis=args.axis,
                             jitter=args.jitter, seed=args.seed, names=names,
                             progress=progress)
    except ev.EvalError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    finally:
        progress.close()
    result.info = {"image": str(args.image), "reference": str(args.reference),
                   "model": model.name, "device": model.device_name,
                   "intensity": mapping.key, "resampled_reference": resampled}
    print(ev.format_table(result))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(result.to_json(), indent=1) + "\n",
                                                encoding="utf-8")
        print(f"wrote {args.json}")
    if not result.labels:
        raise CliError("no label was evaluated (see 'skipped')", EXIT_FAILURE)
    return 0
