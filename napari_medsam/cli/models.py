"""``napari-medsam models``: list known models and whether they are exported."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``models`` to ``napari-medsam``'s sub-command parsers."""
    p = subparsers.add_parser("models", help="list known models and whether they are exported")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam models``; returns the exit code."""
    from napari_medsam.engine.model_files import ModelFileError, verify_model_files
    from napari_medsam.models.registry import list_specs

    for spec in list_specs():
        try:
            verify_model_files(spec)
            state = "ready"
        except ModelFileError:
            state = "not exported"
        print(f"{spec.name:20s} {state:13s} input {spec.input_size} px, prompts: "
              f"{', '.join(spec.prompts)}  [{spec.directory}]")
    return 0
