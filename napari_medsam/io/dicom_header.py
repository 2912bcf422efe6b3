"""A small pure-Python DICOM header walker: what the series checks need, before GDCM reads.

GDCM (inside SimpleITK) drops unreadable slices silently, and a slice whose compressed
pixel data was cut off costs it gigabytes of memory and seconds just to scan the folder.
:func:`read_dicom_header` walks a file's data elements up to the pixel data (seeking
over values, never reading pixels), keeps the few tags the checks use, and verifies that
the pixel data fits in the file; :func:`scan_folder` does it for every file of a folder.

No napari or Qt imports here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import SimpleITK as sitk

from ._common import is_dicom_file

__all__ = [
    "DicomHeader",
    "DicomHeaderError",
    "DicomPixelDataError",
    "FolderScan",
    "read_dicom_header",
    "scan_folder",
    "sitk_header",
]

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_PIXEL_TAGS = frozenset({(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)})
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_WANTED = {
    (0x0002, 0x0010): "transfer_syntax",
    (0x0020, 0x000E): "series_uid",
    (0x0020, 0x0032): "position",
    (0x0020, 0x0037): "orientation",
    (0x0028, 0x0002): "samples",
    (0x0028, 0x0008): "frames",
    (0x0028, 0x0010): "rows",
    (0x0028, 0x0011): "columns",
    (0x0028, 0x0100): "bits_allocated",
}
_UNSIGNED_SHORTS = frozenset({"samples", "rows", "columns", "bits_allocated"})
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MAX_VALUE = 1024  # longer values of the wanted tags are not what we look for
_MAX_DEPTH = 32


class DicomHeaderError(Exception):
    """The file is not DICOM, or its header cannot be walked; the message says why."""


class DicomPixelDataError(DicomHeaderError):
    """The header is fine but the pixel data does not fit in the file (it was cut off)."""


@dataclass
class DicomHeader:
    """The tags of one DICOM file that the series checks use.

    ``pixel_offset`` is where the pixel data value starts (None: the file has none, e.g.
    a DICOMDIR); ``pixel_length`` is None for encapsulated (compressed) pixel data.
    ``walked`` is False when the data set could not be walked (deflated transfer syntax):
    then only the file meta information is known.
    """

    path: str
    size: int
    transfer_syntax: str | None = None
    series_uid: str | None = None
    position: tuple[float, ...] | None = None
    orientation: tuple[float, ...] | None = None
    rows: int | None = None
    columns: int | None = None
    samples: int = 1
    bits_allocated: int | None = None
    frames: int = 1
    pixel_offset: int | None = None
    pixel_length: int | None = None
    walked: bool = True

    @property
    def expected_pixel_bytes(self) -> int | None:
        """Bytes of uncompressed pixel data the image attributes call for (None: unknown)."""
        if not (self.rows and self.columns and self.bits_allocated):
            return None
        bits = self.rows * self.columns * self.samples * self.frames * self.bits_allocated
        return (bits + 7) // 8


def _floats(text: str, n: int) -> tuple[float, ...] | None:
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == n else None


def _store(header: DicomHeader, name: str, value: bytes, endian: str) -> None:
    if name in _UNSIGNED_SHORTS:
        if len(value) >= 2:
            setattr(header, name, struct.unpack(endian + "H", value[:2])[0])
        return
    text = value.decode("ascii", "replace").strip("\x00 ")
    if name == "position":
        header.position = _floats(text, 3)
    elif name == "orientation":
        header.orientation = _floats(text, 6)
    elif name == "frames":
        try:
            header.frames = max(int(text), 1)
        except ValueError:
            pass
    else:
        setattr(header, name, text)


class _Walker:
    """Reads element headers from ``fh`` and skips over values (and sequences)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size

    def element(self, explicit: bool, little: bool) -> tuple[int, int, bytes | None, int] | None:
        """(group, element, VR or None, length) of the next element; None at the file end."""
        start = self.fh.tell()
        raw = self.fh.read(8)
        if not raw:
            return None
        if len(raw) < 8:
            raise DicomHeaderError(f"the file ends inside a data element header at byte {start}")
        endian = "<" if little else ">"
        group, elem = struct.unpack(endian + "HH", raw[:4])
        if group == 0xFFFE or not explicit:  # items and delimiters never have a VR
            return group, elem, None, struct.unpack(endian + "I", raw[4:])[0]
        vr = raw[4:6]
        if not (vr.isalpha() and vr.isupper()):
            raise DicomHeaderError(
                f"data element ({group:04X},{elem:04X}) at byte {start} has no valid value "
                f"representation ({vr!r})"
            )
        if vr not in _LONG_VRS:
            return group, elem, vr, struct.unpack(endian + "H", raw[6:])[0]
        more = self.fh.read(4)
        if len(more) < 4:
            raise DicomHeaderError(f"the file ends inside a data element header at byte {start}")
        return group, elem, vr, struct.unpack(endian + "I", more)[0]

    def skip(self, tag: tuple[int, int], length: int) -> None:
        at = self.fh.tell()
        if at + length > self.size:
            raise DicomHeaderError(
                f"data element ({tag[0]:04X},{tag[1]:04X}) at byte {at} needs {length} bytes "
                f"but the file ends after {self.size - at}"
            )
        self.fh.seek(length, os.SEEK_CUR)

    def sequence(self, explicit: bool, little: bool, depth: int) -> None:
        """Skip an undefined-length sequence (items up to the sequence delimiter)."""
        if depth > _MAX_DEPTH:
            raise DicomHeaderError("sequences are nested too deeply (damaged header)")
        while True:
            found = self.element(explicit, little)
            if found is None:
                raise DicomHeaderError("the file ends inside a sequence")
            tag, length = found[:2], found[3]
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise DicomHeaderError(f"unexpected ({tag[0]:04X},{tag[1]:04X}) in a sequence")
            if length == _UNDEFINED:
                self.item(explicit, little, depth + 1)
            else:
                self.skip(tag, length)

    def item(self, explicit: bool, little: bool, depth: int) -> None:
        """Skip an undefined-length item (elements up to the item delimiter)."""
        while True:
            found = self.element(explicit, little)
            if found is None:
                raise DicomHeaderError("the file ends inside a sequence item")
            tag, vr, length = found[:2], found[2], found[3]
            if tag == _ITEM_END:
                return
            if length != _UNDEFINED:
                self.skip(tag, length)
            elif vr == b"UN":  # an unknown-VR sequence is encoded implicit little endian
                self.sequence(False, True, depth + 1)
            else:
                self.sequence(explicit, little, depth + 1)


