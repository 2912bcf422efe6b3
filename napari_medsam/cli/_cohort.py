"""What ``embed`` and ``segment`` share for many scans: list the jobs, check the options, run
them (here or as Ray tasks) and turn cohort errors into CLI errors."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from ._common import EXIT_USAGE, CliError, StderrProgress, duration


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
    from napari_medsam.cohort.options import check_cohort_options
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
