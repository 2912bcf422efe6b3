"""``napari-medsam segment``: segment a volume from a JSON prompt file (no GUI).

``napari-medsam segment --print-schema`` prints the prompt file's JSON Schema and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ._common import (
    EXIT_USAGE,
    CliError,
    StderrProgress,
    add_backend_options,
    add_slice_gaps_option,
    add_zoom_option,
    duration,
    intensity_mapping,
    open_model,
)

logger = logging.getLogger(__name__)


class _PrintSchema(argparse.Action):
    """``--print-schema``: print the JSON Schema and exit 0, like ``--help`` (so IMAGE,
    --prompts and --out are not needed)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help=None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from napari_medsam.segmentation.prompts_schema import prompt_file_schema

        print(json.dumps(prompt_file_schema(), indent=2))
        parser.exit(0)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``segment`` to ``napari-medsam``'s sub-command parsers."""
    p = subparsers.add_parser("segment", help="segment a volume from a JSON prompt file (no GUI)",
                              description="Segment IMAGE from the boxes and clicks in "
                              "PROMPTS.json and write the label map with the image's geometry "
                              "(see docs/cli.md).")
    p.add_argument("image", help="NIfTI/NRRD/MetaImage file or DICOM series folder")
    p.add_argument("--prompts", required=True, help="JSON prompt file (voxel indices, z y x)")
    p.add_argument("--out", required=True, help="label map to write (.nii.gz, .nii, .nrrd, .mha)")
    p.add_argument("--print-schema", action=_PrintSchema,
                   help="print the prompt file's JSON Schema and exit")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--model", default="litemedsam")
    add_backend_options(p)
    p.add_argument("--window", help="intensity mapping (CT window name, mr_percentile, minmax;"
                   " default: automatic, as the viewer opens the image)")
    p.add_argument("--overwrite", action="store_true",
                   help="later objects paint over earlier ones (default: keep earlier ones)")
    add_zoom_option(p)
    add_slice_gaps_option(p)
    p.set_defaults(func=run)
    return p


def check_output(path: str) -> Path:
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


class _Report:
    """One progress line per finished object, with the time left."""

    def __init__(self, progress: StderrProgress) -> None:
        self.progress = progress
        self.t0 = time.perf_counter()

    def __call__(self, outcome, n: int, total: int) -> None:
        p = outcome.prompt
        where = f"slice {p.slice}" if len(outcome.slices) <= 1 else (
            f"slices {outcome.slices[0]}..{outcome.slices[-1]}")
        kept = f", {outcome.kept} voxels kept by earlier objects" if outcome.kept else ""
        count = len(outcome.slices)
        left = (time.perf_counter() - self.t0) / n * (total - n)
        eta = f", about {duration(left)} left" if n < total else ""
        self.progress(f"[{n}/{total}] {p.title}: {p.mode}, {outcome.voxels} voxels on "
                      f"{count} slice{'s' * (count != 1)} ({where}, axis {p.axis}){kept} "
                      f"({outcome.seconds:.1f} s{eta})", True)


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam segment``; returns the exit code."""
    from napari_medsam.io import read_volume, write_labels
    from napari_medsam.segmentation import SegmentationSession
    from napari_medsam.segmentation.prompts_file import (
        PromptFileError,
        apply_prompts,
        load_prompts,
    )

    out = check_output(args.out)
    volume = read_volume(args.image, slice_gaps=args.slice_gaps)
    if volume.is_label_map:
        logger.warning("%s looks like a label map, not a scan", args.image)
    try:
        prompts = load_prompts(args.prompts, volume.shape)
    except PromptFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    mapping = intensity_mapping(volume, args.window)
    model = open_model(args.model, args.device, args.backend, args.precision)
    session = SegmentationSession(model, volume.array, mapping, zoom=args.zoom)
    progress = StderrProgress()
    report = _Report(progress)
    print(f"segmenting {len(prompts)} objects in {volume.path} ({model.name} on "
          f"{model.device_name}, intensity {mapping.key})", file=sys.stderr)
    labels, outcomes = apply_prompts(session, prompts, overwrite=args.overwrite,
                                     progress=report)
    progress.close()
    empty = [o.prompt.title for o in outcomes if o.voxels == 0]
    for title in empty:
        logger.warning("%s: the model found nothing (the object is empty)", title)
    names = {p.label: p.name for p in prompts if p.name}
    written = write_labels(labels, out, volume, label_names=names or None)
    print(f"wrote {written}: {len(outcomes)} object{'s' * (len(outcomes) != 1)}, "
          f"{sum(o.voxels for o in outcomes)} voxels ({time.perf_counter() - report.t0:.1f} s)")
    return 0
