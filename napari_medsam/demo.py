"""``python -m napari_medsam.demo``: napari with the sample CT and the Segment widget.

With ``--headless`` (``make demo`` under Xvfb) it runs the same workflow unattended: a box
on the liver of the sample CT, the preview, Accept, then writes a screenshot and the labels
as NIfTI, and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("napari_medsam.demo")

LIVER = 5


def _wait(condition, timeout: float, what: str) -> None:
    """Run the Qt event loop until ``condition()`` holds (or ``timeout`` seconds pass)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            if not what:
                return
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        QApplication.processEvents()
        time.sleep(0.01)


def open_demo(viewer, device: str = "auto"):
    """Add the sample CT (and its reference, hidden) and dock the widget; return it."""
    from napari_medsam._qt.widget import SegmentWidget
    from napari_medsam._sample_data import sample_ct

    (image_data, image_kwargs, _), (label_data, label_kwargs, _) = sample_ct()
    viewer.add_image(image_data, **image_kwargs)
    label_kwargs = {**label_kwargs, "name": "reference (TotalSegmentator)"}
    reference = viewer.add_labels(label_data, **label_kwargs)
    reference.visible = False
    widget = SegmentWidget(viewer, device=device)
    viewer.window.add_dock_widget(widget, name="Segment (MedSAM)", area="right")
    return widget


def run_headless_workflow(viewer, widget, out_dir: Path) -> dict:
    """Box on the liver -> preview -> accept -> screenshot + NIfTI."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _wait(lambda: widget.session is not None, 300, "the model to load")
    image = widget.image_layer
    reference = viewer.layers["reference (TotalSegmentator)"].data
    z = int((reference == LIVER).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    ys, xs = np.nonzero(reference[z] == LIVER)
    boxes = viewer.layers["MedSAM boxes"]
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    boxes.add_rectangles(np.array([[[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]]],
                                  dtype=float))
    _wait(lambda: widget.preview_mask is not None, 60, "the preview")
    viewer.reset_view()
    _wait(lambda: True, 0.5, "")
    preview_shot = out_dir / "demo_preview.png"
    viewer.screenshot(str(preview_shot), canvas_only=False)
    accepted = widget.accept()
    labels = widget.target_labels()
    truth = reference[z] == LIVER
    got = labels.data[z] == widget.label_spin.value()
    dice = float(2 * (got & truth).sum() / max(got.sum() + truth.sum(), 1))
    viewer.layers.selection.active = labels
    _wait(lambda: True, 1, "")
    shot = out_dir / "demo_screenshot.png"
    viewer.screenshot(str(shot), canvas_only=False)
    nifti = widget.save(out_dir / "demo_labels.nii.gz")
    result = {"slice": z, "voxels": accepted, "dice_vs_reference": round(dice, 3),
              "device": widget.model.device_name, "screenshot": str(shot),
              "preview_screenshot": str(preview_shot), "labels": str(nifti)}
    logger.info("demo: %s", result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--headless", action="store_true",
                        help="run the workflow unattended, write outputs and exit")
    parser.add_argument("--out", default="out", help="output folder for --headless")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import napari

    viewer = napari.Viewer(title="napari-medsam demo")
    viewer.window.resize(1500, 950)
    widget = open_demo(viewer, args.device)
    if not args.headless:
        napari.run()
        return 0
    try:
        result = run_headless_workflow(viewer, widget, Path(args.out))
    finally:
        widget.shutdown()
        viewer.close()
    print(f"demo: liver on slice {result['slice']}: {result['voxels']} voxels accepted, "
          f"Dice {result['dice_vs_reference']} vs reference, ran on {result['device']}")
    print(f"demo: wrote {result['screenshot']} and {result['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
