"""The encoder as a Ray Serve deployment with its HTTP routes (needs ``ray[serve]``).

Routes (all need ``Authorization: Bearer KEY`` when the server has a key; a wrong or missing
key gets 401 before anything is read or computed):

- ``GET /v1/models``: protocol, package version, the served encoder (name, input size,
  fingerprint digest, file sha256, precision, device) and the configuration;
- ``POST /v1/embed/{model}``: one preprocessed slice in (:mod:`~napari_medsam.engine.
  remote_wire`, float32), its embedding out (float16). Concurrent requests, from one client
  or many, are gathered by ``@serve.batch`` into one encoder call of up to ``max_batch``
  slices;
- ``GET /v1/stats``: the answering replica's batches by size (how well batching works);
- ``GET /v1/models/{model}/files/{role}``: the served model's ``encoder.onnx`` or
  ``decoder.onnx`` (``X-Sha256`` header), for clients that have not exported the model.

Ray Serve's own proxy answers ``/-/healthz``; each replica's :meth:`EncoderDeployment.
check_health` reports it unhealthy after repeated encoder failures, and Serve replaces it.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (Request)
# at run time, and Serve's class-based routes do not resolve string annotations.
import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from ray import serve

from napari_medsam.engine import remote_wire as wire

from .auth import authorized
from .encoder import ReplicaEncoder, ServerConfig

logger = logging.getLogger(__name__)

#: The Serve application's name (``serve status`` lists it).
APP_NAME = "napari-medsam"
#: Failed encoder batches in a row after which a replica reports itself unhealthy.
UNHEALTHY_AFTER = 3

api = FastAPI(title="napari-medsam encoder server")


@serve.deployment(name="Encoder", health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress(api)
class EncoderDeployment:
    """One replica: the engine's encoder behind HTTP, batching concurrent requests."""

    def __init__(self, config: ServerConfig) -> None:
        logging.basicConfig(level=logging.INFO)
        self.encoder = ReplicaEncoder(config)
        self.name = self.encoder.describe()["models"][0]["name"]
        self.failures = 0
        self.encode_batch.set_max_batch_size(config.max_batch)
        self.encode_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000.0)

    def _authorize(self, request: Request) -> None:
        if not authorized(request.headers.get("authorization"),
                          self.encoder.config.key_digest):
            raise HTTPException(status_code=401, detail="wrong or missing API key")

    @api.get("/v1/models")
    def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.encoder.describe()

    @api.get("/v1/stats")
    def stats(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return self.encoder.stats()

    @api.get("/v1/models/{model}/files/{role}")
    def model_file(self, model: str, role: str, request: Request) -> Response:
        self._authorize(request)
        if model != self.name:
            raise HTTPException(status_code=404, detail=f"this server runs {self.name!r}, "
                                f"not {model!r}")
        try:
            data, digest = self.encoder.model_file(role)
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from None
        return Response(content=data, headers={"X-Sha256": digest},
                        media_type="application/octet-stream")

    @api.post("/v1/embed/{model}")
    async def embed(self, model: str, request: Request) -> Response:
        self._authorize(request)
        if model != self.name:
            raise HTTPException(status_code=404, detail=f"this server runs the encoder of "
                                f"{self.name!r}, not {model!r}")
        body = await request.body()
        try:
            tensor = self.encoder.check(wire.unpack(body, request.headers))
        except ValueError as exc:  # WireError is one too
            raise HTTPException(status_code=400, detail=str(exc)) from None
        features = await self.encode_batch(tensor)
        data, headers = wire.pack(features, "float16")
        return Response(content=data, headers=headers, media_type="application/octet-stream")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def encode_batch(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """Concurrent requests' slices, encoded together off the event loop."""
        try:
            features = await asyncio.to_thread(self.encoder.encode, tensors)
        except Exception:
            self.failures += 1
            logger.exception("encoder batch of %d slice(s) failed", len(tensors))
            raise
        self.failures = 0
        return features

    def check_health(self) -> None:
        """Called by Serve; raising makes it replace this replica."""
        if self.failures >= UNHEALTHY_AFTER:
            raise RuntimeError(f"{self.failures} encoder batches failed in a row")


def replica_options(config: ServerConfig, replicas: int | str,
                    cluster_gpus: float) -> dict[str, Any]:
    """Ray Serve options: one replica per GPU when the cluster has GPUs (and the device is
    not ``cpu``), else CPU replicas of ``config.threads`` (or 1) logical CPUs.

    Parameters
    ----------
    replicas
        A number of replicas, or ``"auto"``: autoscaling between 1 and the number of GPUs
        (1 on a CPU-only cluster).
    cluster_gpus
        GPUs in the Ray cluster (``ray.cluster_resources()["GPU"]``).
    """
    gpus = int(cluster_gpus) if config.device != "cpu" else 0
    actor = {"num_gpus": 1} if gpus else {"num_cpus": config.threads or 1}
    options: dict[str, Any] = {"ray_actor_options": actor,
                               "max_ongoing_requests": max(8, 4 * config.max_batch)}
    if replicas == "auto":
        options["autoscaling_config"] = {"min_replicas": 1, "max_replicas": max(1, gpus),
                                         "target_ongoing_requests": config.max_batch}
    else:
        count = int(replicas)
        if count < 1:
            raise ValueError(f"--replicas must be at least 1 (or auto), got {replicas}")
        options["num_replicas"] = count
    return options


def build_app(config: ServerConfig, replicas: int | str = 1, cluster_gpus: float = 0.0):
    """The Serve application to pass to ``serve.run``."""
    return EncoderDeployment.options(
        **replica_options(config, replicas, cluster_gpus)).bind(config)
