"""The paper's setting end to end: train on Kodak24 crops, evaluate selectors on large photographs.

Training data as in Yang, Wu & Sun: 450 x 450 crops of photographs, blurred with real (Levin et
al. 2009) and generated camera-shake kernels, windows of 228 px at stride 20 (121 per image),
each labelled by ``l0grad`` and Hu & Yang's similarity. The Kodak24 pictures are split by
picture, fixed below: 18 train, 3 validation, 3 test. The test pictures are then blurred at their
full 768 x 512 size (Levin's 8 kernels, and generated 41-55 px kernels), plus Levin's 32 real
photographs and one 2048 x 2048 image, and every selector is scored by error ratio, PSNR and
the seconds it spends; a second evaluation step per set adds joint estimation from the windows
hu-yang and the oracle rank best (``EXTRA_SELECTORS``).

Every step runs the ``goodregions`` command line in DIR and is resumable: rerun the same command
after an interruption and the finished steps are skipped (each leaves ``DIR/steps/<step>.json``;
synth, label and train resume by themselves).

Usage::

    python benchmarks/paper_setting.py --work DIR --kodak ../shared/data/kodak24 \\
        --levin ../shared/data/levin2009 [--preset smoke|cpu|gpu]

``smoke`` checks the wiring in minutes (tiny, meaningless numbers); ``cpu`` is sized for about
90 minutes on 2 CPU cores; ``gpu`` is the paper's full scale (30 pictures' worth of pairs x 32
kernels) for one H100/H200. The report is ``DIR/report.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
from _cli import goodregions
from _images import camera_blur

#: the fixed split by picture (Kodak24 file names); the test pictures are landscape 768 x 512
TEST = ("kodim05", "kodim13", "kodim23")
VAL = ("kodim08", "kodim16", "kodim20")
TRAIN = tuple(f"kodim{i:02d}" for i in range(1, 25) if f"kodim{i:02d}" not in TEST + VAL)

WINDOW, STRIDE, SIZE, MARGIN = 228, 20, 450, 30  # 450 + 2 x 30 fits the 512 px side of a Kodak picture
NOISE = 0.01  # the evaluation images' Gaussian noise (Levin et al.'s sigma)


@dataclass(frozen=True)
class Preset:
    trajectory_kernels: int  # generated 11-55 px kernels beside Levin's 8
    levin_pairs: int | None  # seeded subset of the picture x Levin kernel pairs (None: all)
    trajectory_pairs: int | None  # the same for the generated kernels
    epochs: int
    batch_size: int
    eval_stride: int  # window stride on the evaluation images (every window gets an oracle label)
    test_large_kernels: int  # generated 41-55 px kernels per test picture
    levin_real: int  # how many of Levin's 32 real photographs (0: none)
    levin_stride: int  # window stride there: the photographs are 255 px, so 9 gives 3 x 3 windows of 228
    big_side: int  # side of the large-image row (0: none)
    big_stride: int
    use_gpu: bool = False
    pictures: tuple[str, ...] = TRAIN + VAL


PRESETS = {
    "smoke": Preset(
        trajectory_kernels=1,
        levin_pairs=4,
        trajectory_pairs=2,
        epochs=1,
        batch_size=8,
        eval_stride=120,
        test_large_kernels=1,
        levin_real=2,
        levin_stride=27,
        big_side=1024,
        big_stride=400,
        pictures=TRAIN[:4] + VAL[:2],
    ),
    "cpu": Preset(
        trajectory_kernels=8,
        levin_pairs=72,
        trajectory_pairs=72,
        epochs=12,
        batch_size=8,
        eval_stride=40,
        test_large_kernels=4,
        levin_real=32,
        levin_stride=9,
        big_side=2048,
        big_stride=100,
    ),
    "gpu": Preset(
        trajectory_kernels=24,
        levin_pairs=None,
        trajectory_pairs=None,
        epochs=20,
        batch_size=8,
        eval_stride=20,
        test_large_kernels=8,
        levin_real=32,
        levin_stride=9,
        big_side=2048,
        big_stride=40,
        use_gpu=True,
    ),
}

SELECTORS = (
    "cnn",
    "fergus",
    "xu-jia",
    "hu-yang",
    "random",
    "oracle",
    "whole",
    "cnn-joint-3",
    "cnn-joint-5",
    "cnn-consensus-3",
    "cnn-consensus-5",
)
#: beyond the issue's list, run as a second step: joint estimation from windows another selector
#: ranks (the learned hu-yang baseline, and the oracle's best windows: joint estimation's upper bound)
EXTRA_SELECTORS = ("hu-yang-joint-3", "hu-yang-joint-5", "oracle-joint-3", "oracle-joint-5")


class Steps:
    """Done markers: ``DIR/steps/<name>.json`` holds what the step measured."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root / "steps"
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str) -> dict | None:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, fn, *args) -> dict:
        done = self.get(name)
        if done is not None:
            print(f"[done] {name}")
            return done
        print(f"[run ] {name}", flush=True)
        start = time.perf_counter()
        result = fn(*args) or {}
        result["seconds"] = time.perf_counter() - start
        tmp = self.root / f".{name}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, self.root / f"{name}.json")
        print(f"       {name}: {result['seconds']:.0f} s", flush=True)
        return result


