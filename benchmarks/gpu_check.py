"""``make gpu-check``: what a machine with an NVIDIA GPU must show, in at most 5 minutes.

    python benchmarks/gpu_check.py [--data ../shared/data] [--json out/gpu_check.json]
        [--device cuda] [--skip-server]

1. ONNX Runtime really runs the model on CUDA (and on TensorRT when its provider is there):
   the providers the sessions report, not the ones asked for.
2. Masks equal the CPU's: the 32 agreement slices of ``bench --agreement`` (CT and MRI, box
   prompts from the references), mask Dice GPU vs CPU (bar 0.99) and the largest
   embedding difference.
3. The bench: encoder and decoder time per slice on the GPU against the CPU, in one run.
4. The batched encoder: 16 slices in batches against one call per slice (same embeddings
   within 1e-3 of their range; slices per second of both).
5. A server with one GPU replica (``napari-medsam serve``'s deployment on a local Ray head):
   two clients, embeddings equal to the local GPU engine's, batches larger than one.

Prints the card (``nvidia-smi``) and every number, writes them as JSON, and exits 1 when a
check fails or when there is no NVIDIA GPU (it says so). ``--device cpu`` runs the same
steps on the CPU: it only checks the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DICE_BAR = 0.99
EMBED_BAR = 1e-3  # of the embedding's range (fp32 kernels differ between CPU and GPU)


def _card() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no nvidia-smi"
    out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def _ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1e3 * float(np.median(times)), 2)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    b = np.asarray(b, dtype=np.float32)
    return float(np.abs(np.asarray(a, dtype=np.float32) - b).max() / np.abs(b).max())


def check_providers(device: str) -> tuple[dict, object]:
    from napari_medsam.engine import load_model
    from napari_medsam.engine.providers import TENSORRT, tensorrt_available

    gpu = load_model("litemedsam", device, backend="onnxruntime")
    result = {"providers": gpu.providers, "device_name": gpu.device_name,
              "tensorrt_offered": bool(tensorrt_available()),
              "ok": device == "cpu" or gpu.on_gpu}
    if device != "cpu" and TENSORRT not in gpu.providers and tensorrt_available():
        result["note"] = "TensorRT is installed but did not run (see the log)"
    return result, gpu


def check_parity(gpu, cpu, slices) -> dict:
    from napari_medsam.bench import mask_agreement

    worst = max(_relative(gpu.embed(s.image).features, cpu.embed(s.image).features)
                for s in slices[:8])
    agreement = mask_agreement(cpu, gpu, slices)
    return {**agreement, "embedding_diff_of_range": worst,
            "ok": agreement["dice_min"] >= DICE_BAR and worst <= EMBED_BAR}


def check_speed(gpu, cpu, slices) -> dict:
    image, box = slices[0].image, slices[0].box
    rows = {}
    for name, model in (("gpu", gpu), ("cpu", cpu)):
        embedding = model.embed(image)
        rows[name] = {"encoder_ms": _ms(lambda m=model: m.embed(image)),
                      "decoder_ms": _ms(lambda m=model, e=embedding: m.predict(e, box=box),
                                        repeats=20)}
    rows["encoder_speedup"] = round(rows["cpu"]["encoder_ms"] / rows["gpu"]["encoder_ms"], 2)
    rows["ok"] = True
    return rows


def check_batched(gpu, slices, count: int = 16) -> dict:
    tensors = np.concatenate([gpu.preprocess(slices[i % len(slices)].image)[0]
                              for i in range(count)])
    gpu.batched_session(export=True)  # exported on first use, as a GPU volume would
    if not gpu.batching:
        return {"ok": False, "why": "the batched encoder cannot run here (no export extra, or "
                                    "it failed: see the log)"}
    batched = gpu.encode_batch(tensors)
    single = np.concatenate([gpu.embed_preprocessed(t[None], (256, 256), (256, 256)).features
                             for t in tensors])
    diff = _relative(batched, single)
    start = time.perf_counter()
    gpu.encode_batch(tensors)
    batch_s = time.perf_counter() - start
    start = time.perf_counter()
    for t in tensors:
        gpu.embed_preprocessed(t[None], (256, 256), (256, 256))
    loop_s = time.perf_counter() - start
    return {"slices": count, "batch_size": gpu.batch_size, "diff_of_range": diff,
            "batched_slices_per_s": round(count / batch_s, 1),
            "loop_slices_per_s": round(count / loop_s, 1), "ok": diff <= EMBED_BAR}


def check_server(gpu, slices, device: str) -> dict:
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from napari_medsam.engine.remote_model import RemotePromptModel
    from napari_medsam.models.registry import get_spec
    from napari_medsam.server.encoder import ServerConfig
    from napari_medsam.server.run import start_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ServerConfig(backend="onnxruntime", device=device, max_batch=8, batch_wait_ms=20)
    server = start_server(config, address="local", port=port, replicas="auto")
    try:
        clients = [RemotePromptModel(get_spec("litemedsam"), server.url, local=gpu)
                   for _ in range(2)]
        images = [s.image for s in slices[:8]]

        def run(client):
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(client.embed, images))

        start = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(run, clients))
        wall = time.perf_counter() - start
        with urllib.request.urlopen(server.url + "/v1/stats", timeout=30) as response:
            stats = json.loads(response.read())
        served = clients[0].served
    finally:
        server.stop()
    diff = max(_relative(e.features, gpu.embed(img).features)
               for run_ in results for e, img in zip(run_, images, strict=True))
    batches = {int(k): v for k, v in stats["batches"].items()}
    return {"replica_device": served.get("device"), "batches": batches,
            "slices_per_s": round(2 * len(images) / wall, 1), "diff_of_range": diff,
            "ok": diff <= EMBED_BAR and max(batches) > 1
            and (device == "cpu" or "CPU" not in str(served.get("device")))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args(argv)

    from napari_medsam.bench import agreement_slices
    from napari_medsam.engine import load_model
    from napari_medsam.engine.providers import cuda_device_count

    card = _card()
    print(f"card: {card}")
    if args.device == "cuda" and cuda_device_count() == 0:
        print("gpu-check: no NVIDIA GPU here (the CUDA driver reports none); it needs one. "
              "`--device cpu` checks the script only.", file=sys.stderr)
        return 1
    started = time.perf_counter()
    report: dict = {"card": card, "device": args.device}
    providers, gpu = check_providers(args.device)
    report["providers"] = providers
    cpu = load_model("litemedsam", "cpu", backend="onnxruntime")
    slices = agreement_slices(Path(args.data))
    report["parity"] = check_parity(gpu, cpu, slices)
    report["speed"] = check_speed(gpu, cpu, slices)
    report["batched"] = check_batched(gpu, slices)
    if not args.skip_server:
        report["server"] = check_server(gpu, slices, args.device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    failed = [name for name, part in report.items()
              if isinstance(part, dict) and not part.get("ok", True)]
    report["failed"] = failed
    print(json.dumps(report, indent=1, default=str))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} "
          f"({report['seconds']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
