"""How arrays travel between the remote client and the server (stdlib and numpy only).

An array is sent as its bytes, described by four headers: ``X-Shape`` (``"1,3,256,256"``),
``X-Dtype`` (``"float32"`` or ``"float16"``), ``X-Repeat`` (how many times the sent array
repeats along axis 1: the preprocessed slice of a grey scan has three equal channels, so one
is sent) and ``X-Split``.

- float32 (the client's preprocessed encoder input; the server then runs exactly what the
  local engine would): zlib level 1, which squeezes the zero padding (786 KB -> ~47 KB for
  a LiteMedSAM slice, ~2 ms).
- float16 (the embedding, at the precision the memory and disk caches keep anyway): its
  mantissa bytes are near random, so whole-array zlib saves 8 % for ~45 ms. Only the plane
  of high bytes (sign, exponent, top mantissa bits) is compressed and the low bytes follow
  raw; ``X-Split`` is the compressed plane's length (2.10 MB -> ~1.75 MB, ~17 ms).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

#: What the protocol's version is; the client refuses a server that speaks another one.
PROTOCOL = 1
#: zlib level: 1 compresses the zero padding of a preprocessed slice and costs little.
LEVEL = 1
SHAPE, DTYPE, REPEAT, SPLIT = "X-Shape", "X-Dtype", "X-Repeat", "X-Split"
_DTYPES = {"float32": np.float32, "float16": np.float16}
#: The largest array the server or client unpacks (a [16, 3, 1024, 1024] float32 batch).
MAX_BYTES = 16 * 3 * 1024 * 1024 * 4


class WireError(ValueError):
    """A body or its headers do not describe a valid array."""


def pack(array: np.ndarray, dtype: str = "float32") -> tuple[bytes, dict[str, str]]:
    """``array`` as ``(body, headers)``; equal channels along axis 1 are sent once."""
    arr = np.ascontiguousarray(array, dtype=_DTYPES[dtype])
    repeat = 1
    if arr.ndim == 4 and arr.shape[1] > 1 and all(
            np.array_equal(arr[:, 0], arr[:, c]) for c in range(1, arr.shape[1])):
        repeat, arr = arr.shape[1], np.ascontiguousarray(arr[:, :1])
    headers = {SHAPE: ",".join(str(v) for v in arr.shape), DTYPE: dtype, REPEAT: str(repeat)}
    if arr.dtype != np.float16:
        headers[SPLIT] = "0"
        return zlib.compress(arr.tobytes(), LEVEL), headers
    planes = arr.reshape(-1).view(np.uint8).reshape(-1, 2)  # little-endian: [low, high]
    high = zlib.compress(np.ascontiguousarray(planes[:, 1]).tobytes(), LEVEL)
    headers[SPLIT] = str(len(high))
    return high + np.ascontiguousarray(planes[:, 0]).tobytes(), headers


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)  # the servers' and urllib's headers ignore case
    if value is None:
        raise WireError(f"header {name} is missing")
    return value


def unpack(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    """The array that :func:`pack` sent (a copy the caller owns).

    ``headers`` as :func:`pack` gave them, or as an HTTP library delivers them (Starlette's
    and urllib's mappings look names up without regard to case).

    Raises
    ------
    WireError
        When the headers are missing or wrong, or the body does not hold the array.
    """
    try:
        shape = tuple(int(v) for v in _header(headers, SHAPE).split(","))
        dtype = _DTYPES[_header(headers, DTYPE)]
        repeat = int(_header(headers, REPEAT))
        split = int(_header(headers, SPLIT))
    except (KeyError, ValueError) as exc:
        raise WireError(f"bad array headers: {exc}") from None
    if not shape or min(shape) < 1 or repeat < 1:
        raise WireError(f"bad array shape {shape} (repeat {repeat})")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if expected * repeat > MAX_BYTES:
        raise WireError(f"array of shape {shape} is larger than {MAX_BYTES} bytes")
    if split and (dtype is not np.float16 or not 0 < split < len(body)):
        raise WireError(f"bad {SPLIT} {split} for a {len(body)}-byte {dtype.__name__} body")
    try:
        raw = zlib.decompressobj().decompress(body[:split] if split else body,
                                              (expected // 2 if split else expected) + 1)
    except zlib.error as exc:
        raise WireError(f"body is not zlib data: {exc}") from None
    if split:
        low = np.frombuffer(body, dtype=np.uint8, offset=split)
        if len(raw) != expected // 2 or len(low) != expected // 2:
            raise WireError(f"body holds {len(raw)} + {len(low)} bytes, shape {shape} needs "
                            f"{expected // 2} + {expected // 2} (truncated or wrong)")
        raw = np.stack([low, np.frombuffer(raw, dtype=np.uint8)], axis=1).tobytes()
    elif len(raw) != expected:
        raise WireError(f"body holds {len(raw)} bytes, shape {shape} needs {expected} "
                        "(truncated or wrong)")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if repeat > 1:
        arr = np.repeat(arr, repeat, axis=1)
    return arr.copy()
