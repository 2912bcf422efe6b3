"""UI-thread cost of the crash-recovery autosave on a 512x512x300 uint16 label map.

Run under Xvfb:

    xvfb-run -a python benchmarks/autosave_ui_time.py [--slices 300] [--repeats 15]
        [--json FILE]

Builds a 300x512x512 uint16 label map holding five ellipsoid organs (about 1.6 % of the
voxels labelled) as a Labels layer of a napari viewer, and lets the widget's
:class:`~napari_medsam._qt.autosave.Autosaver` follow it (recovery files in a temporary
``NAPARI_MEDSAM_CACHE``). Then, ``--repeats`` times each:

- *2D accept*: one slice written with ``Labels.data_setitem`` (what Accept does), then an
  autosave;
- *3D accept*: an object written on 80 slices at once (what Accept 3D does), then an
  autosave;
- *undo*: ``Labels.undo()`` of the 3D accept (napari does not say where), then an autosave
  (every row ever edited is compared and copied if it differs).

For each it reports the median and maximum UI-thread time of ``Autosaver.autosave()`` (the
snapshot: copying the changed rows into the mirror, and starting the worker), the rows
copied, the worker's time (compress, write, fsync, read back, replace), the file size, and
the worst event-loop lateness while the worker runs (a 5 ms single-shot QTimer re-armed from
its own callback: how long a click or repaint would wait). For comparison it also times a
plain ``np.copy`` of the whole map, which is what a naive snapshot would cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INTERVAL_MS = 5


def label_map(slices: int) -> np.ndarray:
    """(slices, 512, 512) uint16 with five ellipsoids labelled 1..5."""
    data = np.zeros((slices, 512, 512), dtype=np.uint16)
    z, y, x = np.ogrid[:slices, :512, :512]
    scale = slices / 300
    organs = [((150, 256, 200), 60), ((100, 300, 350), 40), ((200, 200, 300), 30),
              ((60, 250, 250), 25), ((250, 300, 150), 50)]
    for label, ((cz, cy, cx), r) in enumerate(organs, start=1):
        inside = ((z - cz * scale) * 1.5 / scale) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r
        data[inside] = label
    return data


def _disk(z: int, cy: int, cx: int, r: int) -> tuple[np.ndarray, ...]:
    yy, xx = np.nonzero((np.arange(512)[:, None] - cy) ** 2 + (np.arange(512) - cx) ** 2 < r * r)
    return np.full_like(yy, z), yy, xx


def _ball(z0: int, z1: int, cy: int, cx: int, r: int) -> tuple[np.ndarray, ...]:
    parts = [_disk(z, cy, cx, r) for z in range(z0, z1)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def pump(app, timer_class, done, timeout: float = 120.0) -> float:
    """Process Qt events until ``done()`` (or ``timeout`` seconds); returns the worst
    lateness (ms) of a 5 ms single-shot timer re-armed from its own callback meanwhile."""
    lateness, last = [0.0], [time.perf_counter()]
    timer = timer_class()
    timer.setSingleShot(True)
    timer.setInterval(INTERVAL_MS)

    def tick() -> None:
        now = time.perf_counter()
        lateness[0] = max(lateness[0], 1000 * (now - last[0]) - INTERVAL_MS)
        last[0] = now
        timer.start()

    timer.timeout.connect(tick)
    timer.start()
    end = time.perf_counter() + timeout
    while not done() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.0005)
    timer.stop()
    app.processEvents()
    return lateness[0]


def run(slices: int, repeats: int) -> dict:
    from napari import Viewer
    from qtpy.QtCore import QCoreApplication, QTimer

    from napari_medsam._qt.autosave import Autosaver
    from napari_medsam.engine.disk_cache import array_digest
    from napari_medsam.io.recovery import RecoveryStore

    data = label_map(slices)
    copies = []
    for _ in range(5):
        start = time.perf_counter()
        np.copy(data)
        copies.append(1000 * (time.perf_counter() - start))

    viewer = Viewer(show=False)
    labels = viewer.add_labels(data, name="bench labels")
    viewer.dims.set_current_step(0, slices // 2)
    store = RecoveryStore()
    autosaver = Autosaver(store, edits=10**9, seconds=10**6)  # autosaves only when asked
    app = QCoreApplication.instance()
    end_at = time.perf_counter() + 2.0
    idle_late = pump(app, QTimer, lambda: time.perf_counter() > end_at)
    start = time.perf_counter()
    autosaver.track(labels)  # the mirror is copied on a worker
    adopt_ms = 1000 * (time.perf_counter() - start)
    mirror_late = pump(app, QTimer, lambda: autosaver.ready)
    mirror_s = time.perf_counter() - start
    autosaver.set_digest(array_digest(np.arange(16)))
    writes = [0]
    autosaver.written.connect(lambda _path: writes.__setitem__(0, writes[0] + 1))

    def wait_for_write() -> float:
        """Events until the next file is written and the worker has ended (lateness, ms)."""
        target = writes[0] + 1
        return pump(app, QTimer, lambda: writes[0] >= target and not autosaver.busy)

    assert autosaver.autosave() is False  # nothing changed yet: no write
    results: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for scenario in ("2D accept", "3D accept", "undo"):
        ui, rows, worker, late = [], [], [], []
        for i in range(repeats):
            z = int(rng.integers(20, slices - 100))
            if scenario == "2D accept":
                labels.data_setitem(_disk(z, 256, 256, 40), 10 + i)
            elif scenario == "3D accept":
                labels.data_setitem(_ball(z, z + 80, 150, 380, 25), 40 + i)
            else:
                labels.data_setitem(_ball(z, z + 80, 380, 150, 25), 70 + i)
                app.processEvents()  # the undo is a separate key press
                autosaver.autosave()
                wait_for_write()
                labels.undo()
            app.processEvents()
            assert autosaver.autosave(), scenario
            late.append(wait_for_write())  # after an undo: a scan, then the write
            ui.append(autosaver.ui_ms[-1])
            rows.append(autosaver.last_rows)
            worker.append(autosaver.worker_s[-1])
        results[scenario] = {
            "ui_ms_median": float(np.median(ui)), "ui_ms_max": float(np.max(ui)),
            "rows_copied_median": float(np.median(rows)),
            "worker_s_median": float(np.median(worker)),
            "event_loop_lateness_ms_max": float(np.max(late)),
        }
    path = store.path_for(autosaver.digest)
    back = store.load(autosaver.digest)
    assert back is not None and np.array_equal(back.labels, labels.data), "file differs"
    autosaver.flush()
    viewer.close()
    return {
        "shape": list(data.shape), "dtype": str(data.dtype), "nbytes": int(data.nbytes),
        "labelled_fraction": float(np.count_nonzero(data) / data.size),
        "np_copy_ms_median": float(np.median(copies)), "adopt_ms": adopt_ms,
        "mirror_copy_s": mirror_s, "mirror_copy_lateness_ms_max": mirror_late,
        "idle_lateness_ms_max": idle_late,
        "file_bytes": path.stat().st_size, "scenarios": results,
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NAPARI_MEDSAM_CACHE"] = cache
        report = run(args.slices, args.repeats)
    mb = report["nbytes"] / 1024**2
    print(f"label map {tuple(report['shape'])} {report['dtype']} ({mb:.0f} MiB), "
          f"{100 * report['labelled_fraction']:.1f} % labelled; {report['cpu_count']} CPUs, "
          f"load {report['load_average'][0]:.2f}")
    print(f"plain np.copy of the whole map: {report['np_copy_ms_median']:.1f} ms (median); "
          f"adopting the layer: {report['adopt_ms']:.1f} ms on the UI thread, its mirror "
          f"copied by a worker in {report['mirror_copy_s']:.2f} s (event loop late by at most "
          f"{report['mirror_copy_lateness_ms_max']:.1f} ms meanwhile)")
    print(f"idle event loop (no worker): late by at most {report['idle_lateness_ms_max']:.1f} "
          "ms in 2 s")
    for name, row in report["scenarios"].items():
        print(f"{name:10s}: UI thread {row['ui_ms_median']:.2f} ms median "
              f"({row['ui_ms_max']:.2f} max), {row['rows_copied_median']:.0f} rows copied; "
              f"worker {row['worker_s_median']:.2f} s; event loop late by at most "
              f"{row['event_loop_lateness_ms_max']:.1f} ms while it ran")
    print(f"recovery file: {report['file_bytes'] / 1024:.0f} KiB "
          f"({report['nbytes'] / report['file_bytes']:.0f}x smaller)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
