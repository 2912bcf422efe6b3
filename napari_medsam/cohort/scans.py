"""Turn a command-line argument into the scans of a cohort: a folder, a glob or a CSV.

Rules (documented in ``docs/cli.md``, section "Cohorts")
--------------------------------------------------------
* **One scan**: an existing file that is not a ``.csv``, or a folder that directly holds a
  DICOM series. The commands treat it exactly as before (see :func:`is_many`).
* **Folder** (one without DICOM files of its own): its direct entries, sorted by name, that
  are NIfTI/NRRD/MetaImage files (``.nii.gz .nii .nrrd .nhdr .mha .mhd``) or sub-folders
  directly holding a DICOM series. Sub-folders are not searched further. Hidden entries
  (``.name``) and files named like label maps (a word of the name starts with ``label``,
  ``seg`` or ``mask``: ``liver_seg.nii.gz``, ``hippocampus_003_label.nii.gz``; not
  ``totalseg_ct.nii.gz``) are left out.
* **Glob** (an argument with ``*``, ``?`` or ``[`` that is not an existing path; quote it):
  the matches, sorted, that are such files or DICOM folders; the same two exclusions.
* **CSV** (a file ending in ``.csv``): one scan per row, with a header; ``embed`` reads the
  column ``image``, ``segment`` the columns ``image``, ``prompts`` and ``out``. Other
  columns are ignored, blank rows skipped, relative paths are relative to the CSV's folder.
  Label-named files are kept: the rows say exactly what to do.
* **Scan name**: a file's name without its extension (``case_01.nii.gz`` -> ``case_01``,
  ``brain.nrrd`` -> ``brain``); a DICOM folder's name. ``segment`` with ``--prompts`` and
  ``--out`` folders reads ``<prompts>/<scan name>.json`` and writes
  ``<out>/<scan name>.nii.gz``, so two scans with one name are refused there.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from napari_medsam.io import folder_has_dicom, volume_name
from napari_medsam.io.read import VOLUME_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = ["CohortError", "Job", "embed_jobs", "is_many", "scan_name", "segment_jobs"]

#: A word of a file name that starts with one of these marks a label map, not a scan.
_LABEL_WORD = re.compile(r"(?:^|[^a-z])(label|seg|mask)", re.IGNORECASE)
_GLOB_CHARS = ("*", "?", "[")
#: What ``segment`` writes per scan in an ``--out`` folder.
OUTPUT_EXTENSION = ".nii.gz"


class CohortError(ValueError):
    """The scans of a cohort could not be listed (a usage error); the message says why."""


@dataclass(frozen=True)
class Job:
    """One scan of a cohort and, for ``segment``, its prompt file and output."""

    name: str
    image: str
    prompts: str | None = None
    out: str | None = None


def scan_name(path: str | os.PathLike[str]) -> str:
    """The scan name of ``path`` (see the module docstring)."""
    return volume_name(path)


def is_many(argument: str) -> bool:
    """Whether ``argument`` names many scans (folder, glob, CSV) rather than one scan.

    A path that does not exist and has no glob characters counts as one scan, so that
    reading it gives today's "does not exist" message.
    """
    path = Path(argument).expanduser()
    if path.is_dir():
        return not folder_has_dicom(path)
    if path.exists():
        return path.name.lower().endswith(".csv")
    return any(ch in argument for ch in _GLOB_CHARS)


def _looks_like_labels(path: Path) -> bool:
    return path.is_file() and bool(_LABEL_WORD.search(path.name))


def _is_scan(path: Path) -> bool:
    """A volume file or a folder holding DICOM (never a single loose DICOM file)."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return folder_has_dicom(path)
    return path.is_file() and path.name.lower().endswith(VOLUME_EXTENSIONS)


def _keep(paths: list[Path], where: str) -> list[Path]:
    scans = [p for p in paths if _is_scan(p)]
    labels = [p.name for p in scans if _looks_like_labels(p)]
    if labels:
        logger.info("%s: left out %d label map(s) by name: %s", where, len(labels),
                    ", ".join(labels))
    return [p for p in scans if not _looks_like_labels(p)]


