"""One Ray task per scan: connect (or start a local Ray), submit, collect, shut down.

Imported by :func:`.run.run_jobs` only when an address is given; Ray itself is imported by
:func:`import_ray` (the ``server`` extra). Each task calls the same job function as the
local loop (:func:`.jobs.segment_job` / :func:`.jobs.embed_job`), opens its own model and
records where it ran (node, worker and task id).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from napari_medsam.paths import CACHE_ENV

from .jobs import FAILED, Outcome, local_worker, one_line
from .scans import CohortError, Job

logger = logging.getLogger(__name__)

__all__ = ["MISSING_RAY", "connect", "import_ray", "run_on_ray"]

MISSING_RAY = ("--address needs Ray, which is not installed: pip install "
               "'napari-medsam[server]'")


def import_ray():
    """The ``ray`` module, or a :class:`CohortError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise CohortError(MISSING_RAY) from exc
    return ray


def connect(ray, address: str) -> bool:
    """Connect to Ray at ``address``; True when this call started (and owns) a local Ray.

    ``local`` starts a private Ray on this machine, bound to 127.0.0.1, without the
    dashboard; ``auto`` joins the cluster this machine belongs to; ``ray://HOST:PORT``
    connects through Ray Client. ``$NAPARI_MEDSAM_CACHE``, when set, is passed to every
    task (on a cluster it must name storage all nodes share).
    """
    if ray.is_initialized():  # e.g. a script that called ray.init() itself: use that one
        logger.info("using the Ray this process is already connected to")
        return False
    env = {CACHE_ENV: os.environ[CACHE_ENV]} if os.environ.get(CACHE_ENV) else {}
    options: dict[str, Any] = {
        "log_to_driver": logging.getLogger("napari_medsam").isEnabledFor(logging.INFO),
        "logging_level": logging.WARNING,
        "runtime_env": {"env_vars": env} if env else None,
    }
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                     **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise CohortError(f"--address {address}: cannot start or reach Ray "
                          f"({one_line(exc)})") from exc
    return address == "local"


def _scan_task(job_func: Callable, job: Job, settings: Any) -> Outcome:
    """The body of one Ray task: the job function with where it runs."""
    import ray

    context = ray.get_runtime_context()
    ran_on = {**local_worker(), "ray": {"node_id": context.get_node_id(),
                                        "worker_id": context.get_worker_id(),
                                        "task_id": context.get_task_id()}}
    return job_func(job, settings, ran_on)


def run_on_ray(jobs: Sequence[Job], job_func: Callable, settings: Any, address: str,
               cpus: int, report: Callable[[Outcome], None]) -> list[Outcome]:
    """Run every job as one Ray task with ``cpus`` CPUs (see :func:`.run.run_jobs`)."""
    ray = import_ray()
    owned = connect(ray, address)
    try:
        task = ray.remote(num_cpus=cpus, max_retries=0)(_scan_task)
        begin = time.perf_counter()
        pending = {task.remote(job_func, job, settings): i for i, job in enumerate(jobs)}
        outcomes: list[Outcome | None] = [None] * len(jobs)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    outcomes[i] = _result(ray, ref, jobs[i], begin)
                    report(outcomes[i])
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)
            raise
        return [o for o in outcomes if o is not None]
    finally:
        if owned:
            ray.shutdown()


def _result(ray, ref, job: Job, begin: float) -> Outcome:
    """The task's outcome, or a failed one when the task itself died (worker crash)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        return Outcome(job.name, job.image, FAILED, f"the Ray task failed: {one_line(exc)}",
                       time.perf_counter() - begin, "a Ray worker (it died)")
