"""``napari-medsam serve``: run the encoder as a Ray Serve deployment for remote clients.

::

    napari-medsam serve [--address auto|local|ray://HOST:PORT] [--host 127.0.0.1] [--port 8000]
                        [--replicas N|auto] [--max-batch 16] [--batch-wait-ms 10]
                        [--api-key-file F] [--model NAME] [--backend ...] [--device ...]

Clients use it with ``--backend remote --server http://HOST:PORT`` (or ``--server`` alone).
Bound to 127.0.0.1 unless told otherwise; any other address needs ``--api-key-file``.
Runs until Ctrl-C, which removes the deployment (and stops Ray when it started it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ._common import EXIT_USAGE, CliError

logger = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``serve`` to ``napari-medsam``'s sub-command parsers."""
    from napari_medsam.engine.backends import BACKENDS, PRECISIONS, REMOTE
    from napari_medsam.engine.providers import DEVICES

    p = subparsers.add_parser(
        "serve", help="serve the image encoder to remote clients (Ray Serve)",
        description="Run the model's image encoder as a Ray Serve deployment; clients keep "
                    "the decoder and connect with --backend remote --server URL (see "
                    "docs/server.md). Needs: pip install 'napari-medsam[server]'.")
    p.add_argument("--address", default="auto",
                   help="Ray cluster to join: auto (the one this machine is part of, else a "
                        "new local one), local (always a new one on this machine) or "
                        "ray://HOST:PORT")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the HTTP server listens on (default 127.0.0.1: this "
                        "machine only; anything else needs --api-key-file)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", default="1",
                   help="encoder replicas, or auto (one per GPU of the cluster, autoscaled)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="most slices the encoder runs in one call")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long to gather concurrent requests into one batch")
    p.add_argument("--api-key-file", help="file whose first line is the key clients must "
                                          "send")
    p.add_argument("--model", default="litemedsam")
    p.add_argument("--backend", default="auto",
                   choices=[b for b in BACKENDS if b != REMOTE])
    p.add_argument("--device", default="auto", choices=list(DEVICES))
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    p.add_argument("--threads", type=int, help="CPU threads per replica")
    p.set_defaults(func=run)
    return p


def _config(args: argparse.Namespace):
    from napari_medsam.engine.remote_model import RemoteError, read_api_key
    from napari_medsam.models.registry import get_spec
    from napari_medsam.server.auth import LOCAL_HOSTS, key_digest
    from napari_medsam.server.encoder import ServerConfig

    if args.replicas != "auto" and not args.replicas.isdigit():
        raise CliError(f"--replicas: a number or auto, got {args.replicas!r}", EXIT_USAGE)
    try:
        key = read_api_key(args.api_key_file) if args.api_key_file else None
    except RemoteError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if key is None and args.host not in LOCAL_HOSTS:
        raise CliError(f"--host {args.host} lets other machines connect: give an API key "
                       "with --api-key-file (or keep the default 127.0.0.1)", EXIT_USAGE)
    try:
        get_spec(args.model)
        return ServerConfig(model=args.model, backend=args.backend, device=args.device,
                            precision=args.precision, threads=args.threads,
                            max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                            key_digest=key_digest(key))
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None


def run(args: argparse.Namespace) -> int:
    """Run ``napari-medsam serve`` until Ctrl-C; returns the exit code."""
    config = _config(args)
    try:
        from napari_medsam.server.run import start_server
    except ImportError as exc:
        raise CliError(f"the server needs Ray Serve ({exc.name} is missing): pip install "
                       "'napari-medsam[server]'") from None
    print(f"starting: {config.model} encoder, {args.replicas} replica(s), batches of up to "
          f"{config.max_batch} ({config.batch_wait_ms:g} ms wait)...", file=sys.stderr)
    replicas = args.replicas if args.replicas == "auto" else int(args.replicas)
    try:
        server = start_server(config, address=args.address, host=args.host, port=args.port,
                              replicas=replicas)
    except (ConnectionError, RuntimeError) as exc:  # no cluster there, or deploy failed
        raise CliError(f"could not start the server: {exc}") from None
    print(f"serving {config.model} at {server.url} (clients: --server {server.url}); "
          "Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        server.stop()
    return 0
