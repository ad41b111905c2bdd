"""Validation quality of the two classifier architectures trained on the same labelled store.

Builds (once, in ``--work``) a store of built-in pictures x generated camera-shake kernels,
labels every window with l0grad, then trains with ``goodregions train`` (Ray Train, the
same split by source picture for every run):

- both architectures for the same number of epochs, with ``--seeds`` seeds each (the
  spread between seeds is the run-to-run noise the comparison is read against);
- the image scorer again for the same wall-clock budget as the per-window model took
  (as many epochs as fit in the per-window run's seconds, at the image scorer's measured
  seconds per epoch), per seed.

It prints one row per run: validation ROC AUC, top-1 window similarity against random and
oracle, the seconds the run took, and a summary of both architectures at equal epochs.

Usage::

    python benchmarks/scorer_quality.py --work /tmp/scorer_quality [--epochs 3] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from _cli import goodregions


def build(work: pathlib.Path, args: argparse.Namespace) -> tuple[str, str, float]:
    """The labelled store (made once), its estimator id and the median similarity (the threshold)."""
    store = work / "store"
    if not (store / "manifest.json").exists():
        goodregions(
            "synth", str(store), "--size", str(args.size), "--margin", "16", "--fit", "resize",
            "--window", str(args.window), "--stride", str(args.stride), "--num-kernels", str(args.kernels),
            "--kernel-sizes", "9:25", "-q",
        )  # fmt: skip
    goodregions("label", str(store), "--estimator", "l0grad", "-q")
    status = json.loads(goodregions("status", str(store), "--json"))[0]
    return str(store), status["estimator"], round(status["similarity_quartiles"][1], 2)


def train(store: str, estimator: str, threshold: float, out: pathlib.Path, arch: str, epochs: int, seed: int) -> dict:
    start = time.perf_counter()
    goodregions(
        "train", store, "--estimator", estimator, "--threshold", str(threshold), "--out", str(out),
        "--arch", arch, "--epochs", str(epochs), "--seed", str(seed), "--batch-size", "16",
    )  # fmt: skip
    seconds = time.perf_counter() - start
    info = json.loads((out / "model.json").read_text())
    return {"arch": arch, "epochs": epochs, "seed": seed, "seconds": seconds, **info["metrics"]}


def row(name: str, r: dict) -> str:
    return (
        f"| {name} | {r['epochs']} | {r['seed']} | {r['val_auc']:.3f} | {r['top1_similarity']:.3f} | "
        f"{r['random_similarity']:.3f} | {r['oracle_similarity']:.3f} | {r['seconds']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=pathlib.Path, required=True, help="Folder for the store and the models.")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs of the equal-epoch runs.")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--size", type=int, default=192, help="Side of the blurred images.")
    ap.add_argument("--window", type=int, default=96)
    ap.add_argument("--stride", type=int, default=24)
    ap.add_argument("--kernels", type=int, default=8, help="Generated kernels (x the built-in pictures).")
    ap.add_argument("--max-epochs", type=int, default=30, help="Cap of the equal-time image scorer runs.")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    store, estimator, threshold = build(args.work, args)
    print(f"store {store}: labelled by {estimator}, threshold {threshold} (the median similarity); "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    runs: list[tuple[str, dict]] = []
    results = args.work / "results.json"
    done = json.loads(results.read_text()) if results.exists() else {}

    def run(name: str, arch: str, epochs: int, seed: int) -> dict:
        key = f"{name}-{arch}-{epochs}-{seed}"
        if key not in done:  # a rerun reuses finished runs
            done[key] = train(store, estimator, threshold, args.work / key, arch, epochs, seed)
            results.write_text(json.dumps(done, indent=2))
        runs.append((name, done[key]))
        print(row(name, done[key]), flush=True)
        return done[key]

    print("\n| run | epochs | seed | val AUC | top-1 similarity | random | oracle | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        window = run("per-window, equal epochs", "window", args.epochs, seed)
        image = run("image scorer, equal epochs", "image", args.epochs, seed)
        per_epoch = image["seconds"] / args.epochs
        budget = int(min(args.max_epochs, max(args.epochs, window["seconds"] // per_epoch)))
        run("image scorer, equal time", "image", budget, seed)

    def mean_sd(name: str, key: str) -> str:
        values = [r[key] for n, r in runs if n == name]
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    print("\n| run (mean ± sd over seeds) | val AUC | top-1 similarity | seconds |")
    print("|---|---|---|---|")
    for name in dict(runs):
        print(f"| {name} | {mean_sd(name, 'val_auc')} | {mean_sd(name, 'top1_similarity')} | "
              f"{np.mean([r['seconds'] for n, r in runs if n == name]):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
