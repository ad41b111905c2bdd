"""Training and inference speed of the two classifier architectures on the same labelled store.

Builds (once, in ``--work``) a store of 450 x 450 images with the paper's windows (228 px,
stride 20: 121 per image), labelled with l0grad, and measures for the per-window ResNet34
(``--arch window``) and the one-pass image scorer (``--arch image``):

- training windows/s: SGD steps (forward, backward, update) as ``train`` runs them, on
  batches that the training input's own loaders build from the store (``WindowCropper``:
  32 standardised windows; ``ImageLoader`` + ``collate_images``: one whole image with its
  121 window boxes);
- inference windows/s: every window of an image scored with ``cnn_scores``, as ``select``
  and ``evaluate`` do (batches of 64 windows; one pass per image);
- peak memory: the resident set of the process that measured the architecture (each runs
  in a fresh process), or the peak CUDA memory on a GPU.

Each measurement runs for ``--seconds`` after one warm-up step.  The last line is the ratio
of the two architectures in this one run.

Usage::

    python benchmarks/scorer_speed.py --work /tmp/scorer_speed [--images 4] [--seconds 60] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np
from _cli import goodregions

ROOT = pathlib.Path(__file__).resolve().parents[1]


def build(work: pathlib.Path, images: int) -> tuple[str, str]:
    """The labelled store (made once; a rerun reuses it) and its estimator id."""
    store = work / "store"
    if not (store / "manifest.json").exists():
        goodregions("synth", str(store), "--pairs", str(images), "--num-kernels", "4", "--kernel-sizes", "15:31", "-q")
    estimator = json.loads(goodregions("estimators", "--json"))
    l0 = next(e["id"] for e in estimator if e["name"] == "l0grad")
    goodregions("label", str(store), "--estimator", "l0grad", "-q")
    return str(store), l0


def measure(store_url: str, estimator_id: str, arch: str, seconds: float, device: str) -> dict:
    """One architecture's training and inference rates (runs in its own process)."""
    import torch

    from pipeline.ray.training_input import ImageLoader, WindowCropper
    from pipeline.store import Store
    from pipeline.windows import grid
    from training.data import build_index, collate_images
    from training.model import build_model
    from training.select import Classifier, cnn_scores

    torch.manual_seed(0)
    store = Store(store_url)
    size = store.manifest()["window"]["size"]
    index = build_index(store, estimator_id, 0.75)
    rows = index.to_pylist()
    model = build_model(arch=arch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def batches():  # the training input's own loaders, cycling over the store's images
        i = 0
        cropper = WindowCropper(store_url, size) if arch == "window" else ImageLoader(store_url)
        while True:
            row = rows[i % len(rows)]
            i += 1
            batch = {k: [v] for k, v in row.items()}
            batch["image_id"] = np.array([row["image_id"]])
            out = cropper(batch)
            if arch == "image":
                parts = collate_images(out, size)
                yield (parts["images"].to(device), parts["boxes"].to(device)), parts["label"].to(device)
                continue
            for start in range(0, len(out["label"]), 32):
                windows = torch.from_numpy(out["window"][start : start + 32]).unsqueeze(1).to(device)
                yield (windows,), torch.from_numpy(out["label"][start : start + 32]).to(device)

    def step(inputs, labels) -> None:
        loss = loss_fn(model(*inputs).view(-1), labels.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    stream = batches()
    model.train()
    step(*next(stream))  # warm-up
    windows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        inputs, labels = next(stream)
        step(inputs, labels)
        windows += len(labels)
    if device == "cuda":
        torch.cuda.synchronize()
    train_rate = windows / (time.perf_counter() - start)

    model.eval()
    classifier = Classifier(model, {"arch": arch, "window": size, "stride": 20}, device)
    pixels = [np.asarray(store.array(r["blurred_array"])[r["blurred_index"]], np.float32) for r in rows]
    corners = grid(*pixels[0].shape, size, 20)
    cnn_scores(classifier, pixels[0], corners[:2], size)  # warm-up
    scored, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        cnn_scores(classifier, pixels[scored // len(corners) % len(pixels)], corners, size)
        scored += len(corners)
    infer_rate = scored / (time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {
        "arch": arch,
        "train": train_rate,
        "inference": infer_rate,
        "peak_mib": peak,
        "windows_per_image": len(corners),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=pathlib.Path, required=True, help="Folder for the labelled store (reused).")
    ap.add_argument("--images", type=int, default=4, help="Blurred 450 px images in the store.")
    ap.add_argument("--seconds", type=float, default=60, help="Seconds of each measurement.")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one architecture, JSON out
    args = ap.parse_args()
    if args.measure:
        store, estimator, arch = args.measure.split("|")
        print(json.dumps(measure(store, estimator, arch, args.seconds, args.device)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    store, estimator = build(args.work, args.images)
    print(f"store {store}: {args.images} images of 450 px, 121 windows of 228 px each, labelled by {estimator} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    results = {}
    for arch in ("window", "image"):
        cmd = [sys.executable, __file__, "--work", str(args.work), "--seconds", str(args.seconds),
               "--device", args.device, "--measure", f"{store}|{estimator}|{arch}"]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if run.returncode:
            raise SystemExit(run.stdout + run.stderr)
        results[arch] = json.loads(run.stdout.strip().splitlines()[-1])
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    print(f"\n| architecture ({args.device}) | training windows/s | inference windows/s | {memory} |")
    print("|---|---|---|---|")
    for arch, r in results.items():
        print(f"| {arch} | {r['train']:.1f} | {r['inference']:.1f} | {r['peak_mib']:.0f} |")
    train = results["image"]["train"] / results["window"]["train"]
    inference = results["image"]["inference"] / results["window"]["inference"]
    print(f"\nimage scorer vs per-window: train {train:.1f}x, inference {inference:.1f}x")


if __name__ == "__main__":
    main()
