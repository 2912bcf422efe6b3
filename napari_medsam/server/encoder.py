"""What one server replica runs: the local engine's encoder, a batch of slices at a time.

No Ray here: :class:`ReplicaEncoder` is the engine's model plus bookkeeping, so that the
deployment in :mod:`.app` stays a thin HTTP and batching layer and this part is tested on
its own. A replica runs the same ONNX files and the same engine as a local session; the
client preprocesses the slice with the same code, so remote and local embeddings are equal.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_medsam.engine.backends import REMOTE
from napari_medsam.engine.model_files import file_digest
from napari_medsam.engine.remote_model import encoder_identity
from napari_medsam.engine.remote_wire import PROTOCOL
from napari_medsam.models.registry import ROLES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How ``napari-medsam serve`` runs its replicas (shipped to each one by Ray).

    Attributes
    ----------
    model
        Registry name of the model whose encoder is served (an adapted model's base).
    backend, device, precision, threads
        As for :func:`napari_medsam.engine.load_model` (``remote`` is refused).
    max_batch, batch_wait_ms
        Dynamic batching: at most this many slices per encoder call, gathered for at most
        this long.
    key_digest
        sha256 of the API key, or None (no key: only allowed on a local address).
    """

    model: str = "litemedsam"
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    max_batch: int = 16
    batch_wait_ms: float = 10.0
    key_digest: str | None = None

    def __post_init__(self) -> None:
        if self.backend == REMOTE:
            raise ValueError("a server runs its encoder itself: --backend remote is for "
                             "clients")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")

    def public(self) -> dict[str, Any]:
        """The configuration without the key's digest (for /v1/models)."""
        data = asdict(self)
        data.pop("key_digest")
        return data


class ReplicaEncoder:
    """The model of one replica and what it has encoded.

    Parameters
    ----------
    config
        The server's configuration; the model is loaded here (on the replica's machine).
    """

    def __init__(self, config: ServerConfig) -> None:
        from napari_medsam import __version__
        from napari_medsam.engine import load_model
        from napari_medsam.models.registry import get_spec

        spec = get_spec(config.model)
        if spec.encoder_model != spec.name:  # serve the base encoder an adapted model shares
            spec = get_spec(spec.encoder_model)
        self.config = config
        self.spec = spec
        self.model = load_model(spec.name, config.device, backend=config.backend,
                                precision=config.precision, threads=config.threads)
        self.size = spec.input_size
        self.batches: Counter[int] = Counter()
        self.slices = 0
        self.encode_s = 0.0
        self._lock = threading.Lock()
        self._info = {
            **encoder_identity(spec),
            "display_name": spec.display_name,
            "encoder_sha256": file_digest(spec.path("encoder")),
            "precision": self.model.precision,
            "device": self.model.device_name,
            "providers": self.model.providers,
        }
        self._package = __version__
        logger.info("replica ready: %s on %s", spec.name, self.model.device_name)

    def model_file(self, role: str) -> tuple[bytes, str]:
        """The bytes and sha256 of the served model's ``encoder`` or ``decoder`` file (so a
        client without them, and without the export extra, can fetch them).

        Raises
        ------
        KeyError
            For another role.
        """
        if role not in ROLES:
            raise KeyError(f"no {role!r} file: the files are {', '.join(ROLES)}")
        data = self.spec.path(role).read_bytes()
        return data, hashlib.sha256(data).hexdigest()  # of the bytes sent, read once

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/models`` answer: the protocol, the package version and the model."""
        return {"protocol": PROTOCOL, "package": self._package, "models": [self._info],
                "config": self.config.public()}

    def stats(self) -> dict[str, Any]:
        """Batches by size, slices and encoder seconds of this replica so far."""
        with self._lock:
            return {"batches": {str(k): v for k, v in sorted(self.batches.items())},
                    "slices": self.slices, "encode_s": round(self.encode_s, 3)}

    def check(self, tensor: np.ndarray) -> np.ndarray:
        """A request's tensor when it is one preprocessed slice ``[1, 3, S, S]``.

        Raises
        ------
        ValueError
            For another shape or values that are not finite.
        """
        expected = (1, 3, self.size, self.size)
        if tensor.shape != expected:
            raise ValueError(f"expected one preprocessed slice {list(expected)}, got "
                             f"{list(tensor.shape)}")
        if not np.isfinite(tensor).all():
            raise ValueError("the slice holds values that are not finite")
        return tensor

    def encode(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """The embeddings ``[1, C, E, E]`` of preprocessed slices, one encoder batch.

        The batched encoder runs them in one call where the model has one that can run
        (ONNX Runtime on a GPU); otherwise the batch-1 encoder runs once per slice (a CPU
        gains nothing from batching). Either gives the local engine's embeddings.
        """
        start = time.perf_counter()
        batch = self.model.batch_encoder
        if batch is not None and batch.batching and len(tensors) > 1:
            stacked = batch.encode_batch(np.concatenate(tensors))
            features = [stacked[i:i + 1] for i in range(len(tensors))]
        else:
            features = [self.model.embed_preprocessed(t, (self.size, self.size),
                                                      (self.size, self.size)).features
                        for t in tensors]
        seconds = time.perf_counter() - start
        with self._lock:
            self.batches[len(tensors)] += 1
            self.slices += len(tensors)
            self.encode_s += seconds
        logger.info("encoded a batch of %d slice(s) in %.0f ms", len(tensors), seconds * 1e3)
        return features
