"""Plain helpers of the tests (not fixtures, not a test module): the real scans in
``../shared/data`` beside the project root, masks and boxes, and ways to damage a slice file
of the on-disk embedding cache.

The tests import them (``from helpers import dice``); so can the scripts in ``benchmarks/``,
which put ``src_tests`` on ``sys.path``. Fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from napari_medsam.engine.disk_cache import DiskEmbeddingStore
    from napari_medsam.segmentation import SegmentationSession

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("NAPARI_MEDSAM_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def case_dir(name: str) -> Path:
    """Return the folder of a real case, failing loudly when the data is missing."""
    path = DATA_DIR / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"real test data {path} is missing: the tests need ../shared/data beside the project"
        )
    return path


def label_names(name: str) -> dict[int, str]:
    """Label value -> name of a real case (its ``labels.json``)."""
    meta = json.loads((case_dir(name) / "labels.json").read_text())
    return {int(k): v for k, v in meta.get("labels", {}).items()}


def load_case(name: str, image: str = "image.nii.gz", label: str | None = "label.nii.gz"):
    """(image Volume, reference label array or None, 0..255 mapped image) of a real case."""
    from napari_medsam.io import read_volume
    from napari_medsam.io.intensity import auto_mapping

    folder = case_dir(name)
    volume = read_volume(folder / image)
    reference = read_volume(folder / label).array if label else None
    mapping = auto_mapping(volume.array, volume.modality)
    return volume, reference, mapping.apply(volume.array)


def largest_slice(reference, label: int, axis: int = 0) -> int:
    """Index of the slice along ``axis`` where ``label`` covers most pixels."""
    import numpy as np

    other = tuple(a for a in range(reference.ndim) if a != axis)
    return int(np.argmax((reference == label).sum(axis=other)))


def tight_box(mask2d):
    """(x_min, y_min, x_max, y_max) of a 2D mask."""
    import numpy as np

    ys, xs = np.nonzero(mask2d)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def dice(a, b) -> float:
    """Dice overlap of two masks (1.0 when both are empty)."""
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def rectangle(axis: int, index: int, rows, cols) -> np.ndarray:
    """A 3D napari rectangle on slice ``index`` of ``axis`` covering rows x cols (inclusive),
    as the one-shape array ``Shapes.add_rectangles`` takes."""
    import numpy as np

    corners = [(rows[0], cols[0]), (rows[0], cols[1]), (rows[1], cols[1]), (rows[1], cols[0])]
    out = []
    for r, c in corners:
        vertex = [0.0, 0.0, 0.0]
        others = [a for a in range(3) if a != axis]
        vertex[axis], vertex[others[0]], vertex[others[1]] = index, r, c
        out.append(vertex)
    return np.array([out])


#: The upper-abdomen CT crop shared by the propagation and bulk-correction tests: axial
#: slices 98..109, the liver runs through, the left kidney ends at 104 (crop index 6).
ABDOMEN_CASE = "totalseg_ct_abdomen_pelvis"
ABDOMEN_CROP = slice(98, 110)
LIVER, KIDNEY_LEFT = 5, 3

_CROPS: dict[str, tuple] = {}


def cache_with_models(model_cache: Path, folder: Path) -> Path:
    """A new cache ``folder/cache`` holding the session's exported models (a link to
    ``model_cache/models``) and nothing else: no embeddings, no compiled blobs."""
    cache = folder / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(model_cache / "models", target_is_directory=True)
    return cache


def crop_session(model) -> tuple[SegmentationSession, np.ndarray]:
    """(session on the cropped CT, cropped reference labels), made once per test run and
    model, so that the tests sharing the crop embed each slice only once."""
    import numpy as np

    from napari_medsam.io.intensity import auto_mapping
    from napari_medsam.segmentation import SegmentationSession

    if model.name not in _CROPS:
        volume, reference, _ = load_case(ABDOMEN_CASE)
        image = np.ascontiguousarray(volume.array[ABDOMEN_CROP])
        mapping = auto_mapping(volume.array, volume.modality)  # the whole scan's window
        _CROPS[model.name] = (SegmentationSession(model, image, mapping),
                              np.asarray(reference[ABDOMEN_CROP]))
    return _CROPS[model.name]


#: Ways a slice file goes bad: its float16 values overwritten in place (behind the file's own
#: header) with NaN, zeros, random values or another slice's embedding; the file replaced by
#: another slice's file; re-written well-formed with zeros but the old header; cut short.
CORRUPTIONS = ("nan", "zeros", "random", "other_slice", "copied_file", "rewritten",
               "truncated")


def corrupt_slice_file(store: DiskEmbeddingStore, index: int, kind: str, other: int) -> None:
    """Damage the stored file of slice ``index`` in place (see :data:`CORRUPTIONS`).

    ``other`` is another stored slice: its features or its whole file are the ones copied.
    """
    import shutil

    import numpy as np

    path = store.slice_path(index)
    stored = store.get(index).features
    original = path.read_bytes()
    raw = bytearray(original)
    data = stored.tobytes()
    at = raw.find(data)  # the float16 values lie uncompressed in the file
    assert at > 0 and raw.find(data, at + 1) == -1
    if kind == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif kind == "copied_file":
        shutil.copyfile(store.slice_path(other), path)
    elif kind == "rewritten":  # a well-formed file again, but not with the values it had
        loaded = np.load(path, allow_pickle=False)  # an .npz archive or a bare .npy array
        arrays = {}
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                arrays = dict(loaded.items())
        with open(path, "wb") as fh:
            if arrays:
                np.savez(fh, **{**arrays, "features": np.zeros_like(stored)})
            else:
                np.save(fh, np.zeros_like(stored))
    else:
        values = {"nan": np.full(stored.shape, np.nan),
                  "zeros": np.zeros(stored.shape),
                  "random": np.random.default_rng(7).standard_normal(stored.shape),
                  "other_slice": store.get(other).features}[kind]
        raw[at:at + len(data)] = np.asarray(values, np.float16).tobytes()
        path.write_bytes(raw)
    assert path.read_bytes() != original

