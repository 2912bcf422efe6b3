"""Qt event-loop latency while the widget's "Embed volume" runs (is the UI usable?).

Run under Xvfb:

    xvfb-run -a python benchmarks/ui_latency_embed.py [--case totalseg_ct_abdomen_pelvis]
        [--backend auto] [--interval 20] [--json FILE]

Opens the real scan in a napari viewer with the Segment widget, in a fresh temporary user
cache (``NAPARI_MEDSAM_CACHE``: empty disk cache; the exported ONNX model is copied in from
the normal cache, or exported there when it is missing), shows the middle axial slice,
measures the idle event loop for a few seconds, then clicks "Embed volume" and, until every
slice is embedded, re-arms a single-shot QTimer of ``--interval`` ms (20) from its own
callback: lateness = measured interval - 20 ms, i.e. how long a click or a repaint would
wait. Prints the median, p95, p99 and max lateness (idle and while embedding), the wall time,
slices per second, the backend and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data_dir() -> Path:
    from napari_medsam.bench import require_data_dir

    return require_data_dir()


def _fresh_cache(model: str) -> Path:
    """A new empty user cache holding (a copy of) the exported model; sets the env var."""
    from napari_medsam.paths import CACHE_ENV, model_dir

    source = model_dir(model)  # the normal cache (before the override)
    root = Path(tempfile.mkdtemp(prefix="medsam-ui-latency-"))
    os.environ[CACHE_ENV] = str(root)
    if (source / "encoder.onnx").is_file() and (source / "decoder.onnx").is_file():
        shutil.copytree(source, model_dir(model))
    else:
        from napari_medsam.cli import main as cli_main

        print(f"no exported model in {source}: exporting into {root}", flush=True)
        if cli_main(["export-model", "--name", model]) != 0:
            raise SystemExit("export-model failed")
    return root


def _stats(lateness_ms: list[float]) -> dict:
    values = np.asarray(lateness_ms, dtype=float)
    if values.size == 0:
        return {"count": 0}
    return {"count": int(values.size),
            "median_ms": round(float(np.median(values)), 2),
            "p95_ms": round(float(np.percentile(values, 95)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2),
            "max_ms": round(float(values.max()), 2),
            "over_50ms": int((values > 50).sum()),
            "over_100ms": int((values > 100).sum())}


class LatencyProbe:
    """A single-shot timer re-armed from its callback; records each interval's lateness."""

    def __init__(self, interval_ms: int) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.lateness_ms: list[float] = []
        self.tick_s: list[float] = []  # seconds since start() of each tick
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._armed_at = 0.0
        self._running = False

    def start(self) -> None:
        self.lateness_ms = []
        self.tick_s = []
        self._started_at = time.perf_counter()
        self._running = True
        self._arm()

    def stop(self) -> list[float]:
        self._running = False
        self._timer.stop()
        return list(self.lateness_ms)

    def _arm(self) -> None:
        self._armed_at = time.perf_counter()
        self._timer.start()

    def _tick(self) -> None:
        if not self._running:
            return
        now = time.perf_counter()
        elapsed = (now - self._armed_at) * 1000.0
        self.lateness_ms.append(elapsed - self.interval_ms)
        self.tick_s.append(now - self._started_at)
        self._arm()


