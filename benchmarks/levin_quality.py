"""Quality of the blind estimators on Levin et al. 2009: similarity, error ratio and seconds per image.

Inputs (both optional, at least one):

* ``--pairs DIR``: the synthetic pairs written by ``../shared/tools/levin_synth.py``
  (``im{i}_k{j}.png`` 16-bit + ``im{i}_k{j}_true.npy`` + ``pairs.csv``); the sharp
  images for the error ratio come from ``--levin``.
* ``--real``: the 32 real blurred photographs in ``LEVIN/blurred``.

Each whole image is estimated with kernel size = true size + 4 (Cho & Lee's
protocol).  Printed: a Markdown table per set (pair, similarity, error ratio,
seconds) and a summary line with medians, next to what a delta kernel (no
estimation at all) scores on the same pairs.  ``--check-similarity FILE`` also
scores every estimate with an independent similarity implementation (a Python
file defining ``similarity(a, b)``) and reports the largest disagreement.

``--dither SEED [SEED ...]`` runs each set once more per seed on re-drawn copies
of the blurred inputs: uniform noise of less than half a quantisation step of the
PNG (1/65535 for the 16-bit synthetic pairs, 1/255 for the 8-bit photographs) is
added, so every copy still rounds to the same file, and a summary of the medians
over the seeds is printed.  Estimators with hard thresholds (``pan-l0``,
``dark-channel``) turn such differences into different kernels; the spread of the
medians says how far one run's median can be trusted.

Usage::

    python ../shared/tools/levin_synth.py ../shared/data/levin2009 /tmp/levin_s01 --sigma 0.01
    python benchmarks/levin_quality.py --levin ../shared/data/levin2009 --pairs /tmp/levin_s01 --real \\
        --check-similarity ../shared/tools/similarity.py --estimator l0grad
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import platform
import re
import statistics
import time

import imageio.v3 as iio
import numpy as np

from kernels_gpu import estimators
from kernels_gpu.kernels import delta
from kernels_gpu.metrics import error_ratio
from kernels_gpu.similarity import similarity
from pipeline.labels import estimate_kernel_size


def _unit(path: pathlib.Path, rng: np.random.Generator | None = None) -> np.ndarray:
    """Grey levels in [0, 1]; with ``rng``, plus a dither that still rounds to the same file."""
    pixels = iio.imread(path)
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    values = pixels.astype(np.float64)
    if rng is not None:
        values = np.clip(values + rng.uniform(-0.49, 0.49, values.shape), 0, scale)
    return (values / scale).astype(np.float32)


def synthetic_pairs(pairs: pathlib.Path, levin: pathlib.Path, rng: np.random.Generator | None = None):
    for truth_path in sorted(pairs.glob("im*_k*_true.npy")):
        i, j = map(int, re.match(r"im(\d+)_k(\d+)_true", truth_path.stem).groups())
        yield (
            f"im{i}_k{j}",
            _unit(truth_path.with_name(f"im{i}_k{j}.png"), rng),
            _unit(levin / "sharp" / f"im{i}.png"),
            np.load(truth_path),
        )


def real_pairs(levin: pathlib.Path, rng: np.random.Generator | None = None):
    for path in sorted((levin / "blurred").glob("im*_kernel*.png")):
        i, j = map(int, re.match(r"im(\d+)_kernel(\d+)", path.stem).groups())
        yield (
            f"im{i}_k{j}",
            _unit(path, rng),
            _unit(levin / "sharp" / f"im{i}.png"),
            np.load(levin / "kernels" / f"kernel{j}.npy"),
        )


def summary(rows) -> dict:
    """Of ``run_set``'s rows: median, mean and worst similarity, pairs above 0.75, median ER, pairs at ER <= 3."""
    sims = [r[1] for r in rows]
    ers = [r[2] for r in rows]
    return {
        "n": len(rows),
        "median": statistics.median(sims),
        "mean": statistics.fmean(sims),
        "worst": min(sims),
        "above": sum(v > 0.75 for v in sims),
        "median_er": statistics.median(ers),
        "er3": sum(e <= 3 for e in ers),
    }


