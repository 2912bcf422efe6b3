"""What ``embed`` and ``segment`` share for many scans: the cohort options (``--address``,
``--threads``), the model factory their jobs carry (to this process's loop or to every Ray
task), and the run itself (list the jobs, check the options, run them, turn cohort errors
into CLI errors). The cohort core is :mod:`napari_medsam.cohort` (no CLI there)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from ._common import EXIT_USAGE, CliError, StderrProgress, duration, open_model


def run_cohort_command(command: str, args: argparse.Namespace,
                       list_jobs: Callable[[], Sequence[Any]], job_func: Callable,
                       settings_for: Callable[[int | None], Any]) -> int:
    """Run ``napari-medsam <command>`` over many scans (or one with ``--address``).

    Parameters
    ----------
    list_jobs
        The command's jobs from its arguments (a folder, a glob or a CSV).
    job_func
        What one scan runs (:func:`napari_medsam.cohort.jobs.embed_job` or ``segment_job``).
    settings_for
        The job settings for a number of model threads (1 per Ray task by default).
    """
    from napari_medsam.cohort.command import run_cohort
    from napari_medsam.cohort.scans import CohortError

    try:
        jobs = list_jobs()
    except CohortError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    problem = check_cohort_options(args)
    if problem:
        raise CliError(problem, EXIT_USAGE)
    threads = (args.threads or 1) if args.address else args.threads
    try:
        return run_cohort(command, jobs, job_func, settings_for(threads),
                          address=args.address, cpus=args.threads or 1,
                          line=StderrProgress(), duration=duration)
    except CohortError as exc:  # Ray missing or out of reach
        raise CliError(str(exc)) from exc


def add_cohort_options(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--address`` (and ``--threads`` unless the command has it already)."""
    p.add_argument("--address",
                   help="run each scan as one Ray task: 'local' (a private Ray on this "
                        "machine), 'auto' (the cluster this machine belongs to) or "
                        "ray://HOST:PORT; default: one scan after another in this process "
                        "(needs pip install 'napari-medsam[server]')")
    if threads:
        p.add_argument("--threads", type=int,
                       help="CPU threads per scan (default: all cores; with --address: 1, "
                            "and the CPUs Ray reserves for each task)")


def check_cohort_options(args: argparse.Namespace) -> str | None:
    """The first problem with ``--threads``/``--address``/``--model`` for a cohort, or None.

    With ``--address`` the model is opened only in the tasks, so an unknown name is caught
    here, before any task starts.
    """
    if args.threads is not None and args.threads < 1:
        return f"--threads must be 1 or more, got {args.threads}"
    if args.address is not None and not args.address.strip():
        return "--address is empty (use local, auto or ray://HOST:PORT)"
    if args.address:
        from napari_medsam.models.registry import get_spec

        try:
            get_spec(args.model)
        except KeyError as exc:  # the message lists the known names
            return str(exc.args[0] if exc.args else exc)
    if args.window:
        import numpy as np

        from napari_medsam.io import mapping_from_name

        try:
            mapping_from_name(args.window, np.array([0.0, 1.0]))
        except ValueError as exc:
            return str(exc)
    return None


def model_opener(args: argparse.Namespace, threads: int | None) -> Callable[[], Any]:
    """A picklable callable opening the model as the command's options say (what
    ``open_model`` in :mod:`napari_medsam.cli._common` does, with ``threads``)."""
    return functools.partial(open_model, args.model, args.device, args.backend, args.precision,
                             server=args.server, api_key_file=args.api_key_file,
                             threads=threads)
