"""The paper-size synthetic set: 30 sharp images x 32 trajectory kernels, 450x450, into a fresh store.

The paper blurs 30 sharp images with 32 camera-shake kernels of 11-55 px (960
images of 450x450, Gaussian noise of sigma 2 in 8-bit units) and covers each by
121 windows of 228x228 at stride 20.  scikit-image ships 18 usable pictures, so
the 30 sharp images come from two ``goodregions synth`` runs into the same store:

1. ``--sharp builtin``: the 18 built-in pictures x 32 kernels = 576 images;
2. ``--sharp DIR --fit resize``: the 11 Set12 pictures of ``../shared/data/set12``
   (256 and 512 px, hence the resize) plus Levin's ``im1`` = 12 x 32 = 384 images,
   appended to the store (the 32 kernels already there are reused);

then the second command once more, which must find nothing to do.  Each command
runs as a user runs it (a fresh ``goodregions`` process, all cores); the total
time is the sum of the two runs that make images.  Printed: time, images/s,
bytes on disk per image (the blurred and sharp pixels) and the bytes per window
beyond the image pixels (everything but ``blurred/`` and ``sharp/``, divided by
the number of windows).

Usage::

    python benchmarks/synth.py [--set12 ../shared/data/set12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRA_PICTURE = ROOT / "tests" / "data" / "levin2009" / "sharp" / "im1.png"


def synth(store: pathlib.Path, *args: str) -> tuple[float, str]:
    """Run ``goodregions synth STORE ARGS -q`` in a fresh process; (wall seconds, its output line)."""
    command = [sys.executable, "-m", "goodregions.cli", "synth", str(store), *args, "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return seconds, done.stdout.strip().replace(str(store), "STORE")


def disk_usage(store: pathlib.Path) -> dict[str, int]:
    usage: dict[str, int] = {}
    for path in store.rglob("*"):
        if path.is_file():
            top = path.relative_to(store).parts[0]
            usage[top] = usage.get(top, 0) + path.stat().st_size
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set12", type=pathlib.Path, default=ROOT.parent / "shared" / "data" / "set12")
    parser.add_argument("--keep", type=pathlib.Path, default=None, help="Build the store here and keep it.")
    args = parser.parse_args()
    pictures = sorted(args.set12.glob("*.png"))
    if len(pictures) != 11:
        sys.exit(f"--set12: expected the 11 Set12 pictures in {args.set12}, found {len(pictures)}")

    with tempfile.TemporaryDirectory(prefix="goodregions-bench-") as tmp:
        folder = pathlib.Path(tmp) / "set12_plus_levin"
        folder.mkdir()
        for p in pictures:
            shutil.copy(p, folder / p.name)
        shutil.copy(EXTRA_PICTURE, folder / "levin_im1.png")
        store = args.keep or pathlib.Path(tmp) / "store"
        if store.exists():
            sys.exit(f"--keep: {store} exists; give a new folder")

        t_builtin, line_builtin = synth(store, "--sharp", "builtin")
        t_folder, line_folder = synth(store, "--sharp", str(folder), "--fit", "resize")
        t_again, line_again = synth(store, "--sharp", str(folder), "--fit", "resize")
        if not line_again.startswith("nothing to do"):
            sys.exit(f"the rerun was not a no-op: {line_again}")

        images = pq.read_table(store / "images.parquet")
        windows = pq.read_table(store / "windows.parquet").num_rows
        n = images.num_rows
        sharp = len(set(images["sharp_source"].to_pylist()))
        kernels = len(set(images["kernel_index"].to_pylist()))
        sizes = images["kernel_size"].to_pylist()
        if (n, sharp, kernels, windows) != (960, 30, 32, 960 * 121):
            sys.exit(f"unexpected store: {n} images, {sharp} sharp, {kernels} kernels, {windows} windows")
        usage = disk_usage(store)

    total = t_builtin + t_folder
    pixels = usage["blurred"] + usage["sharp"]
    beyond = sum(v for k, v in usage.items() if k not in ("blurred", "sharp"))
    as_patches = windows * 228 * 228 * 4  # the alternative: every window stored as float32 pixels
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}; "
        "each run is a fresh `goodregions synth ... -q` process using every core"
    )
    print(f"run 1 (--sharp builtin, 18 x 32):                  {t_builtin:6.1f} s   {line_builtin}")
    print(f"run 2 (--sharp set12+1 --fit resize, 12 x 32):     {t_folder:6.1f} s   {line_folder}")
    print(f"run 3 (run 2 again):                               {t_again:6.1f} s   {line_again}")
    print()
    print(
        "| images | sharp x kernels | kernel sizes | windows | time (runs 1 + 2) | images/s "
        "| pixels on disk / image | bytes / window beyond pixels | store total |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {n} | {sharp} x {kernels} | {min(sizes)}-{max(sizes)} px | {windows} | {total:.1f} s | {n / total:.1f} "
        f"| {pixels / n / 1024:.0f} KiB | {beyond / windows:.1f} B | {sum(usage.values()) / 2**20:.0f} MiB |"
    )
    print()
    print("bytes on disk by entry: " + ", ".join(f"{k} {v:,}" for k, v in sorted(usage.items())))
    print(
        f"per image: blurred {usage['blurred'] / n / 1024:.0f} KiB (raw float32 {450 * 450 * 4 / 1024:.0f} KiB), "
        f"sharp {usage['sharp'] / n / 1024:.0f} KiB (one 450x450 per sharp image, shared by its 32 blurs)"
    )
    print(
        f"windows as coordinates: the store is {as_patches / sum(usage.values()):.0f}x smaller than the "
        f"{windows} windows as float32 pixels ({as_patches / 2**30:.1f} GiB)"
    )
    print(
        f"targets: total {total:.1f} s < 120 s: {'yes' if total < 120 else 'NO'}; "
        f"{beyond / windows:.1f} B/window beyond pixels < 300: {'yes' if beyond / windows < 300 else 'NO'}"
    )


if __name__ == "__main__":
    main()
