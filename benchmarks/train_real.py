"""A real training run that fits this machine: built-in pictures x generated kernels, windows of 128 px.

synth (18 built-in pictures x 8 trajectory kernels of 11-31 px, 256x256, noise
2/255, windows 128 px at stride 32: 16 per image, 2,304 in all) -> label with
``l0grad`` -> train the ResNet34 window classifier from scratch (batch 32,
SGD lr 1e-3 momentum 0.9, positive class weighted) and print the per-epoch
validation metrics, the selection metric above all: the similarity of the
window the model ranks first on each validation image, against a random window
(the mean) and the best window (the oracle).

Usage::

    python benchmarks/train_real.py --work /tmp/train_real [--epochs 6] [--threshold 0.6] [--use-gpu]
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import time

from _cli import goodregions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--use-gpu", action="store_true")
    args = ap.parse_args()
    store, model = args.work / "store", args.work / "model"
    start = time.perf_counter()
    print(
        goodregions(
            "synth",
            str(store),
            "--num-kernels",
            "8",
            "--kernel-sizes",
            "11:31",
            "--size",
            "256",
            "--margin",
            "16",
            "--window",
            "128",
            "--stride",
            "32",
            "-q",
        ).strip()
    )
    print(goodregions("label", str(store), "-q").strip().splitlines()[-1])
    estimator = goodregions("estimators", "--json")
    import json

    estimator_id = next(e["id"] for e in json.loads(estimator) if e["name"] == "l0grad")
    print(goodregions("status", str(store), "--threshold", str(args.threshold)).strip())
    train_args = [
        "train",
        str(store),
        "-e",
        estimator_id,
        "--threshold",
        str(args.threshold),
        "--out",
        str(model),
        "--epochs",
        str(args.epochs),
        "--balance",
    ] + (["--use-gpu"] if args.use_gpu else [])
    print(goodregions(*train_args).strip())
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    print(
        "| epoch | train loss | val loss | val AUC | top-1 window similarity | random window | oracle window | "
        "top-1 > random |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with open(model / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            print(
                f"| {row['epoch']} | {float(row['train_loss']):.3f} | {float(row['val_loss']):.3f} | "
                f"{float(row['val_auc']):.3f} | {float(row['top1_similarity']):.3f} | "
                f"{float(row['random_similarity']):.3f} | {float(row['oracle_similarity']):.3f} | "
                f"{float(row['top1_beats_random']):.2f} |"
            )


if __name__ == "__main__":
    main()
