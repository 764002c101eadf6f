"""Interleaved LiteRT timing of two or more .tflite models on the same input (not a test: no asserts).

    python -m quantization.timing base.tflite pruned.tflite --size 256 256 --rounds 30 --threads 1

Rounds alternate between the models so machine load (other jobs, thermal state) hits all of them
alike; the median per model and the ratios to the first model are printed.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _interpreter(path, threads, size):
    from edge_enhance.backends import read_card
    from edge_enhance.backends.litert import open_interpreter, quantise_io, without_xnnpack_notice
    from edge_enhance.tiling import check_aligned

    card = read_card(path)
    check_aligned([size], card.align if card else 1, f"{path}: --size")
    it = open_interpreter(path, num_threads=threads)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], [1, size[0], size[1], 3])
    with without_xnnpack_notice():
        it.allocate_tensors()
    x = np.random.default_rng(0).uniform(0, 1, (1, size[0], size[1], 3)).astype(np.float32)
    it.set_tensor(d["index"], quantise_io(x, d))
    return it


def time_models(paths, *, size=(256, 256), rounds: int = 30, threads: int = 1, warmup: int = 3) -> list[float]:
    """Median seconds per invoke for each model, measured in interleaved rounds."""
    its = [_interpreter(p, threads, size) for p in paths]
    for it in its:
        for _ in range(warmup):
            it.invoke()
    times = [[] for _ in its]
    for r in range(rounds):
        order = range(len(its)) if r % 2 == 0 else reversed(range(len(its)))
        for i in order:
            t = time.perf_counter()
            its[i].invoke()
            times[i].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantization.timing", description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--size", nargs=2, type=int, default=(256, 256), metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    med = time_models(a.models, size=tuple(a.size), rounds=a.rounds, threads=a.threads)
    for p, m in zip(a.models, med):
        print(f"{m * 1000:9.2f} ms  x{med[0] / m:5.2f} vs first  {p}")
    return 0


if __name__ == "__main__":
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    sys.exit(main())
