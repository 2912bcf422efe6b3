"""The encoder server against the local engine, in one run on one machine.

    python benchmarks/server_throughput.py [--slices 24] [--clients 1,2,4] [--backend auto]
        [--max-batch 16] [--batch-wait-ms 10] [--json F]

A local Ray head (127.0.0.1) serves the encoder with the same backend as the local
reference. For the local engine and then for 1, 2 and 4 concurrent remote clients (each
embedding the same real CT and MRI slices), it reports slices per second, latency p50/p95
per slice, the bytes on the wire per slice, the time to pack and unpack them, the batch
sizes the server formed, and the largest difference between remote and local embeddings.
On a machine with few cores the server shares them with the clients: the point is the cost
of the network path (target: one remote client <= 1.3x the local time per slice).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src_tests"))


def _slices(count: int) -> list[np.ndarray]:
    from helpers import load_case

    out = []
    for case in ("totalseg_ct_abdomen_sm", "totalseg_mr_abdomen_sm"):
        _, _, mapped = load_case(case)
        picks = np.linspace(0, len(mapped) - 1, count // 2).astype(int)
        out.extend(mapped[i] for i in picks)
    return out


def _timed(embed, images) -> tuple[list[float], list]:
    latencies, results = [], []
    for image in images:
        start = time.perf_counter()
        results.append(embed(image))
        latencies.append(time.perf_counter() - start)
    return latencies, results


def _row(name: str, wall: float, latencies: list[float], slices: int) -> dict:
    ordered = sorted(latencies)
    return {"config": name, "slices": slices, "wall_s": round(wall, 2),
            "slices_per_s": round(slices / wall, 2),
            "p50_ms": round(statistics.median(ordered) * 1e3, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3, 1)}


def _stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/stats", timeout=30) as response:
        return json.loads(response.read())


def _wire_cost(model, image) -> dict:
    from napari_medsam.engine import remote_wire as wire

    tensor, _ = model.preprocess(image)
    features = model.embed(image).features
    t0 = time.perf_counter()
    up, up_headers = wire.pack(tensor, "float32")
    t1 = time.perf_counter()
    down, down_headers = wire.pack(features, "float16")
    t2 = time.perf_counter()
    wire.unpack(down, down_headers)
    t3 = time.perf_counter()
    return {"request_bytes": len(up), "request_raw_bytes": tensor.nbytes,
            "response_bytes": len(down), "response_raw_bytes": features.nbytes // 2,
            "pack_request_ms": round((t1 - t0) * 1e3, 2),
            "pack_response_ms": round((t2 - t1) * 1e3, 2),
            "unpack_response_ms": round((t3 - t2) * 1e3, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from napari_medsam.engine import load_model
    from napari_medsam.engine.remote_model import RemotePromptModel
    from napari_medsam.models.registry import get_spec
    from napari_medsam.server.encoder import ServerConfig
    from napari_medsam.server.run import start_server

    images = _slices(args.slices)
    local = load_model("litemedsam", "cpu", backend=args.backend)
    local.embed(images[0])  # compile/warm up outside the timings
    start = time.perf_counter()
    latencies, reference = _timed(local.embed, images)
    rows = [_row(f"local ({local.device_name})", time.perf_counter() - start, latencies,
                 len(images))]
    wire_cost = _wire_cost(local, images[0])

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(backend=args.backend, device="cpu", max_batch=args.max_batch,
                          batch_wait_ms=args.batch_wait_ms)
    t0 = time.perf_counter()
    server = start_server(config, address="local", port=port)
    start_s = time.perf_counter() - t0
    worst = 0.0
    batches = {}
    try:
        for count in (int(c) for c in args.clients.split(",")):
            clients = [RemotePromptModel(get_spec("litemedsam"), server.url, local=local)
                       for _ in range(count)]
            clients[0].embed(images[0])  # the replica's first call
            before = _stats(server.url)["batches"]
            start = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                runs = list(pool.map(lambda c: _timed(c.embed, images), clients))
            wall = time.perf_counter() - start
            rows.append(_row(f"remote, {count} client(s)", wall,
                             [t for lat, _ in runs for t in lat], count * len(images)))
            after = _stats(server.url)["batches"]
            batches[count] = {k: v - before.get(k, 0) for k, v in after.items()
                              if v - before.get(k, 0)}
            for _, results in runs:
                for got, want in zip(results, reference, strict=True):
                    scale = float(np.abs(want.features).max())
                    diff = np.abs(got.features.astype(np.float32) - want.features).max()
                    worst = max(worst, float(diff) / scale)
    finally:
        server.stop()

    local_ms = 1e3 / rows[0]["slices_per_s"]
    one = rows[1]
    report = {"rows": rows, "batches_by_clients": batches, "wire": wire_cost,
              "max_diff_of_range": worst, "server_start_s": round(start_s, 1),
              "remote_1_client_vs_local": round(1e3 / one["slices_per_s"] / local_ms, 3),
              "backend": local.device_name}
    print(f"{'config':32s} {'slices/s':>9s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for row in rows:
        print(f"{row['config']:32s} {row['slices_per_s']:9.2f} {row['p50_ms']:8.1f} "
              f"{row['p95_ms']:8.1f}")
    print(f"remote (1 client) / local time per slice: {report['remote_1_client_vs_local']}")
    print(f"wire per slice: {wire_cost['request_bytes']} B up (raw "
          f"{wire_cost['request_raw_bytes']}), {wire_cost['response_bytes']} B down (float16 "
          f"raw {wire_cost['response_raw_bytes']}); pack/unpack "
          f"{wire_cost['pack_request_ms']}/{wire_cost['pack_response_ms']}/"
          f"{wire_cost['unpack_response_ms']} ms")
    print(f"batches by size, per client count: {batches}")
    print(f"largest remote-local difference: {worst:.2e} of the embedding's range")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