def _check_pixel_data(walker: _Walker, header: DicomHeader, little: bool) -> None:
    """Raise DicomPixelDataError when the pixel data does not fit in the file."""
    offset, size = header.pixel_offset, header.size
    if offset is None:
        return
    if header.pixel_length is not None:  # native (uncompressed) pixels
        if offset + header.pixel_length > size:
            raise DicomPixelDataError(
                f"is truncated: its pixel data needs {header.pixel_length} bytes but the file "
                f"ends {size - offset} bytes into it"
            )
        expected = header.expected_pixel_bytes
        if expected is not None and header.pixel_length < expected:
            raise DicomPixelDataError(
                f"is damaged: it holds {header.pixel_length} bytes of pixel data but "
                f"{header.columns}x{header.rows} pixels of {header.bits_allocated} bits "
                f"need {expected}"
            )
        return
    endian = "<" if little else ">"
    walker.fh.seek(offset)
    while True:  # compressed: fragments (items) up to the sequence delimiter
        at = walker.fh.tell()
        raw = walker.fh.read(8)
        if not raw:
            return  # ends on a fragment boundary without the delimiter: tolerated
        if len(raw) < 8:
            raise DicomPixelDataError("is truncated: the file ends inside its pixel data")
        group, elem, length = struct.unpack(endian + "HHI", raw)
        if (group, elem) == _SEQUENCE_END:
            return
        if (group, elem) != _ITEM or length == _UNDEFINED:
            raise DicomPixelDataError(
                f"is damaged: its compressed pixel data holds ({group:04X},{elem:04X}) at "
                f"byte {at} where a fragment should start"
            )
        if at + 8 + length > size:
            raise DicomPixelDataError(
                f"is truncated: its compressed pixel data needs at least "
                f"{at + 8 + length - offset} bytes but the file ends {size - offset} bytes "
                "into it"
            )
        walker.fh.seek(length, os.SEEK_CUR)


def _start(fh: BinaryIO) -> int:
    """Offset of the first data element: after the preamble, or 0 without one."""
    head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return 132
    group = struct.unpack("<H", head[:2])[0] if len(head) >= 8 else None
    if group not in (0x0002, 0x0008):
        raise DicomHeaderError("it has neither the DICM marker nor DICOM data elements")
    return 0