def list_scans(argument: str) -> list[Path]:
    """The scans of a folder or glob argument (see the module docstring), sorted."""
    path = Path(argument).expanduser()
    if path.is_dir():
        scans = _keep(sorted(path.iterdir()), str(path))
        what = f"folder {path}"
    else:
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(argument)))]
        scans = _keep(matches, argument)
        what = f"pattern {argument!r}"
    if not scans:
        raise CohortError(f"no scans in {what} (NIfTI/NRRD/MetaImage files and DICOM "
                          "series folders count; files named like label maps do not)")
    return scans


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV with these columns (paths resolved against the CSV's folder)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(c or "").strip() for c in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise CohortError(f"{path}: the header must name the column(s) "
                                  f"{', '.join(columns)}; missing {', '.join(missing)} "
                                  f"(found: {', '.join(header) or 'no header'})")
            reader.fieldnames = header
            rows = []
            for row in reader:
                values = {c: (row.get(c) or "").strip() for c in columns}
                if not any(values.values()):
                    continue  # a blank row
                empty = [c for c in columns if not values[c]]
                if empty:
                    raise CohortError(f"{path}, line {reader.line_num}: empty "
                                      f"{', '.join(empty)}")
                rows.append({c: str(path.parent / Path(v).expanduser())
                             for c, v in values.items()})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortError(f"{path}: cannot read the CSV ({exc})") from exc
    if not rows:
        raise CohortError(f"{path}: no rows (one scan per row under the header "
                          f"{','.join(columns)})")
    return rows


def _is_csv(argument: str) -> bool:
    path = Path(argument).expanduser()
    return path.is_file() and path.name.lower().endswith(".csv")


def embed_jobs(argument: str) -> list[Job]:
    """The scans ``napari-medsam embed`` gets from a folder, glob, CSV or one scan."""
    if _is_csv(argument):
        rows = _csv_rows(Path(argument).expanduser(), ("image",))
        return [Job(scan_name(r["image"]), r["image"]) for r in rows]
    if not is_many(argument):
        return [Job(scan_name(argument), str(Path(argument).expanduser()))]
    return [Job(scan_name(p), str(p)) for p in list_scans(argument)]


def segment_jobs(argument: str, prompts: str | None, out: str | None) -> list[Job]:
    """The scans, prompt files and outputs of ``napari-medsam segment``.

    A CSV gives all three per row (then ``prompts`` and ``out`` must be None); a folder or
    glob takes ``<prompts>/<scan name>.json`` and writes ``<out>/<scan name>.nii.gz`` (the
    folder ``out`` is created when missing, its parent must exist); one
    scan takes ``prompts`` and ``out`` as they are.
    """
    if _is_csv(argument):
        if prompts or out:
            raise CohortError("with a CSV the prompt file and output of each scan come from "
                              "its columns prompts and out: leave out --prompts and --out")
        rows = _csv_rows(Path(argument).expanduser(), ("image", "prompts", "out"))
        jobs = [Job(scan_name(r["image"]), r["image"], r["prompts"], r["out"]) for r in rows]
        _check_unique([j.out for j in jobs if j.out], "output")
        return jobs
    if not prompts or not out:
        raise CohortError("give --prompts and --out (for many scans: a folder of "
                          "<scan name>.json files and an output folder), or a CSV with the "
                          "columns image,prompts,out")
    if not is_many(argument):
        return [Job(scan_name(argument), str(Path(argument).expanduser()), prompts, out)]
    prompt_dir, out_dir = Path(prompts).expanduser(), Path(out).expanduser()
    if not prompt_dir.is_dir():
        raise CohortError(f"--prompts {prompt_dir}: for many scans this is a folder holding "
                          "<scan name>.json per scan")
    if out_dir.name.lower().endswith(VOLUME_EXTENSIONS) or out_dir.is_file():
        raise CohortError(f"--out {out_dir}: for many scans this is a folder (one "
                          f"<scan name>{OUTPUT_EXTENSION} per scan is written there)")
    if not out_dir.parent.is_dir():
        raise CohortError(f"--out {out_dir}: its folder {out_dir.parent} does not exist")
    scans = list_scans(argument)
    _check_unique([scan_name(p) for p in scans], "scan name", scans)
    try:
        out_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise CohortError(f"--out {out_dir}: cannot create the folder ({exc})") from exc
    return [Job(scan_name(p), str(p), str(prompt_dir / f"{scan_name(p)}.json"),
                str(out_dir / f"{scan_name(p)}{OUTPUT_EXTENSION}")) for p in scans]


def _check_unique(values: list[str], what: str, paths: list[Path] | None = None) -> None:
    clashes = [v for v, n in Counter(values).items() if n > 1]
    if not clashes:
        return
    detail = clashes[0]
    if paths is not None:
        same = [str(p) for p in paths if scan_name(p) == clashes[0]]
        detail = f"{clashes[0]!r} ({', '.join(same)})"
    raise CohortError(f"two scans share the {what} {detail}: rename one, or list the scans "
                      "in a CSV with an out column")


def display_names(jobs: list[Job]) -> list[str]:
    """The name of each job for progress and the summary: the scan name; where several scans
    share it, ``<folder>/<scan name>``, or the image path when that is shared too."""
    counts = Counter(j.name for j in jobs)
    names = [j.name if counts[j.name] == 1 else f"{Path(j.image).parent.name}/{j.name}"
             for j in jobs]
    counts = Counter(names)
    return [n if counts[n] == 1 else j.image for n, j in zip(names, jobs, strict=True)]
