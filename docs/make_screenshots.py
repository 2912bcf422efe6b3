"""Take the user guide's screenshots from the real widget on the sample CT (run under Xvfb).

Usage::

    xvfb-run -a python docs/make_screenshots.py [--out docs/images]

Writes ``guide_box.png`` (a box on the liver and its preview), ``guide_click.png`` (one
positive click on the spleen), ``guide_negative.png`` (a box with a negative click),
``guide_objects.png`` (several accepted objects and the objects list) and
``guide_coronal.png`` (a box on a coronal slice). Each step goes through the widget exactly as
a user's prompt does (prompt layer event -> worker -> preview -> Accept).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_medsam.demo import _wait, open_demo

LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT = 5, 1, 2, 3


def _rectangle(axis: int, index: int, rows, cols) -> np.ndarray:
    others = [a for a in range(3) if a != axis]
    out = []
    for r, c in ((rows[0], cols[0]), (rows[0], cols[1]), (rows[1], cols[1]), (rows[1], cols[0])):
        vertex = [0.0, 0.0, 0.0]
        vertex[axis], vertex[others[0]], vertex[others[1]] = index, r, c
        out.append(vertex)
    return np.array([out])


def _go_to(viewer, image, axis: int, index: int) -> None:
    viewer.dims.order = tuple([axis] + [a for a in range(3) if a != axis])
    viewer.dims.set_point(axis, image.data_to_world([index if a == axis else 0
                                                     for a in range(3)])[axis])
    viewer.reset_view()


def _box(viewer, widget, axis, index, mask2d, pad=1):
    ys, xs = np.nonzero(mask2d)
    widget.preview_mask = None
    viewer.layers["MedSAM boxes"].add_rectangles(
        _rectangle(axis, index, (ys.min() - pad, ys.max() + pad), (xs.min() - pad, xs.max() + pad)))
    _wait(lambda: widget.preview_mask is not None, 120, "the preview")


def _click(viewer, widget, index, y, x, negative=False):
    widget.negative_check.setChecked(negative)
    widget.preview_mask = None
    viewer.layers["MedSAM clicks"].add([[index, y, x]])
    _wait(lambda: widget.preview_mask is not None, 120, "the preview")


def _shot(viewer, path: Path) -> None:
    _wait(lambda: False, 0.5, "")
    viewer.screenshot(str(path), canvas_only=False)
    logging.getLogger("screenshots").info("wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import napari

    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-medsam")
    viewer.window.resize(1500, 950)
    widget = open_demo(viewer, "cpu")
    try:
        _wait(lambda: widget.session is not None, 300, "the model to load")
        image = widget.image_layer
        reference = viewer.layers["reference (TotalSegmentator)"].data

        z = int((reference == LIVER).sum(axis=(1, 2)).argmax())
        _go_to(viewer, image, 0, z)
        _box(viewer, widget, 0, z, reference[z] == LIVER)
        _shot(viewer, args.out / "guide_box.png")
        widget.accept()

        spleen = reference[z] == SPLEEN
        y, x = np.unravel_index(ndimage.distance_transform_edt(spleen).argmax(), spleen.shape)
        widget.new_object()
        _click(viewer, widget, z, y, x)
        _shot(viewer, args.out / "guide_click.png")
        widget.accept()

        # a loose box over the right kidney and what lies next to it, cut by a negative click
        kz = int((reference == KIDNEY_RIGHT).sum(axis=(1, 2)).argmax())
        _go_to(viewer, image, 0, kz)
        kidney = reference[kz] == KIDNEY_RIGHT
        widget.new_object()
        _box(viewer, widget, 0, kz, kidney, pad=4)
        ky, kx = np.nonzero(kidney)
        outside = ndimage.binary_dilation(kidney, iterations=3) & ~kidney
        oy, ox = np.nonzero(outside & (np.arange(kidney.shape[1])[None, :] > kx.mean()))
        if len(oy):
            _click(viewer, widget, kz, oy[len(oy) // 2], ox[len(ox) // 2], negative=True)
        widget.negative_check.setChecked(False)
        _shot(viewer, args.out / "guide_negative.png")
        widget.accept()

        left = reference[kz] == KIDNEY_LEFT
        if left.any():
            widget.new_object()
            _box(viewer, widget, 0, kz, left)
            widget.accept()
        viewer.layers.selection.active = widget.target_labels()
        _shot(viewer, args.out / "guide_objects.png")

        cy = int((reference == LIVER).sum(axis=(0, 2)).argmax())
        _go_to(viewer, image, 1, cy)
        widget.label_spin.setValue(1)
        _box(viewer, widget, 1, cy, reference[:, cy, :] == LIVER)
        _shot(viewer, args.out / "guide_coronal.png")
    finally:
        widget.shutdown()
        viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
