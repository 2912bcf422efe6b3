"""What every ``napari-medsam`` command shares: exit codes, the one-line error, Ctrl-C,
progress on stderr and the options several commands take."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def run_command(command: str, func: Callable[[], int | None]) -> int:
    """Run one command: its exit code, or one line on stderr instead of a traceback."""
    try:
        return int(func() or 0)
    except CliError as exc:
        print(f"napari-medsam {command}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; outputs are written last
        clear = "\r\033[K" if sys.stderr.isatty() else ""
        print(f"{clear}napari-medsam {command}: interrupted (Ctrl-C); no output was "
              "written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a clear one-line message instead of a traceback
        from napari_medsam.engine import ModelFileError, PromptError
        from napari_medsam.engine.remote_model import RemoteError

        if isinstance(exc, ModelFileError | PromptError | RemoteError | FileNotFoundError
                      | ValueError):
            print(f"napari-medsam {command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


class StderrProgress:
    """Progress on stderr without extra dependencies.

    On a terminal one status line is rewritten in place; otherwise (a log file, a pipe) the
    finished steps are printed, plus an intermediate status at most every ``every`` seconds.
    """

    def __init__(self, stream: TextIO | None = None, every: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(self.stream.isatty())
        self.every = every
        self._last = time.monotonic()
        self._open = False

    def __call__(self, message: str, done: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + message + ("\n" if done else ""))
            self._open = not done
        elif done or time.monotonic() - self._last >= self.every:
            self.stream.write(message + "\n")
            self._last = time.monotonic()
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def open_model(name: str, device: str, backend: str = "auto", precision: str = "auto", *,
               server: str | None = None, api_key_file: str | None = None,
               threads: int | None = None):
    """The engine's model, with unknown names and impossible combinations as usage errors
    and an unusable server as one clear error."""
    from napari_medsam.engine import load_model
    from napari_medsam.engine.remote_model import RemoteError, read_api_key

    try:
        api_key = read_api_key(api_key_file) if api_key_file else None
        return load_model(name, device, backend=backend, precision=precision, server=server,
                          api_key=api_key, threads=threads)
    except KeyError as exc:  # unknown registry name: the message lists the known ones
        raise CliError(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from exc
    except ValueError as exc:  # e.g. --backend openvino with --device cuda
        raise CliError(str(exc), EXIT_USAGE) from exc
    except RemoteError as exc:  # unreachable, wrong key, another model
        raise CliError(str(exc)) from None


def open_args_model(args: argparse.Namespace, threads: int | None = None):
    """:func:`open_model` for a command with :func:`add_backend_options`."""
    return open_model(args.model, args.device, args.backend, args.precision,
                      server=args.server, api_key_file=args.api_key_file, threads=threads)


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision``, ``--server`` and ``--api-key-file``."""
    from napari_medsam.engine.backends import BACKENDS, PRECISIONS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="inference backend (auto: ONNX Runtime on a CUDA GPU, else OpenVINO "
                        "when installed, else ONNX Runtime on the CPU; remote: the encoder "
                        "on a napari-medsam server, see --server)")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="OpenVINO CPU precision (auto = f32; bf16 is faster but moves masks)")
    add_server_options(p)


def add_server_options(p: argparse.ArgumentParser) -> None:
    """``--server`` and ``--api-key-file``: the encoder on a ``napari-medsam serve``."""
    p.add_argument("--server", help="a `napari-medsam serve` address, e.g. "
                                    "http://gpu-box:8000: the encoder runs there, the decoder "
                                    "here (implies --backend remote)")
    p.add_argument("--api-key-file", help="file holding the server's API key (default: "
                                          "$NAPARI_MEDSAM_API_KEY)")


def api_key(args: argparse.Namespace) -> str | None:
    """The key of ``--api-key-file`` (None without it: the environment's is used)."""
    from napari_medsam.engine.remote_model import RemoteError, read_api_key

    try:
        return read_api_key(args.api_key_file) if args.api_key_file else None
    except RemoteError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def add_slice_gaps_option(p: argparse.ArgumentParser) -> None:
    """``--slice-gaps error|fill``: DICOM series with missing slices."""
    p.add_argument("--slice-gaps", default="error", choices=["error", "fill"],
                   help="a DICOM series with missing slices: refuse it (error, default), or "
                        "open it with blank slices at the missing positions (fill)")


def add_zoom_option(p: argparse.ArgumentParser) -> None:
    """``--zoom auto|off``: small boxes segmented in a zoomed crop (issue 8)."""
    p.add_argument("--zoom", default="auto", choices=["auto", "off"],
                   help="auto: segment boxes that are small relative to the slice in a zoomed "
                        "crop (one more encoder run per new region); off: whole slices only")


def intensity_mapping(volume, window: str | None):
    """``--window`` as a mapping (default: automatic, as the viewer opens the image); an
    unknown name is a usage error."""
    from napari_medsam.cohort.jobs import default_mapping

    try:
        return default_mapping(volume, window)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc


def parse_labels(text: str | None) -> list[int] | None:
    """``--labels 1,2,5`` as label values (None when not given)."""
    if not text:
        return None
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError as exc:
            raise CliError(f"--labels: {part!r} is not a whole number (use e.g. 1,2,5)",
                           EXIT_USAGE) from exc
        if value <= 0:
            raise CliError(f"--labels: label values are >= 1, got {value}", EXIT_USAGE)
        values.append(value)
    if not values:
        raise CliError("--labels is empty (use e.g. 1,2,5)", EXIT_USAGE)
    return values


def check_json_folder(path: str | None) -> None:
    """``--json PATH``: its folder must exist before any work."""
    if path and not Path(path).expanduser().parent.is_dir():
        raise CliError(f"--json {path}: folder does not exist", EXIT_USAGE)


def duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