def run_set(title, pairs, estimator, reference_similarity, table=True):
    rows = []
    for name, blurred, sharp, truth in pairs:
        size = estimate_kernel_size(truth.shape[0])
        start = time.perf_counter()
        kernel = np.asarray(estimator(blurred[None], size))[0]
        seconds = time.perf_counter() - start
        sim = float(similarity(kernel, truth))
        floor = float(similarity(delta(size), truth))
        er = float(error_ratio(blurred, sharp, kernel, truth))
        check = abs(reference_similarity(kernel, truth) - sim) if reference_similarity else None
        rows.append((name, sim, er, seconds, floor, check))
    print(f"\n### {title}: {estimator.id}\n")
    if table:
        print("| pair | similarity | error ratio | seconds |")
        print("|---|---|---|---|")
        for name, sim, er, sec, _, _ in rows:
            print(f"| {name} | {sim:.3f} | {er:.2f} | {sec:.2f} |")
    m = summary(rows)
    print(
        f"\n**{title}** ({m['n']} pairs): median similarity **{m['median']:.3f}** "
        f"(worst {m['worst']:.3f}, {m['above']}/{m['n']} above 0.75); "
        f"median error ratio {m['median_er']:.2f} ({m['er3']}/{m['n']} at ER <= 3); "
        f"median {statistics.median([r[3] for r in rows]):.2f} s per image; "
        f"a delta kernel scores median {statistics.median([r[4] for r in rows]):.3f}."
    )
    if reference_similarity:
        print(f"Largest difference to the independent similarity: {max(r[5] for r in rows):.2e}.")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levin", type=pathlib.Path, required=True, help="levin2009 folder (sharp/, kernels/, blurred/)")
    ap.add_argument("--pairs", type=pathlib.Path, action="append", default=[], help="levin_synth.py output folder")
    ap.add_argument("--real", action="store_true", help="also run the 32 real photographs")
    ap.add_argument("--estimator", default="l0grad")
    ap.add_argument("--check-similarity", type=pathlib.Path, default=None)
    ap.add_argument(
        "--dither", type=int, nargs="+", default=[], metavar="SEED", help="also run on dithered copies, one per seed"
    )
    args = ap.parse_args()

    reference = None
    if args.check_similarity:
        spec = importlib.util.spec_from_file_location("reference_similarity", args.check_similarity)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        reference = module.similarity
    estimator = estimators.get(args.estimator)
    print(
        f"machine: {platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
        f"numpy {np.__version__}; estimator {estimator.id}"
    )
    sets = [
        (f"synthetic {folder.name}", lambda rng, f=folder: synthetic_pairs(f, args.levin, rng)) for folder in args.pairs
    ]
    if args.real:
        sets.append(("real photographs", lambda rng: real_pairs(args.levin, rng)))
    for title, pairs in sets:
        runs = [("as stored", run_set(title, pairs(None), estimator, reference))]
        for seed in args.dither:
            rng = np.random.default_rng(seed)
            runs.append((f"dither {seed}", run_set(f"{title}, dither {seed}", pairs(rng), estimator, reference, False)))
        if args.dither:
            dither_spread(title, runs)


def dither_spread(title, runs) -> None:
    """Per run: median and mean similarity, median error ratio; then the spread of the medians."""
    print(f"\n### {title}: the same inputs, re-drawn below half a quantisation step\n")
    print("| run | median similarity | mean | > 0.75 | median ER | ER <= 3 |")
    print("|---|---|---|---|---|---|")
    medians = []
    for label, rows in runs:
        m = summary(rows)
        medians.append(m["median"])
        print(
            f"| {label} | {m['median']:.3f} | {m['mean']:.3f} | {m['above']}/{m['n']} "
            f"| {m['median_er']:.2f} | {m['er3']}/{m['n']} |"
        )
    print(
        f"\nMedian similarity over {len(runs)} runs: mean {statistics.fmean(medians):.3f}, "
        f"standard deviation {statistics.stdev(medians):.3f}, range {min(medians):.3f}-{max(medians):.3f}."
    )


if __name__ == "__main__":
    main()