def read_dicom_header(path: str | os.PathLike[str]) -> DicomHeader:
    """Walk the header of one DICOM file (no pixels are read).

    Raises
    ------
    DicomPixelDataError
        When the header is readable but the pixel data does not fit in the file.
    DicomHeaderError
        When the file is not DICOM or its header is damaged.
    OSError
        When the file cannot be opened or read (e.g. ``PermissionError``).
    """
    size = os.stat(path).st_size
    header = DicomHeader(path=os.fspath(path), size=size)
    with open(path, "rb") as fh:
        start = _start(fh)
        fh.seek(start)
        walker = _Walker(fh, size)
        while True:  # file meta information: group 0002, always explicit little endian
            at = fh.tell()
            peek = fh.read(2)
            fh.seek(at)
            if len(peek) < 2 or struct.unpack("<H", peek)[0] != 0x0002:
                break
            found = walker.element(True, True)
            if found is None:
                break
            group, elem, _, length = found
            if length == _UNDEFINED:
                raise DicomHeaderError("its file meta information is damaged")
            if (group, elem) in _WANTED and length <= _MAX_VALUE:
                _store(header, _WANTED[(group, elem)], fh.read(length), "<")
            else:
                walker.skip((group, elem), length)
        if start and header.transfer_syntax is None:
            raise DicomHeaderError("it has the DICM marker but no file meta information")
        syntax = header.transfer_syntax
        if syntax is None:  # no meta information: guess from the first element
            peek = fh.read(6)
            fh.seek(fh.tell() - len(peek))
            explicit = len(peek) == 6 and peek[4:6].isalpha() and peek[4:6].isupper()
            syntax = "1.2.840.10008.1.2.1" if explicit else _IMPLICIT_LITTLE
        if syntax == _DEFLATED:
            header.walked = False
            return header
        explicit, little = syntax != _IMPLICIT_LITTLE, syntax != _EXPLICIT_BIG
        endian = "<" if little else ">"
        while True:
            found = walker.element(explicit, little)
            if found is None:
                break
            group, elem, vr, length = found
            tag = (group, elem)
            if tag in _PIXEL_TAGS:
                header.pixel_offset = fh.tell()
                header.pixel_length = None if length == _UNDEFINED else length
                break
            if group == 0xFFFE or group > 0x7FE0:
                break  # stray delimiters or trailing padding: nothing more to learn
            if length == _UNDEFINED:
                walker.sequence(explicit and vr != b"UN", little or vr == b"UN", 0)
            elif tag in _WANTED and length <= _MAX_VALUE:
                value = fh.read(length)
                if len(value) < length:
                    raise DicomHeaderError(f"the file ends inside ({group:04X},{elem:04X})")
                _store(header, _WANTED[tag], value, endian)
            else:
                walker.skip(tag, length)
        _check_pixel_data(walker, header, little)
    return header


@dataclass
class FolderScan:
    """Every regular file of a folder, sorted into what the header walk made of it."""

    headers: dict[str, DicomHeader] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # cannot be opened at all
    not_dicom: dict[str, str] = field(default_factory=dict)  # DICOM-looking, header broken
    cut_off: dict[str, str] = field(default_factory=dict)  # pixel data does not fit
    other: list[str] = field(default_factory=list)  # readable, but do not look like DICOM


def scan_folder(folder: Path) -> FolderScan:
    """Walk the header of every DICOM-looking file in ``folder`` (no pixels are read)."""
    scan = FolderScan()
    with os.scandir(folder) as entries:
        files = sorted((e.name, e.path) for e in entries if e.is_file())
    for name, path in files:
        if not os.access(path, os.R_OK):
            scan.unreadable[name] = "permission denied"
            continue
        try:
            if not is_dicom_file(path):
                scan.other.append(name)
                continue
            scan.headers[name] = read_dicom_header(path)
        except PermissionError:
            scan.unreadable[name] = "permission denied"
        except OSError as exc:
            scan.unreadable[name] = exc.strerror or str(exc)
        except DicomPixelDataError as exc:
            scan.cut_off[name] = str(exc)
        except DicomHeaderError as exc:
            scan.not_dicom[name] = f"not DICOM or damaged: {exc}"
    return scan


def sitk_header(path: str) -> DicomHeader:
    """The header fields from SimpleITK, for files the walker could not handle."""
    header = DicomHeader(path=path, size=0, walked=False)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return header

    def tag(key: str) -> str | None:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None

    for key, name, n in (("0020|0032", "position", 3), ("0020|0037", "orientation", 6)):
        text = tag(key)
        try:
            values = tuple(float(v) for v in text.split("\\")) if text else ()
        except ValueError:
            values = ()
        setattr(header, name, values if len(values) == n else None)
    columns, rows = reader.GetSize()[:2]
    header.columns, header.rows = int(columns), int(rows)
    frames = tag("0028|0008")
    header.frames = int(frames) if frames and frames.isdigit() else 1
    return header
