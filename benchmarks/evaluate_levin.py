"""Evaluate the selectors on Levin et al. 2009 with a model trained on other images.

Builds a store of the 32 synthetic Levin pairs (``levin_synth.py`` output, noise
0.01) and the 32 real photographs, both with their sharp images and true kernels
(ingest, windows of the model's size), labels it with the model's estimator (so
the oracle's pick comes from the labels), and runs ``goodregions evaluate`` with
all seven selectors on each half.  The model must not have seen Levin's images:
``benchmarks/train_real.py`` trains on scikit-image's built-in pictures.

Usage::

    python ../shared/tools/levin_synth.py ../shared/data/levin2009 /tmp/levin_s01 --sigma 0.01
    python benchmarks/evaluate_levin.py --levin ../shared/data/levin2009 --pairs /tmp/levin_s01 \\
        --model /tmp/train_real/model --work /tmp/eval_levin
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import shutil

from _cli import goodregions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levin", type=pathlib.Path, required=True)
    ap.add_argument("--pairs", type=pathlib.Path, required=True, help="levin_synth.py output folder")
    ap.add_argument("--model", type=pathlib.Path, required=True)
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--figures", type=pathlib.Path, default=None, help="copy the plots here")
    args = ap.parse_args()
    info = json.loads((args.model / "model.json").read_text())
    window, stride = str(info["window"]), str(info["stride"])
    args.work.mkdir(parents=True, exist_ok=True)
    for name, ingest in [
        ("synthetic", ["--blurred", str(args.pairs), "--kernels", str(args.pairs)]),
        ("real", ["--blurred", str(args.levin / "blurred"), "--kernels", str(args.levin / "kernels")]),
    ]:
        store = args.work / f"store_{name}"
        extra = []
        if name == "synthetic":  # levin_synth names pairs im{i}_k{j}: say which sharp image and kernel go together
            table = args.work / "pairs.csv"
            with open(table, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["blurred", "kernel", "sharp"])
                for png in sorted(args.pairs.glob("im*_k*.png")):
                    writer.writerow([png.name, f"{png.stem}_true.npy", f"{png.stem.split('_')[0]}.png"])
            extra = ["--pairs", str(table)]
        if not store.exists():
            print(
                goodregions(
                    "ingest",
                    str(store),
                    *ingest,
                    "--sharp",
                    str(args.levin / "sharp"),
                    *extra,
                    "--window",
                    window,
                    "--stride",
                    stride,
                    "-q",
                ).strip()
            )
        print(goodregions("label", str(store), "-q").strip().splitlines()[-1])
        out = args.work / f"eval_{name}"
        report = goodregions("evaluate", str(store), "--model", str(args.model), "--out", str(out), "-q")
        print(f"\n### {name}\n")
        print(report.split("wrote results")[0].strip())
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            for plot in ("er_curve.png", "psnr.png"):
                shutil.copy(out / plot, args.figures / f"levin_{name}_{plot}")


if __name__ == "__main__":
    main()
