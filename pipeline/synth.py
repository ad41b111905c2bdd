"""``synth``: blurred training images from sharp images x camera-shake kernels + noise.

Each pair (sharp picture, kernel) becomes one image of ``size x size``:

1. the sharp picture is fitted to ``size + 2 * margin`` pixels (centre crop, or a
   resize of its short side then a centre crop);
2. the central ``size + k - 1`` region is convolved with the kernel in 'valid'
   mode, so the output sees real scene beyond its border as a camera does;
3. Gaussian noise of ``noise_sigma / 255`` is added and the result clipped to [0, 1].

The sharp reference stored with the image is the central ``size x size`` of the
fitted picture, shared by every kernel.  An image's noise comes from a seed
derived from the run's seed and the pair's sources, so an image never depends on
which other pairs are in the run: rerunning with more pictures or kernels adds
only the new pairs and leaves existing ones byte-identical.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kernels_gpu.conv import convolve
from kernels_gpu.kernels import fit_size

from . import schema
from .files import IMAGE_SUFFIXES, InputError, read_image
from .store import DEFAULT_STRIDE, DEFAULT_WINDOW, Store, check_window_grid
from .store_append import NewImages

__all__ = ["SynthConfig", "SynthResult", "run_synth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """Settings of one ``synth`` run (serialised into the store's manifest)."""

    sharp: str = "builtin"  # "builtin" or a folder of PNG/JPEG/TIFF
    kernels: str = "trajectory"  # "trajectory" or a folder of .npy/.png/.mat kernels
    num_kernels: int = 32
    kernel_sizes: tuple[int, int] = (11, 55)
    size: int = 450
    margin: int = 32  # scene pixels kept beyond each side of the output for the blur
    noise_sigma: float = 2.0  # in 8-bit units
    fit: str = "crop"  # "crop" or "resize" (folders; builtin pictures are always resized)
    window: int = DEFAULT_WINDOW
    stride: int = DEFAULT_STRIDE
    seed: int = 0
    pairs: int | None = None  # None: every pair; N: a seeded random subset of N pairs
    workers: int = field(default=0, compare=False)  # 0: all cores

    def __post_init__(self) -> None:
        lo, hi = self.kernel_sizes
        if lo < 3 or lo % 2 == 0 or hi % 2 == 0 or hi < lo:
            raise InputError(f"kernel_sizes: need odd sizes 3 <= MIN <= MAX, got {lo}:{hi}")
        if self.size < 3:
            raise InputError(f"size: must be >= 3, got {self.size}")
        check_window_grid(self.window, self.stride)  # before anything that divides by or compares with them
        if self.window > self.size:
            raise InputError(f"window/size: windows of {self.window} px are larger than the images ({self.size} px)")
        # folder kernels are checked one by one when they are read
        if self.kernels == "trajectory" and hi > self.window:
            raise InputError(f"kernel_sizes: kernels of {hi} px are larger than the window ({self.window} px)")
        if self.kernels == "trajectory" and hi // 2 > self.margin:
            raise InputError(f"margin: {self.margin} px is too small for {hi} px kernels (need >= {hi // 2})")
        if not (self.noise_sigma >= 0 and np.isfinite(self.noise_sigma)):
            raise InputError(f"noise_sigma: must be a finite number >= 0, got {self.noise_sigma}")
        if self.num_kernels < 1:
            raise InputError(f"num_kernels: must be >= 1, got {self.num_kernels}")
        if self.fit not in ("crop", "resize"):
            raise InputError(f"fit: must be 'crop' or 'resize', got {self.fit!r}")
        if self.pairs is not None and self.pairs < 1:
            raise InputError(f"pairs: must be 'all' or a number >= 1, got {self.pairs}")

    @property
    def region(self) -> int:
        return self.size + 2 * self.margin

    def store_settings(self) -> dict[str, Any]:
        """What must stay the same for every synth run into one store.

        ``fit`` only applies to folder pictures (builtin ones are always resized), so a
        builtin run leaves it open and a later folder run may choose it.
        """
        settings: dict[str, Any] = {"size": self.size, "margin": self.margin, "noise_sigma": self.noise_sigma}
        if self.sharp != "builtin":
            settings["fit"] = self.fit
        return settings


@dataclass(frozen=True)
class SynthResult:
    added: int
    existing: int  # images the store held before the run
    planned: int  # pairs this run asked for
    seconds: float
    already: int = 0  # of the pairs asked, those the store already held


# ------------------------------------------------------------------------ sources


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def sharp_sources(config: SynthConfig) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """``(key, loader)`` for every sharp picture; loaders return ``(H, W) float32`` in [0, 1]."""
    from .samples import SAMPLES, sharp_sample

    if config.sharp == "builtin":
        return [(f"builtin:{name}", lambda name=name: sharp_sample(name)) for name in SAMPLES]
    folder = pathlib.Path(config.sharp)
    if not folder.is_dir():
        raise InputError(f"sharp: {folder} is not a folder (or 'builtin')")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"sharp: {folder} holds no PNG, JPEG or TIFF images")
    return [(f"file:{folder.name}/{p.name}", lambda p=p: read_image(p)) for p in files]