def run_loop_until(condition, timeout_s: float, what: str) -> None:
    """Run the real Qt event loop (not a processEvents poll) until ``condition()``."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.monotonic() + timeout_s
    check = QTimer()
    check.setInterval(50)

    def poll() -> None:
        if condition() or time.monotonic() > deadline:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    if not condition():
        loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="totalseg_ct_abdomen_pelvis")
    parser.add_argument("--image", default="image.nii.gz")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "onnxruntime", "openvino"])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--interval", type=int, default=20, help="probe timer interval (ms)")
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds of idle measurement before embedding")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--json", help="write the results as JSON here")
    parser.add_argument("--keep-cache", action="store_true",
                        help="do not delete the temporary cache folder")
    args = parser.parse_args()

    path = _data_dir() / args.case / args.image
    cache = _fresh_cache("litemedsam")
    load_start = os.getloadavg()

    import napari

    from napari_medsam._qt.widget import SegmentWidget
    from napari_medsam._reader import read_layers

    viewer = napari.Viewer(show=True)
    try:
        ((data, kwargs, _kind),) = read_layers(path)
        layer = viewer.add_image(data, **kwargs)
        t0 = time.perf_counter()
        widget = SegmentWidget(viewer, device=args.device, backend=args.backend)
        viewer.window.add_dock_widget(widget)
        run_loop_until(lambda: widget.session is not None, 300, "the model to load")
        load_s = time.perf_counter() - t0
        axis = 0
        start = data.shape[axis] // 2
        viewer.dims.set_point(axis, layer.data_to_world([start, 0, 0])[axis])
        assert widget.current_slice() is not None and widget.current_slice().index == start

        probe = LatencyProbe(args.interval)
        probe.start()
        run_loop_until(lambda: len(probe.lateness_ms) * args.interval >= args.idle * 1000,
                       args.idle * 10 + 10, "the idle measurement")
        idle = probe.stop()

        panel = widget.embed_panel
        results = []
        panel.embedding_done.connect(results.append)
        probe.start()
        clicked = time.perf_counter()
        panel.embed_button.click()
        run_loop_until(lambda: bool(results) and not panel.running, args.timeout,
                       "the volume embedding")
        wall = time.perf_counter() - clicked
        busy = probe.stop()
        worst = sorted(zip(busy, probe.tick_s, strict=True), reverse=True)[:3]
        summary = results[0]
        if summary is None:
            raise SystemExit("embedding failed (see the log)")
        load_end = os.getloadavg()
        model = widget.model
        report = {
            "case": args.case, "shape": list(map(int, data.shape)), "axis": axis,
            "start_slice": start, "backend_requested": args.backend,
            "backend": model.device_name, "providers": list(model.providers),
            "plan": summary.plan.kind, "in_flight": summary.plan.in_flight,
            "model_load_s": round(load_s, 2), "slices": summary.total,
            "encoded": summary.encoded, "from_disk": summary.from_disk,
            "cancelled": summary.cancelled,
            "wall_s": round(wall, 2), "worker_wall_s": round(summary.wall_s, 2),
            "slices_per_s": round(summary.encoded / wall, 3) if wall > 0 else 0.0,
            "interval_ms": args.interval, "idle": _stats(idle), "embedding": _stats(busy),
            "loadavg_start": [round(v, 2) for v in load_start],
            "loadavg_end": [round(v, 2) for v in load_end], "cpu_count": os.cpu_count(),
            "worst_ticks": [{"lateness_ms": round(late, 1), "at_s": round(at, 2)}
                            for late, at in worst],
        }
        widget.shutdown()
    finally:
        viewer.close()
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)

    def line(name: str, stats: dict) -> str:
        return (f"  {name:9s} median {stats['median_ms']:7.2f}  p95 {stats['p95_ms']:7.2f}  "
                f"p99 {stats['p99_ms']:7.2f}  max {stats['max_ms']:8.2f} ms  "
                f"({stats['count']} ticks, {stats['over_50ms']} > 50 ms, "
                f"{stats['over_100ms']} > 100 ms)")

    print(f"{report['case']} {'x'.join(map(str, report['shape']))}, axis {axis} from slice "
          f"{start}: {report['backend']} ({report['plan']}, {report['in_flight']} in flight), "
          f"model loaded in {report['model_load_s']} s")
    print(f"embedding: {report['encoded']}/{report['slices']} slices encoded in "
          f"{report['wall_s']:.1f} s, {report['slices_per_s']:.2f} slices/s")
    print(f"Qt event-loop lateness of a {args.interval} ms timer:")
    print(line("idle", report["idle"]))
    print(line("embedding", report["embedding"]))
    print("  worst ticks: " + ", ".join(f"{w['lateness_ms']} ms at {w['at_s']} s after the click"
                                         for w in report["worst_ticks"]))
    print(f"load average: {' '.join(map(str, report['loadavg_start']))} at start, "
          f"{' '.join(map(str, report['loadavg_end']))} at end ({os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
