"""The remote backend: the encoder runs on a ``napari-medsam serve`` server, the decoder here.

:class:`RemotePromptModel` implements :class:`~.protocol.PromptModel`. A new slice is
preprocessed here (the same code as the local engine), sent to the server, and its embedding
comes back as float16 (:mod:`.remote_wire`); every prompt is then decoded by the local ONNX
Runtime decoder (about 20 ms on a CPU), so a prompt never waits for the network. The
embeddings land in the same memory and disk caches as local ones.

Only the standard library talks to the server (``urllib``): the client needs no Ray, torch
or web framework. Faults are handled once, here: a timeout on every request, one retry
after a dropped connection or a server error, then one :class:`RemoteError` whose message
names the server and the fix. An embedding is returned only when it arrived whole and has
the model's shape, so a fault never leaves a partial embedding in a cache.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medsam.models.registry import ModelSpec, get_spec

from . import remote_wire as wire
from .protocol import Box, Click, Embedding, Prediction

if TYPE_CHECKING:
    from .onnx_model import OnnxPromptModel

logger = logging.getLogger(__name__)

#: Environment variable holding the API key when none is given.
API_KEY_ENV = "NAPARI_MEDSAM_API_KEY"
#: Seconds a request may take (a first slice may wait for a replica to start).
DEFAULT_TIMEOUT = 60.0
#: Seconds before the one retry.
RETRY_DELAY = 1.0
_RETRY_STATUS = {500, 502, 503, 504}


class RemoteError(RuntimeError):
    """The server cannot be used (unreachable, refused, or another model); the message
    names the server and the fix."""


def encoder_identity(spec: ModelSpec) -> dict[str, Any]:
    """What the embeddings of ``spec``'s encoder depend on, comparable across machines.

    The encoder file's sha256 differs between exports on different CPUs, so identity is the
    encoder model's name, its input and embedding sizes, and a digest of its reference
    fingerprint (what the encoder computes on the fixed smoke input; every model file is
    checked against it when it is opened).
    """
    owner = spec if spec.encoder_model == spec.name else get_spec(spec.encoder_model)
    reference = {k: v for k, v in owner.fingerprint.items() if k.startswith("encoder")}
    digest = hashlib.sha256(json.dumps(reference, sort_keys=True).encode()).hexdigest()
    return {"name": owner.name, "input_size": owner.input_size,
            "embedding_shape": list(owner.embedding_shape), "fingerprint": digest[:16]}


def mismatch(local: dict[str, Any], served: dict[str, Any]) -> str | None:
    """Why a served encoder cannot feed the local decoder, or None when it can."""
    for key in ("name", "input_size", "embedding_shape", "fingerprint"):
        if local.get(key) != served.get(key):
            return (f"the server runs the encoder of {served.get('name')!r} "
                    f"({key} {served.get(key)}), this client decodes for "
                    f"{local.get('name')!r} ({key} {local.get(key)})")
    return None


def read_api_key(path: str | os.PathLike | None = None) -> str | None:
    """The API key from ``path`` (first line), else ``$NAPARI_MEDSAM_API_KEY``, else None.

    Raises
    ------
    RemoteError
        When the file cannot be read or is empty.
    """
    if path is None:
        return os.environ.get(API_KEY_ENV) or None
    try:
        key = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise RemoteError(f"cannot read the API key file {path}: {exc.strerror}") from None
    if not key:
        raise RemoteError(f"the API key file {path} is empty")
    return key.splitlines()[0].strip()


class ServerClient:
    """HTTP calls to one server, with a timeout, one retry and clear errors."""

    def __init__(self, url: str, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"server {url!r}: give an http:// or https:// address, e.g. "
                              "http://gpu-box:8000")
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        #: Bytes sent and received so far (for the benchmark and the status line).
        self.bytes_sent = 0
        self.bytes_received = 0

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[bytes, Mapping[str, str]]:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=dict(headers or {}))
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read(), response.headers  # names looked up ignoring case

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[bytes, Mapping[str, str]]:
        """The response body and headers; one retry after a dropped connection or a 5xx.

        Raises
        ------
        RemoteError
            401 (wrong or missing key), another 4xx, or a fault that the retry did not cure.
        """
        for attempt in (1, 2):
            try:
                data, reply = self._request(method, path, body, headers)
            except urllib.error.HTTPError as exc:
                detail = _detail(exc)
                if exc.code == 401:
                    raise RemoteError(f"server {self.url} refused the API key ({detail}): "
                                      "give the right one with --api-key-file or "
                                      f"${API_KEY_ENV}") from None
                if exc.code not in _RETRY_STATUS or attempt == 2:
                    raise RemoteError(f"server {self.url}{path}: HTTP {exc.code} {detail}"
                                      f"{_fallback_hint()}") from None
                why = f"HTTP {exc.code} {detail}"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                why = str(reason) or type(exc).__name__
                if attempt == 2:
                    raise RemoteError(f"server {self.url} did not answer ({why}; tried "
                                      f"twice){_fallback_hint()}") from None
            else:
                self.bytes_sent += len(body or b"")
                self.bytes_received += len(data)
                return data, reply
            logger.warning("server %s: %s; retrying once", self.url, why)
            time.sleep(RETRY_DELAY)
        raise AssertionError("unreachable")  # the loop returns or raises

    def info(self) -> dict[str, Any]:
        """``GET /v1/models``: the served model, its precision and the package version."""
        data, _ = self.call("GET", "/v1/models")
        try:
            info = json.loads(data)
            info["models"][0]["name"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RemoteError(f"{self.url} is not a napari-medsam server (GET /v1/models "
                              "answered something else)") from None
        return info


def fetch_model_files(client: ServerClient, spec: ModelSpec) -> list[Path]:
    """Download the files of the served model that are missing here; the paths written.

    A laptop that never exported the model (no torch) gets ``encoder.onnx`` and
    ``decoder.onnx`` from the server it uses. Each file is checked against the sha256 the
    server sends, written beside its final name and moved into place, so a broken transfer
    leaves nothing behind; the engine then verifies it like any other file (the registry's
    sha256, or the model's fingerprint on the smoke input), so a server cannot hand out
    another model's weights. Files already here are never replaced.

    Raises
    ------
    RemoteError
        When a download fails or does not match its sha256.
    """
    from napari_medsam.models.registry import ROLES

    owner = spec if spec.encoder_model == spec.name else get_spec(spec.encoder_model)
    written = []
    for role in ROLES:
        path = owner.path(role)
        if path.is_file():
            continue
        data, reply = client.call("GET", f"/v1/models/{owner.name}/files/{role}")
        expected = reply.get("X-Sha256")
        if hashlib.sha256(data).hexdigest() != expected:
            raise RemoteError(f"server {client.url}: {path.name} of {owner.name} arrived "
                              "damaged (sha256 differs); try again")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise RemoteError(f"cannot write {path}: {exc.strerror}") from None
        logger.info("%s: %s fetched from %s (%d bytes)", owner.name, path.name, client.url,
                    len(data))
        written.append(path)
    return written


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("detail", exc.reason))
    except (ValueError, OSError, AttributeError):
        return str(exc.reason)


def _fallback_hint() -> str:
    return (". Fix: check that `napari-medsam serve` runs there, or run on this computer "
            "(widget: 'Run here' in the Speed panel; command line: without --server)")


class RemotePromptModel:
    """A :class:`~.protocol.PromptModel` whose encoder runs on a server.

    Parameters
    ----------
    spec
        The registry entry of the model to decode with (an adapted model works too: the
        server runs the encoder it shares with its base model).
    server
        The server's address, e.g. ``http://127.0.0.1:8000``.
    api_key
        Sent as ``Authorization: Bearer``; default ``$NAPARI_MEDSAM_API_KEY``.
    timeout
        Seconds a request may take.
    threads, auto_export
        For the local decoder (see :class:`~.onnx_model.OnnxPromptModel`).
    local
        A local model whose decoder (and preprocessing) to use instead of opening one: an
        :class:`~.onnx_model.OnnxPromptModel` of the same ``spec`` (the tests and the
        benchmark share one between clients).

    Raises
    ------
    RemoteError
        When the server cannot be reached, refuses the key, speaks another protocol, or
        runs another model's encoder than this decoder's (the message names both).
    """

    def __init__(self, spec: ModelSpec, server: str, *, api_key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, threads: int | None = None,
                 auto_export: bool = True, local: OnnxPromptModel | None = None) -> None:
        from napari_medsam import __version__

        from .onnx_model import OnnxPromptModel

        self.spec = spec
        self.name = spec.name
        self.client = ServerClient(server, api_key=api_key or read_api_key(),
                                   timeout=timeout)
        info = self.client.info()
        if info.get("protocol") != wire.PROTOCOL:
            raise RemoteError(f"server {server} speaks protocol {info.get('protocol')}, this "
                              f"client {wire.PROTOCOL}: install the same napari-medsam on both")
        served = info["models"][0]
        why = mismatch(encoder_identity(spec), served)
        if why:
            raise RemoteError(f"server {server} cannot be used for {spec.name}: {why}")
        if info.get("package") != __version__:
            logger.warning("server %s runs napari-medsam %s, this client %s", server,
                           info.get("package"), __version__)
        self.served = served
        self.precision = str(served.get("precision", "f32"))
        self._where = f"{served.get('device', '?')} at {self.client.url}"
        if local is None:
            fetch_model_files(self.client, spec)  # a laptop that never exported the model
            local = OnnxPromptModel(spec, "cpu", threads=threads, auto_export=auto_export)
        self.local = local

    # -- what the Protocol reports -----------------------------------------------------

    @property
    def providers(self) -> list[str]:
        return ["remote"]

    @property
    def device_name(self) -> str:
        return f"server ({self._where})"

    @property
    def server(self) -> str:
        return self.client.url

    @property
    def batch_encoder(self) -> None:
        """Batching happens on the server, across clients."""
        return None

    @property
    def async_encoder(self) -> None:
        return None

    # -- encoding on the server ----------------------------------------------------------

    def preprocess(self, image2d: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        return self.local.preprocess(image2d)

    def encode(self, tensor: np.ndarray) -> np.ndarray:
        """The server's embedding ``[1, C, E, E]`` (float16) of a preprocessed slice.

        Raises
        ------
        RemoteError
            When the server fails twice or answers something that is not a whole
            embedding.
        """
        body, headers = wire.pack(tensor, "float32")
        headers["Content-Type"] = "application/octet-stream"
        data, reply = self.client.call("POST", f"/v1/embed/{self.served['name']}", body,
                                       headers)
        try:
            features = wire.unpack(data, reply)
        except wire.WireError as exc:
            raise RemoteError(f"server {self.client.url} sent a broken embedding: {exc}") \
                from None
        expected = (1, *self.served["embedding_shape"])
        if features.shape != expected:
            raise RemoteError(f"server {self.client.url} sent an embedding of shape "
                              f"{features.shape}, expected {expected}")
        return features

    def embed_preprocessed(self, tensor: np.ndarray, original_size: tuple[int, int],
                           resized_size: tuple[int, int]) -> Embedding:
        return Embedding(features=self.encode(tensor), original_size=tuple(original_size),
                         resized_size=tuple(resized_size), input_size=self.spec.input_size,
                         model=self.spec.encoder_model)

    def embed(self, image2d: np.ndarray) -> Embedding:
        tensor, resized = self.preprocess(image2d)
        return self.embed_preprocessed(tensor, np.shape(image2d), resized)

    # -- decoding here -------------------------------------------------------------------

    def predict(self, embedding: Embedding, *, box: Box | None = None,
                points: Sequence[Click] | None = None,
                mask_input: np.ndarray | None = None) -> Prediction:
        return self.local.predict(embedding, box=box, points=points, mask_input=mask_input)

    def with_decoder(self, path: str | Path) -> RemotePromptModel:
        """This model with another local decoder file (the server's encoder shared)."""
        import copy

        other = copy.copy(self)
        other.local = self.local.with_decoder(path)
        return other