def kernel_sources(config: SynthConfig) -> list[tuple[str, np.ndarray]]:
    """``(key, kernel)`` for every kernel, validated, odd-sized, sum 1."""
    from kernels_gpu.trajectory import camera_shake_kernels

    from .files import KERNEL_SUFFIXES, check_kernel, one_format_per_name, read_kernel_raw

    if config.kernels == "trajectory":
        lo, hi = config.kernel_sizes
        kernels = camera_shake_kernels(config.num_kernels, (lo, hi), config.seed)
        return [(f"trajectory:seed={config.seed},sizes={lo}:{hi}#{i}", k) for i, k in enumerate(kernels)]
    folder = pathlib.Path(config.kernels)
    if not folder.is_dir():
        raise InputError(f"kernels: {folder} is not a folder (or 'trajectory')")
    files = one_format_per_name([p for p in folder.iterdir() if p.suffix.lower() in KERNEL_SUFFIXES])
    if not files:
        raise InputError(f"kernels: {folder} holds no .npy, .png or .mat kernels")
    out = []
    for p in files:
        raw = read_kernel_raw(p)
        kernel = check_kernel(raw, str(p))
        if max(kernel.shape) > config.window:
            raise InputError(
                f"{p}: kernel {kernel.shape[0]}x{kernel.shape[1]} is larger than the window ({config.window} px)"
            )
        if max(kernel.shape) // 2 > config.margin:
            raise InputError(
                f"{p}: kernel {kernel.shape[0]}x{kernel.shape[1]} needs --margin >= {max(kernel.shape) // 2}"
            )
        total = float(np.asarray(raw, np.float64).sum())
        if abs(total - 1) > 1e-3:  # after the checks: a rejected kernel gets its one error line only
            log.warning("%s: kernel sums to %.4g, normalised to 1", p, total)
        side = max(kernel.shape)
        out.append((f"file:{folder.name}/{p.name}", fit_size(kernel, side)))
    return out


def fit_picture(picture: np.ndarray, side: int, resize: bool, source: str) -> np.ndarray:
    """Centre ``side x side`` of a picture, after resizing its short side to ``side`` if ``resize``."""
    if resize:
        from skimage.transform import resize as sk_resize

        scale = side / min(picture.shape)
        shape = (max(side, round(picture.shape[0] * scale)), max(side, round(picture.shape[1] * scale)))
        picture = sk_resize(picture, shape, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    H, W = picture.shape
    if H < side or W < side:
        raise InputError(
            f"{source}: image is {H}x{W}, smaller than the {side}x{side} px needed "
            f"(--size + 2 * --margin); use --fit resize or a smaller --size"
        )
    y0, x0 = (H - side) // 2, (W - side) // 2
    return np.ascontiguousarray(picture[y0 : y0 + side, x0 : x0 + side], dtype=np.float32)


def blur_like_camera(
    region: np.ndarray, kernel: np.ndarray, size: int, noise_sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """``size x size`` blurred centre of a larger ``region``: valid convolution, noise, clipping."""
    k = kernel.shape[0]
    start = (region.shape[0] - (size + k - 1)) // 2
    crop = region[start : start + size + k - 1, start : start + size + k - 1].astype(np.float64)
    blurred = convolve(crop, kernel.astype(np.float64), "valid")
    blurred += noise_sigma * rng.standard_normal(blurred.shape)
    return np.clip(blurred, 0, 1).astype(np.float32)


def noise_rng(seed: int, sharp_key: str, kernel_key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _stable_int(sharp_key), _stable_int(kernel_key)]))


# -------------------------------------------------------------------------- work


@dataclass(frozen=True)
class _Task:
    """One sharp picture and the blurred images to make from it."""

    store: Store
    config: SynthConfig
    sharp_key: str
    sharp_array: str
    sharp_index: int
    write_sharp: bool
    blurred_array: str
    jobs: tuple[tuple[int, str, int], ...]  # (blurred_index, kernel_key, kernel row)
    picture: np.ndarray  # the fitted (region x region) sharp picture


