"""Keep coronal and sagittal slices superior-side up in the viewer.

Layers opened by napari-medsam put the patient's anterior up and left on the right of axial
slices through their ``scale`` signs (:attr:`napari_medsam.io.Volume.display_scale`), while
the slice axis keeps the file's order so that the slider, the widget and the CLI count slices
the same way. When the vertical screen axis is the slice axis (coronal and sagittal views),
napari would draw the first slice at the top; this module points the camera's vertical axis
up then (napari's ``camera.orientation2d``), and back down for axial views.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def slice_axis_points_superior(image) -> bool:
    """Whether increasing array axis 0 goes towards the head (LPS +z), from the metadata."""
    direction = (getattr(image, "metadata", None) or {}).get("direction")
    if not direction or len(direction) != 9:
        return True
    return float(direction[8]) >= 0


def vertical_orientation(viewer, image) -> str:
    """``"up"`` when the screen's vertical axis is array axis 0 (and it runs to the head)."""
    dims = viewer.dims
    if dims.ndisplay != 2 or image is None:
        return "down"
    vertical = dims.displayed[0]
    if vertical != 0:
        return "down"
    return "up" if slice_axis_points_superior(image) else "down"


def apply_orientation(viewer, image) -> None:
    """Point the camera's vertical axis so that superior is up in coronal/sagittal views."""
    wanted = vertical_orientation(viewer, image)
    camera = viewer_camera(viewer)
    current = camera.orientation2d
    if str(getattr(current[0], "value", current[0])) != wanted:
        camera.orientation2d = (wanted, current[1])
        logger.debug("camera vertical axis now points %s", wanted)


def viewer_camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
