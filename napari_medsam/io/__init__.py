"""Medical volumes in and out: NIfTI, NRRD, MetaImage and DICOM, with their geometry.

No napari or Qt imports anywhere in this package, so it can be used from scripts,
the command line and tests without a display.
"""

from .intensity import CT_WINDOWS, IntensityMapping, auto_mapping, mapping_from_name
from .label_descriptions import (
    label_description_path,
    read_label_descriptions,
    write_label_descriptions,
)
from .read import (
    SLICE_GAP_CHOICES,
    folder_has_dicom,
    is_dicom_file,
    is_volume_path,
    read_volume,
    volume_name,
)
from .volume import Volume, VolumeReadError, VolumeWriteError, looks_like_label_map
from .write import WRITE_EXTENSIONS, check_writable, label_dtype, write_labels

__all__ = [
    "CT_WINDOWS",
    "SLICE_GAP_CHOICES",
    "WRITE_EXTENSIONS",
    "check_writable",
    "IntensityMapping",
    "Volume",
    "VolumeReadError",
    "VolumeWriteError",
    "auto_mapping",
    "folder_has_dicom",
    "is_dicom_file",
    "is_volume_path",
    "label_description_path",
    "label_dtype",
    "looks_like_label_map",
    "mapping_from_name",
    "read_label_descriptions",
    "read_volume",
    "volume_name",
    "write_label_descriptions",
    "write_labels",
]