def _run_task(task: _Task, kernels: dict[int, np.ndarray]) -> int:
    cfg = task.config
    picture = task.picture
    if task.write_sharp:
        m = cfg.margin
        task.store.array(task.sharp_array, "r+")[task.sharp_index] = picture[m : m + cfg.size, m : m + cfg.size]
    out = task.store.array(task.blurred_array, "r+")
    for blurred_index, kernel_key, row in task.jobs:
        rng = noise_rng(cfg.seed, task.sharp_key, kernel_key)
        out[blurred_index] = blur_like_camera(picture, kernels[row], cfg.size, cfg.noise_sigma / 255.0, rng)
    return len(task.jobs)


def _worker(args: tuple) -> int:  # top-level for the process pool
    task, kernels = args
    return _run_task(task, kernels)


# -------------------------------------------------------------------------- plan


def _select_pairs(n_sharp: int, n_kernels: int, pairs: int | None, seed: int) -> list[tuple[int, int]]:
    everything = [(i, j) for i in range(n_sharp) for j in range(n_kernels)]
    if pairs is None:
        return everything
    if pairs > len(everything):
        raise InputError(f"pairs: {pairs} is more than the {len(everything)} sharp x kernel pairs")
    chosen = np.random.default_rng(seed).choice(len(everything), size=pairs, replace=False)
    return [everything[c] for c in sorted(chosen)]


def run_synth(
    store: Store, config: SynthConfig, progress: Callable[[int], None] | None = None, *, wait: bool = False
) -> SynthResult:
    """Add every missing (sharp, kernel) pair of ``config`` to ``store``; see the module docstring.

    Holds the store's writer lock (:meth:`Store.lock`) from reading the images table to
    recording the run: a concurrent ``synth`` or ``ingest`` raises :class:`~pipeline.store.StoreBusy`,
    or with ``wait`` runs after it and sees its images.
    """
    import time

    start = time.perf_counter()
    sharps = sharp_sources(config)
    kernels = kernel_sources(config)
    pairs = _select_pairs(len(sharps), len(kernels), config.pairs, config.seed)
    with store.lock(wait=wait, command="synth"):
        return _synth_locked(store, config, sharps, kernels, pairs, progress, start)


