"""Two tracks: the product's run and naive's tight-box run, and where each one is right.

The study's per-structure target fails on two kinds of structure (README, 2026-12-06):
runs with the product's margin walk from one vertebra or rib into the next (naive's
tight box shrinks out of it and so ends near the object's end), and runs the product's
rules end early where naive goes on (the MR abdomen's aorta, liver, spinal cord). Both
runs cost little beside each other: naive's step is one decoder call per slice.

``record`` stores both 3D results per structure (``--store``, one ``.npz`` each, with the
anchor slice); ``analyse`` combines them offline, per direction beyond the anchor:

* ``cap``: the product's run ends where naive's run vanished, when the two masks still
  agreed (Dice >= ``--agree``) on naive's last slice: the tight box lost the object
  suddenly, not by shrinking slice after slice (as it does inside the spleen);
* ``extend``: where the product's run stopped and naive's goes on, naive's masks are taken
  beyond the product's last slice, while they agree with the last product mask;
* both.

Usage::

    NAPARI_MEDSAM_CACHE=/tmp/prop-cache OMP_NUM_THREADS=1 python \\
        research/propagation_stop_rules/two_tracks.py record --subset all --store /tmp/tracks
    python research/propagation_stop_rules/two_tracks.py analyse --store /tmp/tracks
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import study  # noqa: E402
import variants  # noqa: E402
from table import GROUPS  # noqa: E402

from napari_medsam.engine import load_model  # noqa: E402
from napari_medsam.evaluation import dice  # noqa: E402

logger = logging.getLogger("two_tracks")


def record(keys: list[str], store: Path) -> None:
    store.mkdir(parents=True, exist_ok=True)
    model = load_model("litemedsam", device="cpu", threads=1)

    def done(key: str) -> bool:
        return (store / f"{key.replace(':', '_')}.npz").exists()

    for key, session, obj, z, anchor in study.each_anchor(model, keys, done):
        product, stops = variants.propagate(session, z, anchor,
                                            variants.VARIANTS["product"])
        tight = study.naive(session, z, anchor) if anchor.any() else product
        np.savez_compressed(store / f"{key.replace(':', '_')}.npz", z=z, obj=obj,
                            product=product, naive=tight)
        logger.info("%s product %.3f naive %.3f %s", key, dice(product, obj),
                    dice(tight, obj), stops)


def _extent(vol: np.ndarray, z: int, direction: int) -> int:
    """The last slice from ``z`` in ``direction`` before the first empty one."""
    index = z
    while 0 <= index + direction < vol.shape[0] and vol[index + direction].any():
        index += direction
    return index


def combine(product: np.ndarray, naive: np.ndarray, z: int, agree: float, cap: bool,
            extend: bool) -> np.ndarray:
    out = product.copy()
    for d in (+1, -1):
        end_p, end_n = _extent(product, z, d), _extent(naive, z, d)
        if cap and (end_p - end_n) * d > 0 and end_n != z:
            if dice(product[end_n], naive[end_n]) >= agree:
                lo, hi = sorted((end_n + d, end_p))
                out[lo:hi + 1] = False
        if extend and (end_n - end_p) * d > 0:
            last = product[end_p]
            index = end_p + d
            while (index - end_n) * d <= 0 and dice(naive[index], last) >= agree:
                out[index] = naive[index]
                last = naive[index]
                index += d
    return out


def analyse(store: Path, base: dict, agrees: list[float]) -> None:
    rows = {}
    for path in sorted(store.glob("*.npz")):
        key = path.stem.rsplit("_", 1)
        key = f"{key[0]}:{key[1]}"
        with np.load(path) as f:
            rows[key] = {n: f[n] for n in ("z", "obj", "product", "naive")}
    keys = [k for k in rows if "naive" in base.get(k, {})]
    study_keys = [k for k in keys if base[k]["slices"] >= 10]
    naive = {k: base[k]["naive"] for k in keys}
    print(f"{len(keys)} structures ({len(study_keys)} of >= 10 slices)")
    methods = {"product": lambda r: r["product"], "naive track": lambda r: r["naive"]}
    for a in agrees:
        for name, cap, ext in (("cap", True, False), ("extend", False, True),
                               ("cap+extend", True, True)):
            methods[f"{name} {a}"] = (lambda r, a=a, cap=cap, ext=ext:
                                      combine(r["product"], r["naive"], int(r["z"]), a, cap, ext))
    print("| method | mean (>= 10 sl) | < naive - 0.05 | CT5 | MRI5 | "
          + " | ".join(GROUPS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(GROUPS))
    for name, fn in methods.items():
        got = {k: dice(fn(rows[k]), rows[k]["obj"]) for k in keys}
        sel = np.array([got[k] for k in study_keys])
        nv = np.array([naive[k] for k in study_keys])
        ct5 = [got[k] for k in variants.CT5 if k in got]
        mri5 = [got[k] for k in variants.MRI5 if k in got]
        groups = [np.mean([got[k] for k in study_keys if base[k]["group"] == g] or [np.nan])
                  for g in GROUPS]
        print(f"| {name} | {sel.mean():.3f} | {int((sel < nv - 0.05).sum())} | "
              f"{np.mean(ct5) if ct5 else np.nan:.3f} | {np.mean(mri5) if mri5 else np.nan:.3f} | "
              + " | ".join(f"{g:.3f}" for g in groups) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("record", "analyse"))
    parser.add_argument("--subset", default="losers,ct5,mri5")
    parser.add_argument("--only", help="only structures whose key starts with this")
    parser.add_argument("--store", type=Path, default=Path("/tmp/tracks"))
    parser.add_argument("--agree", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    base = variants.baseline()
    if args.command == "record":
        keys = [k for k in variants.subset_keys(args.subset, base)
                if args.only is None or k.startswith(args.only)]
        record(keys, args.store)
    else:
        analyse(args.store, base, args.agree)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
