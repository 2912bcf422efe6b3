"""Run the jobs of a cohort: one after another in this process, or one Ray task per scan.

Without an address the scans run in this process, one after another, with one model opened
once (Ray is never imported). With an address (``local``, ``auto`` or ``ray://HOST:PORT``)
each scan is one Ray task (see :mod:`.ray_tasks`) calling the same job function. Either way
every finished scan is reported at once (``on_outcome``) and a failed scan never stops the
others; Ctrl-C (KeyboardInterrupt) cancels what has not finished and is raised again, the
outputs already written are kept.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .jobs import FAILED, OK, SKIPPED, Outcome, local_worker
from .scans import Job, display_names

logger = logging.getLogger(__name__)

__all__ = ["Progress", "run_jobs", "summary_table"]

JobFunc = Callable[[Job, Any, dict], Outcome]


def run_jobs(jobs: Sequence[Job], job_func: JobFunc, settings: Any, *,
             address: str | None = None, cpus: int = 1,
             on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run ``job_func(job, settings, ran_on)`` for every job; the outcomes in job order.

    Parameters
    ----------
    jobs
        The scans (see :mod:`.scans`).
    job_func
        :func:`.jobs.segment_job` or :func:`.jobs.embed_job` (module-level: Ray pickles it
        by name).
    settings
        Its settings; ``settings.open_model`` is called once here without an address, in
        every task with one.
    address
        None: this process. Else the Ray address (see :func:`.ray_tasks.connect`).
    cpus
        CPUs Ray reserves for each task.
    on_outcome
        Called with each outcome as soon as its scan finishes (in finishing order).

    Raises
    ------
    CohortError
        When Ray is missing or cannot be reached.
    KeyboardInterrupt
        On Ctrl-C, after cancelling the scans not yet finished.
    """
    report = on_outcome or (lambda outcome: None)
    if address is None:
        return _run_here(jobs, job_func, settings, report)
    from .ray_tasks import run_on_ray  # Ray is imported only here

    return run_on_ray(jobs, job_func, settings, address, cpus, report)


def _run_here(jobs: Sequence[Job], job_func: JobFunc, settings: Any,
              report: Callable[[Outcome], None]) -> list[Outcome]:
    model = settings.open_model()  # once for all scans; its errors stop the run before any
    here = dataclasses.replace(settings, open_model=lambda: model)
    ran_on = local_worker()
    outcomes = []
    for job in jobs:
        outcome = job_func(job, here, ran_on)
        report(outcome)
        outcomes.append(outcome)
    return outcomes


class Progress:
    """One line per finished scan on stderr, with counts and the time left.

    ``line`` is a :class:`~napari_medsam.cli._common.StderrProgress`-like callable
    ``(message, done)``; ``duration`` formats seconds.
    """

    def __init__(self, jobs: Sequence[Job], line: Callable[[str, bool], None],
                 duration: Callable[[float], str]) -> None:
        self.total = len(jobs)
        self.names = dict(zip((j.image for j in jobs), display_names(list(jobs)), strict=True))
        self.line = line
        self.duration = duration
        self.begin = time.perf_counter()
        self.counts = {OK: 0, SKIPPED: 0, FAILED: 0}

    def __call__(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        n = sum(self.counts.values())
        elapsed = time.perf_counter() - self.begin
        eta = (f"; about {self.duration(elapsed / n * (self.total - n))} left"
               if n < self.total else "")
        what = outcome.detail if outcome.status == FAILED else (
            "skipped: done" if outcome.status == SKIPPED else OK)
        failed = f", {self.counts[FAILED]} failed" if self.counts[FAILED] else ""
        self.line(f"[{n}/{self.total}] {self.names.get(outcome.image, outcome.name)}: {what} "
                  f"({outcome.seconds:.1f} s){failed}{eta}", True)


def summary_table(jobs: Sequence[Job], outcomes: Sequence[Outcome], wall_s: float) -> str:
    """The table printed at the end: scan, outcome, seconds, where it ran, what happened."""
    names = display_names(list(jobs))
    width = max([4, *(len(n) for n in names)])
    where = max([6, *(len(o.where) for o in outcomes)])
    lines = [f"{'scan':<{width}}  {'outcome':<7}  {'seconds':>7}  {'ran on':<{where}}  detail"]
    for name, o in zip(names, outcomes, strict=True):
        lines.append(f"{name:<{width}}  {o.status:<7}  {o.seconds:7.1f}  {o.where:<{where}}  "
                     f"{o.detail}")
    count = {s: sum(o.status == s for o in outcomes) for s in (OK, SKIPPED, FAILED)}
    lines.append(f"{len(outcomes)} scans: {count[OK]} ok, {count[SKIPPED]} skipped, "
                 f"{count[FAILED]} failed; {wall_s:.1f} s")
    return "\n".join(lines)