def _synth_locked(
    store: Store,
    config: SynthConfig,
    sharps: list[tuple[str, Callable[[], np.ndarray]]],
    kernels: list[tuple[str, np.ndarray]],
    pairs: list[tuple[int, int]],
    progress: Callable[[int], None] | None,
    start: float,
) -> SynthResult:
    import time

    import pyarrow.compute as pc

    # validate everything before the first write: a bad input leaves the store as it was
    if store.is_store():
        manifest = store.manifest()
        store.check_grid(manifest, config.window, config.stride)
        settings = manifest.get("synth") or {}
        if any(key in settings and settings[key] != value for key, value in config.store_settings().items()):
            raise InputError(
                f"{store.url}: was synthesised with {manifest['synth']}; this run asks for "
                f"{config.store_settings()} (use a new store)"
            )
    images = store.images() if store.is_store() else schema.empty(schema.IMAGES)
    # ingested photographs may name the same sharp and kernel files: they are neither done pairs nor sharp rows here
    synthesised = images.filter(pc.equal(images["origin"], "synth"))
    done = set(zip(synthesised["sharp_source"].to_pylist(), synthesised["kernel_source"].to_pylist(), strict=True))
    todo = [(i, j) for i, j in pairs if (sharps[i][0], kernels[j][0]) not in done]
    new = NewImages(images)
    stored_sharps = new.stored("sharp", origin="synth")
    pictures = {}
    for i in sorted({i for i, _ in todo} | {i for i, (key, _) in enumerate(sharps) if key in stored_sharps}):
        key, loader = sharps[i]
        pictures[i] = fit_picture(loader(), config.region, config.fit == "resize" or key.startswith("builtin:"), key)
    _check_stored_sources(store, new.kernels, stored_sharps, sharps, kernels, pictures, config)
    already = len(pairs) - len(todo)
    if not todo:
        return SynthResult(0, images.num_rows, len(pairs), time.perf_counter() - start, already)
    manifest = store.create(config.window, config.stride)

    capacity = manifest["kernel_capacity"]
    used_kernels: dict[int, np.ndarray] = {}  # kernel row -> kernel, for every pair to make
    new_kernels: dict[int, np.ndarray] = {}  # those not in the store yet (stored ones are never rewritten)
    for j in sorted({j for _, j in todo}):
        key, k = kernels[j]
        row, is_new = new.kernel_row(key, capacity)
        used_kernels[row] = k
        if is_new:
            new_kernels[row] = k

    shape = (config.size, config.size)
    bucket = f"{config.size}x{config.size}"
    blurred_name, sharp_name = f"blurred/{bucket}", f"sharp/{bucket}"
    sharp_rows = dict(stored_sharps)
    tasks: list[_Task] = []
    by_sharp: dict[int, list[int]] = {}
    for i, j in todo:
        by_sharp.setdefault(i, []).append(j)
    for i, js in by_sharp.items():
        sharp_key = sharps[i][0]
        write_sharp = sharp_key not in sharp_rows
        if write_sharp:
            sharp_rows[sharp_key] = (sharp_name, new.take(sharp_name, shape))
        s_array, s_index = sharp_rows[sharp_key]
        jobs = []
        for j in js:
            kernel_key, k = kernels[j]
            blurred = (blurred_name, new.take(blurred_name, shape))
            jobs.append((blurred[1], kernel_key, new.kernels[kernel_key]))
            new.add(
                "synth",
                sharp_source=sharp_key,
                kernel_source=kernel_key,
                blurred=blurred,
                sharp=(s_array, s_index),
                kernel_size=k.shape[0],
                noise_sigma=config.noise_sigma / 255.0,
                seed=config.seed,
            )
        tasks.append(
            _Task(store, config, sharp_key, s_array, s_index, write_sharp, blurred_name, tuple(jobs), pictures[i])
        )

    if progress is not None and hasattr(progress, "set_total"):
        progress.set_total(len(new.rows))

    def write_pixels(arrays: dict[str, Any]) -> None:
        for row, k in new_kernels.items():
            arrays["kernels"][row] = fit_size(k, capacity)
        _execute(tasks, used_kernels, config, store, progress)

    store.append_images(
        new,
        write_pixels,
        {"command": "synth", "config": {k: v for k, v in asdict(config).items() if k != "workers"}},
        synth=config.store_settings(),
    )
    return SynthResult(len(new.rows), images.num_rows, len(pairs), time.perf_counter() - start, already)


def _source_path(folder: str, key: str) -> str:
    """The file behind a ``file:<folder name>/<file name>`` key (the key itself for other sources)."""
    return str(pathlib.Path(folder) / key.split("/", 1)[1]) if key.startswith("file:") else key


def _check_stored_sources(
    store: Store,
    stored_kernels: dict[str, int],
    stored_sharps: dict[str, tuple[str, int]],
    sharps: list[tuple[str, Callable[[], np.ndarray]]],
    kernels: list[tuple[str, np.ndarray]],
    pictures: dict[int, np.ndarray],
    config: SynthConfig,
) -> None:
    """Every input whose key the store already holds must be the stored one (:meth:`Store.check_same`)."""
    if not stored_kernels:
        return
    capacity = store.manifest()["kernel_capacity"]
    for key, k in kernels:
        if key in stored_kernels:
            path = _source_path(config.kernels, key)
            store.check_same("kernels", stored_kernels[key], fit_size(k, capacity), path, key)
    m = config.margin
    for i, (key, _) in enumerate(sharps):
        if key in stored_sharps:
            crop = pictures[i][m : m + config.size, m : m + config.size]
            store.check_same(*stored_sharps[key], crop, _source_path(config.sharp, key), key)


def _execute(
    tasks: list[_Task],
    kernels: dict[int, np.ndarray],
    config: SynthConfig,
    store: Store,
    progress: Callable[[int], None] | None,
) -> None:
    """Run the tasks on every core (a spawn-started process pool) or in this process."""
    workers = config.workers or len(os.sched_getaffinity(0))
    n_images = sum(len(t.jobs) for t in tasks)
    # in-memory stores live in this process only; tiny jobs are not worth starting processes
    if workers <= 1 or not store.is_local or n_images < 16:
        for task in tasks:
            done = _run_task(task, kernels)
            if progress:
                progress(done)
        return
    import concurrent.futures
    import multiprocessing

    # spawn, not fork: zarr keeps an event-loop thread that a forked child would inherit half-dead
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context) as pool:
        futures = [pool.submit(_worker, (t, {r: kernels[r] for _, _, r in t.jobs})) for t in tasks]
        for future in concurrent.futures.as_completed(futures):
            done = future.result()
            if progress:
                progress(done)
