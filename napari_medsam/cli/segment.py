"""``napari-medsam segment``: segment a volume from a JSON prompt file (no GUI).

``napari-medsam segment IMAGE --prompts P.json --out OUT.nii.gz`` segments one scan;
a folder, a quoted glob or a CSV segments a cohort, here or as Ray tasks with
``--address`` (:mod:`napari_medsam.cohort`; docs/cli.md, section Cohorts).

``napari-medsam segment --print-schema`` prints the prompt file's JSON Schema and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ._cohort import add_cohort_options, model_opener, run_cohort_command
from ._common import (
    EXIT_USAGE,
    CliError,
    StderrProgress,
    add_backend_options,
    add_slice_gaps_option,
    add_zoom_option,
    duration,
    intensity_mapping,
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
                              "PROMPTS.json and write the label map with the image's geometry; "
                              "or many scans: a folder, a quoted glob or a CSV (see docs/cli.md, "
                              "Cohorts).")
    p.add_argument("image", help="NIfTI/NRRD/MetaImage file or DICOM series folder; for many "
                                 "scans a folder, a quoted glob or a CSV (image,prompts,out)")
    p.add_argument("--prompts", help="JSON prompt file (voxel indices, z y x); for many scans "
                                     "a folder holding <scan name>.json per scan")
    p.add_argument("--out", help="label map to write (.nii.gz, .nii, .nrrd, .mha); for many "
                                 "scans a folder (<scan name>.nii.gz per scan)")
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
    add_cohort_options(p)
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


def _settings(args: argparse.Namespace, threads: int | None):
    from napari_medsam.cohort.jobs import SegmentSettings

    return SegmentSettings(open_model=model_opener(args, threads), model=args.model,
                           window=args.window, overwrite=args.overwrite, zoom=args.zoom,
                           slice_gaps=args.slice_gaps)


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam segment``; returns the exit code."""
    from napari_medsam.cohort.scans import is_many

    if args.address or is_many(args.image):
        return _run_cohort(args)
    if not args.prompts or not args.out:
        raise CliError("give --prompts PROMPTS.json and --out LABELS.nii.gz (or, for many "
                       "scans, a folder, glob or CSV: see docs/cli.md)", EXIT_USAGE)
    from napari_medsam.cohort.jobs import segment_scan
    from napari_medsam.segmentation.prompts_file import PromptFileError

    out = check_output(args.out)
    progress = StderrProgress()
    report = _Report(progress)

    def on_start(volume, model, mapping, prompts) -> None:
        report.t0 = time.perf_counter()
        print(f"segmenting {len(prompts)} objects in {volume.path} ({model.name} on "
              f"{model.device_name}, intensity {mapping.key})", file=sys.stderr)

    try:
        result = segment_scan(args.image, args.prompts, out, _settings(args, args.threads),
                              mapping_for=intensity_mapping, on_start=on_start,
                              progress=report)
    except PromptFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    progress.close()
    n = len(result.outcomes)
    print(f"wrote {result.written}: {n} object{'s' * (n != 1)}, {result.voxels} voxels "
          f"({time.perf_counter() - report.t0:.1f} s)")
    return 0


def _run_cohort(args: argparse.Namespace) -> int:
    """Many scans (or one with --address): see docs/cli.md, section Cohorts."""
    from napari_medsam.cohort.jobs import segment_job
    from napari_medsam.cohort.scans import segment_jobs

    return run_cohort_command("segment", args,
                              lambda: segment_jobs(args.image, args.prompts, args.out),
                              segment_job, lambda threads: _settings(args, threads))