# ----------------------------------------------------------------------------- data


def _pictures(kodak: pathlib.Path, names: tuple[str, ...], folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / f"{name}.png"
        if not target.exists():
            shutil.copyfile(kodak / f"{name}.png", target)
    return folder


def _write_eval_set(folder: pathlib.Path, pictures: dict[str, np.ndarray], kernels: dict[str, np.ndarray], seed: int):
    """Blurred 16-bit PNGs ``<picture>_<kernel>.png``, the kernels as .npy and the sharp pictures, for ingest."""
    from pipeline.files import write_kernel, write_png

    for sub in ("blurred", "kernels", "sharp"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for kname, kernel in kernels.items():
        write_kernel(folder / "kernels" / f"{kname}.npy", kernel)
    for pname, sharp in pictures.items():
        write_png(folder / "sharp" / f"{pname}.png", sharp, bits=16)
        for kname, kernel in kernels.items():
            write_png(folder / "blurred" / f"{pname}_{kname}.png", camera_blur(sharp, kernel, NOISE, rng), bits=16)
    return folder


def _read(path: pathlib.Path) -> np.ndarray:
    from pipeline.files import read_image

    return read_image(path)


def _levin_kernels(levin: pathlib.Path) -> dict[str, np.ndarray]:
    from pipeline.files import read_kernel

    return {p.stem: read_kernel(p) for p in sorted((levin / "kernels").glob("kernel*.npy"))}


def _generated_kernels(n: int, sizes: tuple[int, int], seed: int, prefix: str) -> dict[str, np.ndarray]:
    from kernels_gpu.trajectory import camera_shake_kernels

    kernels = camera_shake_kernels(n, sizes, seed=seed)
    return {f"{prefix}{i}": np.asarray(k) for i, k in enumerate(kernels)}


# ----------------------------------------------------------------------------- steps


def synth(work: pathlib.Path, pictures: pathlib.Path, levin: pathlib.Path, preset: Preset) -> dict:
    """Two synth runs into one store: the pictures x Levin's kernels, then x generated 11-55 px kernels."""
    store = work / "store"
    grid = ["--size", str(SIZE), "--margin", str(MARGIN), "--window", str(WINDOW), "--stride", str(STRIDE)]
    runs = [(["--kernels", str(levin / "kernels")], preset.levin_pairs)]
    if preset.trajectory_kernels:
        generated = [
            "--kernels",
            "trajectory",
            "--num-kernels",
            str(preset.trajectory_kernels),
            "--kernel-sizes",
            "11:55",
        ]
        runs.append((generated, preset.trajectory_pairs))
    out = ""
    for kernels, pairs in runs:
        subset = [] if pairs is None else ["--pairs", str(pairs)]
        out += goodregions("synth", str(store), "--sharp", str(pictures), *kernels, *grid, *subset, "-q")
    print(out.strip())
    return {"output": out.strip()}


def label(store: pathlib.Path, use_gpu: bool) -> dict:
    device = ["--device", "gpu"] if use_gpu else []
    out = goodregions("label", str(store), "--estimator", "l0grad", *device, "-q")
    status = json.loads(goodregions("status", str(store), "--json"))
    print(out.strip())
    return {"output": out.strip(), "status": status}


def train(work: pathlib.Path, preset: Preset, estimator_id: str, threshold: float) -> dict:
    from pipeline.store import Store

    present = set(Store(str(work / "store")).images()["sharp_source"].to_pylist())
    # a preset's seeded pair subset may miss a validation picture
    val = ",".join(s for s in (f"file:kodak/{name}.png" for name in VAL) if s in present)
    gpu = ["--use-gpu"] if preset.use_gpu else []
    out = goodregions(
        "train", str(work / "store"), "--estimator", estimator_id, "--threshold", f"{threshold}",
        "--out", str(work / "model"), "--epochs", str(preset.epochs), "--batch-size", str(preset.batch_size),
        "--arch", "image", "--val-sources", val, "--balance", *gpu,
    )  # fmt: skip
    print(out.strip())
    return {"output": out.strip(), "threshold": threshold}


def _ingest(folder: pathlib.Path, store: pathlib.Path, stride: int) -> None:
    sources = [
        "--blurred",
        str(folder / "blurred"),
        "--kernels",
        str(folder / "kernels"),
        "--sharp",
        str(folder / "sharp"),
    ]
    goodregions("ingest", str(store), *sources, "--window", str(WINDOW), "--stride", str(stride), "-q")


def eval_sets(work: pathlib.Path, kodak: pathlib.Path, levin: pathlib.Path, preset: Preset) -> dict:
    """Write the evaluation images and ingest each set into its own store (labelled later for the oracle)."""
    from skimage.transform import resize

    tests = {name: _read(kodak / f"{name}.png") for name in TEST}
    sets = {
        "kodak-levin": (tests, _levin_kernels(levin), preset.eval_stride),
        "kodak-large": (
            tests,
            _generated_kernels(preset.test_large_kernels, (41, 55), seed=2024, prefix="large"),
            preset.eval_stride,
        ),
    }
    if preset.big_side:
        picture = tests[TEST[0]]
        scale = preset.big_side / min(picture.shape)
        big = resize(picture, (round(picture.shape[0] * scale), round(picture.shape[1] * scale)), order=3)
        y, x = (big.shape[0] - preset.big_side) // 2, (big.shape[1] - preset.big_side) // 2
        big = np.clip(big[y : y + preset.big_side, x : x + preset.big_side], 0, 1)
        kernels = _levin_kernels(levin)
        sets[f"big-{preset.big_side}"] = ({f"{TEST[0]}big": big}, {"kernel2": kernels["kernel2"]}, preset.big_stride)
    made = {}
    for name, (pictures, kernels, stride) in sets.items():
        folder = _write_eval_set(work / "eval-data" / name, pictures, kernels, seed=len(made))
        store = work / "eval" / name / "store"
        _ingest(folder, store, stride)
        made[name] = {"store": str(store), "stride": stride, "images": len(pictures) * len(kernels)}
    if preset.levin_real:
        folder = work / "eval-data" / "levin-real"
        for sub in ("blurred", "kernels", "sharp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for path in sorted((levin / "blurred").glob("*.png"))[: preset.levin_real]:
            shutil.copyfile(path, folder / "blurred" / path.name)
        for path in (levin / "kernels").glob("kernel*.npy"):
            shutil.copyfile(path, folder / "kernels" / path.name)
        for path in (levin / "sharp").glob("*.png"):
            shutil.copyfile(path, folder / "sharp" / path.name)
        store = work / "eval" / "levin-real" / "store"
        _ingest(folder, store, preset.levin_stride)
        made["levin-real"] = {"store": str(store), "stride": preset.levin_stride, "images": preset.levin_real}
    return {"sets": made}


def evaluate(
    work: pathlib.Path, name: str, store: str, stride: int, selectors=SELECTORS, folder: str = "results"
) -> dict:
    out_dir = work / "eval" / name / folder
    out = goodregions("evaluate", store, "--model", str(work / "model"), "--selectors", ",".join(selectors),
                      "--stride", str(stride), "--out", str(out_dir), "-q")  # fmt: skip
    print(out.strip())
    return {"results": str(out_dir)}


# ----------------------------------------------------------------------------- report


def _summary(results: pathlib.Path) -> dict[str, dict[str, float]]:
    import pandas as pd

    table = pd.read_parquet(results / "results.parquet")
    table = table[np.isfinite(table["error_ratio"])]
    out = {}
    for selector, rows in table.groupby("selector"):
        seconds = rows.get("estimation_seconds")
        scoring = rows.get("scoring_seconds")
        out[selector] = {
            "images": len(rows),
            "median_er": float(rows["error_ratio"].median()),
            "er2": float((rows["error_ratio"] <= 2).mean()),
            "er3": float((rows["error_ratio"] <= 3).mean()),
            "psnr": float(rows["psnr"].mean()),
            "similarity": float(rows["similarity"].mean()),
            "estimate_s": float(seconds.median()) if seconds is not None else float("nan"),
            "score_s": float(scoring.median()) if scoring is not None else float("nan"),
        }
    return out


def _targets(s: dict[str, dict[str, float]]) -> list[str]:
    """The issue's targets, checked on one set's summary."""
    lines = []
    heuristics = [h for h in ("fergus", "xu-jia", "hu-yang", "random") if h in s]
    if "cnn" in s and heuristics:
        best = min(heuristics, key=lambda h: s[h]["median_er"])
        beats = all(s["cnn"]["median_er"] < s[h]["median_er"] and s["cnn"]["er3"] >= s[h]["er3"] for h in heuristics)
        lines.append(f"- cnn beats every heuristic and random on median ER and ER <= 3: **{'yes' if beats else 'no'}**")
        if "oracle" in s:
            gap = s[best]["median_er"] - s["oracle"]["median_er"]
            closed = (s[best]["median_er"] - s["cnn"]["median_er"]) / gap if gap > 0 else float("nan")
            lines.append(
                f"- gap closed between the best heuristic ({best}, {s[best]['median_er']:.2f}) and the oracle "
                f"({s['oracle']['median_er']:.2f}): **{100 * closed:.0f} %** (target >= 50 %)"
            )
    combos = [k for k in s if k.startswith(("cnn-joint", "cnn-consensus"))]
    if combos and "whole" in s:
        best = min(combos, key=lambda k: s[k]["median_er"])
        cost = (s[best]["estimate_s"] + s[best]["score_s"]) / s["whole"]["estimate_s"]
        lines.append(
            f"- best joint/consensus selector {best}: median ER {s[best]['median_er']:.2f} vs whole "
            f"{s['whole']['median_er']:.2f}, at {cost:.2f}x the whole image's estimation seconds (scoring included)"
        )
    return lines


def report(work: pathlib.Path, preset_name: str, steps: Steps) -> pathlib.Path:
    lines = [f"# Paper setting: preset `{preset_name}`", ""]
    preset = PRESETS[preset_name]
    lines += ["```", json.dumps(dataclasses.asdict(preset), indent=1), "```", ""]
    for step in ("synth", "label", "train"):
        done = steps.get(step)
        if done:
            lines.append(f"- **{step}**: {done['seconds'] / 60:.1f} min — {done['output'].splitlines()[-1]}")
    metrics = work / "model" / "metrics.csv"
    if metrics.is_file():
        lines += ["", "## Training curve", "", "```", metrics.read_text().strip(), "```", ""]
        lines.append("![training curve](model/metrics.png)")
    sets = (steps.get("eval-sets") or {}).get("sets", {})
    for name in sets:
        done = steps.get(f"evaluate-{name}")
        if not done:
            continue
        results = pathlib.Path(done["results"])
        summary = _summary(results)
        extra = steps.get(f"evaluate-extra-{name}")
        if extra:
            summary.update({k: v for k, v in _summary(pathlib.Path(extra["results"])).items() if k not in summary})
        lines += ["", f"## {name} ({sets[name]['images']} images, evaluation stride {sets[name]['stride']})", ""]
        lines.append(
            "| selector | images | ER ≤ 2 | ER ≤ 3 | median ER | mean PSNR | mean similarity | "
            "median estimation s | median scoring s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for sel, r in summary.items():
            lines.append(
                f"| {sel} | {r['images']} | {r['er2']:.2f} | {r['er3']:.2f} | {r['median_er']:.2f} | "
                f"{r['psnr']:.2f} | {r['similarity']:.3f} | {r['estimate_s']:.2f} | {r['score_s']:.2f} |"
            )
        lines += ["", *_targets(summary), "", f"![ER curves]({results.relative_to(work)}/er_curve.png)"]
    path = work / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=pathlib.Path, required=True)
    ap.add_argument("--kodak", type=pathlib.Path, required=True, help="Kodak24 folder (grey PNGs)")
    ap.add_argument("--levin", type=pathlib.Path, required=True, help="Levin et al. 2009 folder")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--pictures", type=pathlib.Path, help="more training pictures (a folder), beside Kodak's 18")
    ap.add_argument("--kernels", type=int, help="kernels in all: Levin's 8 plus this many - 8 generated ones")
    args = ap.parse_args()
    work, preset = args.work.resolve(), PRESETS[args.preset]
    if args.kernels is not None:
        preset = dataclasses.replace(preset, trajectory_kernels=max(0, args.kernels - 8))
    pictures = _pictures(args.kodak, preset.pictures, work / "pictures" / "kodak")
    for extra in sorted(args.pictures.iterdir()) if args.pictures else ():
        if extra.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff") and not (pictures / extra.name).exists():
            shutil.copyfile(extra, pictures / extra.name)
    steps = Steps(work)
    steps.run("synth", synth, work, pictures, args.levin, preset)
    labelled = steps.run("label", label, work / "store", preset.use_gpu)
    est = labelled["status"][0]
    threshold = steps.get("train")["threshold"] if steps.get("train") else None
    if threshold is None:
        from pipeline.labels import read_labels
        from pipeline.store import Store

        sims = read_labels(Store(str(work / "store")), est["estimator"])["similarity"].to_numpy()
        threshold = round(float(np.median(sims)), 2)  # balances good and bad windows, as demo does
    steps.run("train", train, work, preset, est["estimator"], threshold)
    sets = steps.run("eval-sets", eval_sets, work, args.kodak, args.levin, preset)["sets"]
    for name, s in sets.items():
        steps.run(f"label-{name}", label, pathlib.Path(s["store"]), preset.use_gpu)
        steps.run(f"evaluate-{name}", evaluate, work, name, s["store"], s["stride"])
        extra = (EXTRA_SELECTORS, "results-extra")
        steps.run(f"evaluate-extra-{name}", evaluate, work, name, s["store"], s["stride"], *extra)
    print(f"wrote {report(work, args.preset, steps)}")


if __name__ == "__main__":
    sys.exit(main())
