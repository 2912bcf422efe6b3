"""Where the test suite's time goes: a py-spy profile of ``pytest src_tests``, summed.

Record the whole suite under py-spy (raw format, every subprocess), then sum the samples of
the pytest process by what runs at the leaf (the encoder, the decoder, PyTorch, Qt) and the
encoder's samples by test file and by whether they went through the ``litemedsam``
fixture's memo.

Usage::

    pip install py-spy
    xvfb-run -a -s "-screen 0 1600x1000x24" py-spy record -r 40 --subprocesses -f raw \\
        -o /tmp/suite-prof.txt -- python -m pytest -q -p no:cacheprovider src_tests
    python research/suite_time/profile_suite.py /tmp/suite-prof.txt
"""

from __future__ import annotations

import collections
import re
import sys

RATE = 40  # samples per second (py-spy -r)
RUNTIMES = ("onnxruntime_inference_collection", "_ov_api.py")


def category(stack: str) -> str:
    """What a sample of the pytest process was doing."""
    if any(r in stack for r in RUNTIMES):
        return "encoder" if ("embed_preprocessed" in stack or "encode_batch" in stack) \
            else "decoder (and other ONNX calls)"
    if "torch" in stack and ("backward" in stack or "autograd" in stack):
        return "PyTorch backward"
    if "torch" in stack:
        return "PyTorch forward and export"
    if "vispy" in stack or "qt" in stack.lower():
        return "Qt and vispy"
    if "SimpleITK" in stack:
        return "SimpleITK"
    if "importlib" in stack or "<frozen importlib" in stack:
        return "imports"
    return "other"


def main(path: str) -> int:
    by_category: collections.Counter = collections.Counter()
    encoder_by_file: collections.Counter = collections.Counter()
    other_processes = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip().rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if sum(f.startswith("process ") for f in stack.split(";")) != 1:
            other_processes += n  # Ray workers, CLI and export subprocesses
            continue
        kind = category(stack)
        by_category[kind] += n
        if kind == "encoder":
            tests = re.findall(r"\((?:[^)]*src_tests/)?(test_\w+)\.py", stack)
            where = tests[-1] if tests else "worker threads and fixtures"
            memo = "memo" if "_memoize_embed" in stack else "own model"
            encoder_by_file[(where, memo)] += n
    total = sum(by_category.values())
    print(f"pytest process: {total / RATE:.0f} s sampled; "
          f"subprocesses {other_processes / RATE:.0f} s")
    for kind, n in by_category.most_common():
        print(f"  {n / RATE:7.0f} s  {100 * n / total:4.1f} %  {kind}")
    print("encoder by test file:")
    for (where, memo), n in encoder_by_file.most_common(20):
        print(f"  {n / RATE:7.0f} s  {where} ({memo})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
