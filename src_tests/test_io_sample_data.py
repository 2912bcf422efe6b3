"""Sample data shipped in the package: content, attribution, and no CC-BY-SA data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import case_dir, label_names

import napari_medsam
from napari_medsam._sample_data import SAMPLES, sample_ct, sample_label_path, sample_mr, sample_path

PACKAGE_SAMPLES = Path(napari_medsam.__file__).parent / "sample_data"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("key", list(SAMPLES))
def test_shipped_files_are_unmodified_copies_with_attribution(key):
    folder = PACKAGE_SAMPLES / key
    for name in ("labels.json", sample_path(key).name, sample_label_path(key).name):
        assert _digest(folder / name) == _digest(case_dir(key) / name), name
    notice = (folder / "LICENSE_AND_ATTRIBUTION.txt").read_text()
    if key.startswith("totalseg"):
        assert "Apache License, Version 2.0" in notice
        assert "github.com/wasserth/TotalSegmentator" in notice
        assert "MODEL OUTPUT" in notice
    else:
        assert "BSD 3-Clause" in notice
        assert "github.com/AIM-Harvard/pyradiomics" in notice
        assert "Copyright 2017 Harvard Medical School" in notice


def test_no_cc_by_sa_data_is_shipped():
    hippocampus = {_digest(p) for p in case_dir("msd_hippocampus_mr").iterdir()}
    shipped = [p for p in PACKAGE_SAMPLES.rglob("*") if p.is_file()]
    assert shipped
    assert not any("hippocampus" in p.name.lower() for p in shipped)
    assert not {_digest(p) for p in shipped} & hippocampus
    assert sorted(p.name for p in PACKAGE_SAMPLES.iterdir()) == sorted(SAMPLES)


def test_sample_path_aliases():
    assert sample_path("ct") == sample_path("totalseg_ct_abdomen_pelvis")
    assert sample_path("MR").name == "image.nrrd"
    assert sample_path("ct").is_file()
    with pytest.raises(KeyError, match="available"):
        sample_path("hippocampus")


@pytest.mark.parametrize(
    ("loader", "key", "spacing_zyx", "label", "name"),
    [
        # scale signs: the in-plane axes the file stores reversed are flipped for display
        (sample_ct, "totalseg_ct_abdomen_pelvis", (3.0, -3.0, -3.0), 5, "liver"),
        (sample_mr, "pyradiomics_brain1_mr", (6.5, -0.78125, 0.78125), 1, "brain tumor"),
    ],
)
def test_sample_layers(loader, key, spacing_zyx, label, name):
    (image, image_kwargs, image_type), (labels, label_kwargs, label_type) = loader()
    assert (image_type, label_type) == ("image", "labels")
    assert image.shape == labels.shape
    assert labels.dtype.kind in "iu"
    np.testing.assert_allclose(image_kwargs["scale"], spacing_zyx)
    assert tuple(label_kwargs["scale"]) == tuple(image_kwargs["scale"])
    assert tuple(label_kwargs["translate"]) == tuple(image_kwargs["translate"])
    low, high = image_kwargs["contrast_limits"]
    assert low < high
    assert image_kwargs["metadata"]["spacing"] == [abs(v) for v in reversed(image_kwargs["scale"])]
    assert label_kwargs["metadata"]["label_names"] == label_names(key)
    assert label_kwargs["metadata"]["label_names"][label] == name
    assert np.count_nonzero(labels == label) > 0
