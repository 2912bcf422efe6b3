"""``napari-medsam embed``: pre-embed every slice of a scan into the disk cache.

Wired into :mod:`napari_medsam.cli` with :func:`add_parser`::

    napari-medsam embed IMAGE [--axis 0] [--backend auto] [--device auto] [--model NAME]
    napari-medsam embed FOLDER|'GLOB'|LIST.csv [--address local|auto|ray://HOST:PORT]
                                    # many scans (docs/cli.md, Cohorts): done ones skipped
    napari-medsam embed --info      # where the cache is, its size and volumes
    napari-medsam embed --clear     # delete every stored embedding (fails, exit 1, while
                                    # another embed is writing to the cache)

Opening the same scan in napari afterwards (same intensity window, model and axis) finds
every slice embedded.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ._cohort import add_cohort_options, model_opener, run_cohort_command
from ._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    add_backend_options,
    add_slice_gaps_option,
)

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``embed`` command to ``napari-medsam``'s sub-command parsers."""
    from napari_medsam.engine.providers import DEVICES

    p = subparsers.add_parser(
        "embed", help="pre-compute every slice embedding of a scan into the disk cache",
        description="Embed every slice of IMAGE along an axis (the middle slice first, then "
                    "outward) and keep the embeddings on disk, so that segmenting the scan "
                    "later needs no encoder run.")
    p.add_argument("image", nargs="?", help="NIfTI/NRRD/MHA file or DICOM folder; for many "
                                            "scans a folder, a quoted glob or a CSV (image)")
    p.add_argument("--axis", type=int, default=0, choices=[0, 1, 2],
                   help="array axis the slices cut across (0: axial for z,y,x volumes)")
    p.add_argument("--start", type=int, help="slice to start from (default: the middle one)")
    p.add_argument("--window", help="intensity mapping: a CT preset, mr_percentile or minmax "
                                    "(default: as napari-medsam opens the scan)")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    add_backend_options(p)
    p.add_argument("--threads", type=int, help="CPU threads for inference (with --address: "
                                                "per task, default 1, the CPUs Ray reserves)")
    p.add_argument("--info", action="store_true", help="show the disk cache and exit")
    p.add_argument("--clear", action="store_true", help="delete every stored embedding")
    add_slice_gaps_option(p)
    add_cohort_options(p, threads=False)
    p.set_defaults(func=run)
    return p


def _print_info() -> None:
    from napari_medsam.engine.disk_cache import cache_entries, embeddings_dir, format_bytes

    entries = cache_entries()
    total = sum(e.nbytes for e in entries)
    print(f"embedding cache: {embeddings_dir()}")
    print(f"  {len(entries)} volume(s), {format_bytes(total)}")
    for entry in entries:
        meta = entry.meta
        shape = "x".join(str(v) for v in meta.get("shape", [])) or "?"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(f"  {entry.path.name[:12]}  {shape:>13s} axis {meta.get('axis', '?')}  "
              f"{entry.slices:4d} slices  {format_bytes(entry.nbytes):>9s}  "
              f"{meta.get('model', '?')}/{meta.get('precision', '?')}  "
              f"{meta.get('mapping', '?')}  used {when}")


def _clear_and_info(args: argparse.Namespace) -> None:
    """``--clear`` then ``--info``, before any IMAGE is embedded."""
    from napari_medsam.engine.disk_cache import (
        CacheBusyError,
        clear_cache,
        embeddings_dir,
        format_bytes,
    )

    if args.clear:
        try:
            freed = clear_cache()
        except CacheBusyError as exc:  # another embed runs: nothing was deleted
            raise CliError(str(exc), EXIT_FAILURE) from exc
        print(f"cleared {embeddings_dir()} ({format_bytes(freed)} freed)")
    if args.info:
        _print_info()


def _settings(args: argparse.Namespace, threads: int | None):
    from napari_medsam.cohort.jobs import EmbedSettings

    return EmbedSettings(open_model=model_opener(args, threads), axis=args.axis,
                         start=args.start, window=args.window, slice_gaps=args.slice_gaps)


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam embed`` (see the module docstring); returns the exit code."""
    from napari_medsam.cohort.scans import is_many

    _clear_and_info(args)
    if (args.clear or args.info) and not args.image:
        return 0
    if not args.image:
        raise CliError("give an IMAGE to embed (or --info / --clear)", EXIT_USAGE)
    if args.address or is_many(args.image):
        return _run_cohort(args)
    return _run_one(args)


def _run_one(args: argparse.Namespace) -> int:
    """One scan, printing as it goes (Ctrl-C keeps the slices done)."""
    from napari_medsam.cohort.jobs import embed_scan
    from napari_medsam.engine.disk_cache import CacheBusyError, embeddings_dir, format_bytes

    def on_ready(volume, mapping, model, embedder, seconds: float) -> None:
        array = volume.array
        print(f"{args.image}: {'x'.join(map(str, array.shape))} {array.dtype}, axis "
              f"{args.axis}, {mapping.key}; {model.spec.display_name} on {model.device_name}")
        print(f"ready in {seconds:.2f} s (image hash, model digest); "
              f"{len(embedder.missing())} of {embedder.size} slices to encode "
              f"({embedder.plan.kind}, {embedder.plan.in_flight} in flight)")

    interactive = sys.stdout.isatty()
    last_print = [0.0]
    encoding = [False]

    def report(progress) -> None:
        now = time.perf_counter()
        final = progress.done == progress.total
        if interactive:
            print(f"\r  {progress.describe():60s}", end="\n" if final else "", flush=True)
        elif final or now - last_print[0] >= 5.0:
            print(f"  {progress.describe()}", flush=True)
            last_print[0] = now

    try:
        result = embed_scan(args.image, _settings(args, args.threads), on_ready=on_ready,
                            progress=report, started=lambda: encoding.__setitem__(0, True))
    except KeyboardInterrupt:
        if not encoding[0]:
            raise
        print("\ninterrupted: the slices done so far are kept")
        return EXIT_INTERRUPTED
    except CacheBusyError as exc:  # a clear by another process did not finish in time
        raise CliError(str(exc), EXIT_FAILURE) from exc
    summary = result.summary
    rate = f", {summary.slices_per_s:.2f} slices/s" if summary.encoded else ""
    print(f"done: {summary.encoded} encoded, {summary.from_disk} already cached, "
          f"{summary.wall_s:.1f} s{rate}")
    print(f"cache: {summary.store_dir} ({format_bytes(summary.store_bytes)}); "
          f"all volumes: {embeddings_dir()}")
    return 0


def _run_cohort(args: argparse.Namespace) -> int:
    """Many scans (or one with --address): see docs/cli.md, section Cohorts."""
    from napari_medsam.cohort.jobs import embed_job
    from napari_medsam.cohort.scans import embed_jobs

    return run_cohort_command("embed", args, lambda: embed_jobs(args.image), embed_job,
                              lambda threads: _settings(args, threads))
