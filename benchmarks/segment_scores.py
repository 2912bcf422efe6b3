"""Score ``napari-medsam segment`` outputs against the reference, object by object.

    python benchmarks/segment_scores.py IMAGE PROMPTS.json OUTPUT REFERENCE [REFERENCE...]

For each object of the prompt file: Dice between the output's voxels of that label and the
reference's, over what the object covers by design (the whole volume for an unbounded
propagation, the slice range for a 3D box or a bounded propagation, the prompt's slice for a
2D object). Several reference files are combined (``dcmqi_ct_3slice`` has two); a reference
on another grid is resampled onto the image in physical space
(:func:`napari_medsam.evaluation.align_reference`). The output's geometry is checked against
the image (shape, spacing, origin, direction). Prints one Markdown row per object.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scope(prompt, shape: tuple[int, int, int]) -> tuple[str, tuple[slice, ...]]:
    """A description and the index of the voxels an object covers by design."""
    index = [slice(None)] * 3
    if prompt.propagate and prompt.slice_range is None:
        return "3D", tuple(index)
    if prompt.slice_range is not None:
        first, last = prompt.slice_range
        index[prompt.axis] = slice(first, last + 1)
        return f"slices {first}..{last}", tuple(index)
    index[prompt.axis] = slice(prompt.slice, prompt.slice + 1)
    return f"slice {prompt.slice}", tuple(index)


def mode(prompt) -> str:
    if prompt.propagate:
        return "propagate_range" if prompt.slice_range is not None else "propagate"
    return "box_range" if prompt.slice_range is not None else "2d"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("prompts")
    parser.add_argument("output")
    parser.add_argument("references", nargs="+")
    parser.add_argument("--case", help="case name in the table (default: output file stem)")
    args = parser.parse_args()

    from napari_medsam.evaluation import align_reference, dice
    from napari_medsam.io import read_volume
    from napari_medsam.segmentation.prompts_file import load_prompts

    image = read_volume(args.image)
    output = read_volume(args.output)
    same = (output.shape == image.shape
            and np.allclose(output.spacing, image.spacing, atol=1e-6)
            and np.allclose(output.origin, image.origin, atol=1e-6)
            and np.allclose(output.direction, image.direction, atol=1e-6))
    if not same:
        raise SystemExit(f"{args.output}: geometry differs from {args.image}")
    reference = np.zeros(image.shape, dtype=np.int64)
    for path in args.references:
        aligned, _ = align_reference(image, read_volume(path))
        reference = np.where(aligned > 0, aligned, reference)
    labels = np.asarray(output.array)
    case = args.case or Path(args.output).name.split(".")[0]
    for prompt in load_prompts(args.prompts, image.shape):
        where, index = scope(prompt, image.shape)
        got = labels[index] == prompt.label
        want = reference[index] == prompt.label
        kind = "click" if prompt.points and prompt.box is None else "box"
        if prompt.points and prompt.box is not None:
            kind = "box+clicks"
        print(f"| {case} | {prompt.label} | {prompt.name or ''} | {kind} | {mode(prompt)} | "
              f"{where} | {dice(got, want):.3f} | {int(got.sum())} |")


if __name__ == "__main__":
    main()
