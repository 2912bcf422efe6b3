"""The command-line options ``embed`` and ``segment`` share for cohorts, and the model
factory their jobs carry (to this process's loop or to every Ray task)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["add_cohort_options", "check_cohort_options", "model_opener"]


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
    from napari_medsam.cli._common import open_model

    return functools.partial(open_model, args.model, args.device, args.backend, args.precision,
                             server=args.server, api_key_file=args.api_key_file,
                             threads=threads)
