"""The part of a cohort command the CLI modules share: run, report, summarise, exit code.

``napari-medsam embed`` and ``segment`` list their jobs (:mod:`.scans`), build their
settings (:mod:`.jobs`) and call :func:`run_cohort`, which prints a line per finished scan
on stderr (with the time left), the summary table on stdout, one error line naming every
failed scan, and returns the exit code: 0 when no scan failed, 1 when one did, 130 on
Ctrl-C (the outputs already written are kept).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from .jobs import FAILED
from .run import Progress, run_jobs, summary_table
from .scans import Job, display_names

logger = logging.getLogger(__name__)

__all__ = ["EXIT_FAILED_SCANS", "EXIT_INTERRUPTED", "run_cohort"]

EXIT_FAILED_SCANS = 1
EXIT_INTERRUPTED = 130


def run_cohort(command: str, jobs: Sequence[Job], job_func: Callable, settings: Any, *,
               address: str | None, cpus: int, line: Callable[[str, bool], None],
               duration: Callable[[float], str]) -> int:
    """Run a cohort for ``napari-medsam <command>``; returns the exit code.

    ``line(message, done)`` shows progress on stderr (``StderrProgress``), ``duration``
    formats seconds. Raises :class:`~.scans.CohortError` when Ray is missing or out of
    reach, and what opening the model raises in the local loop.
    """
    where = f"Ray at {address}, one task per scan" if address else "this process"
    print(f"napari-medsam {command}: {len(jobs)} scan{'s' * (len(jobs) != 1)} "
          f"({where})", file=sys.stderr)
    progress = Progress(jobs, line, duration)
    begin = time.perf_counter()
    try:
        outcomes = run_jobs(jobs, job_func, settings, address=address, cpus=cpus,
                            on_outcome=progress)
    except KeyboardInterrupt:  # Ctrl-C: one line; the outputs already written stay
        clear = "\r\033[K" if sys.stderr.isatty() else ""
        finished = sum(progress.counts.values())
        print(f"{clear}napari-medsam {command}: interrupted (Ctrl-C) after {finished} of "
              f"{len(jobs)} scans; the finished outputs are kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(jobs, outcomes, time.perf_counter() - begin))
    names = display_names(list(jobs))
    failed = [f"{name} ({o.image})" for name, o in zip(names, outcomes, strict=True)
              if o.status == FAILED]
    if failed:
        print(f"napari-medsam {command}: error: {len(failed)} of {len(jobs)} scans failed: "
              f"{', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED_SCANS
    return 0
