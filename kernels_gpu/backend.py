"""Array-module dispatch: one numerical source for NumPy (CPU) and CuPy (GPU).

Every public function of :mod:`kernels_gpu` calls :func:`get_array_module` on its
input and works on whatever module it gets back, so a CuPy array stays on its
device and a NumPy array never touches CuPy.  CuPy is imported lazily, the first
time a caller asks for the GPU, so importing this package never needs a GPU or
even CuPy.

The CPU FFTs (``scipy.fft``) use every core this process may use, or the count set
for a block of code by :func:`fft_workers` (the estimators' ``fft_workers=`` argument),
so that several workers sharing a machine each keep to their share.

Environment:

``GOODREGIONS_FORCE_CPU=1``
    Pretend CuPy is absent: :func:`gpu_available` is False and
    :func:`to_device` with ``"gpu"`` raises.  Useful on machines whose CuPy
    build does not match the driver.
``GOODREGIONS_CUPY_PLAN_CACHE``
    Size of CuPy's cuFFT plan cache per device (default 16 plans); the cache
    is unbounded in CuPy's default, which grows without limit when pyramid
    levels produce many distinct shapes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import scipy.fft

__all__ = [
    "fft_threads",
    "fft_workers",
    "get_array_module",
    "gpu_available",
    "irfft2",
    "ndimage",
    "next_fast_len",
    "prev_fast_len",
    "rfft2",
    "to_device",
    "to_numpy",
]


def _force_cpu() -> bool:
    return os.environ.get("GOODREGIONS_FORCE_CPU", "").strip().lower() in {"1", "true", "yes"}


@functools.cache
def _cupy() -> ModuleType | None:
    """CuPy if it imports and sees a device, else None (probed once)."""
    if _force_cpu():
        return None
    try:
        import cupy
    except Exception:  # ImportError, or a broken CUDA install
        return None
    try:
        if not cupy.cuda.is_available():
            return None
        size = int(os.environ.get("GOODREGIONS_CUPY_PLAN_CACHE", "16"))
        cupy.fft.config.get_plan_cache().set_size(size)
    except Exception:
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports, a CUDA device answers and the CPU is not forced.

    >>> isinstance(gpu_available(), bool)  # True where CuPy sees a CUDA device
    True
    """
    return _cupy() is not None


def get_array_module(*arrays: Any) -> ModuleType:
    """NumPy or CuPy, whichever owns the arrays (NumPy for non-arrays).

    >>> import numpy as np
    >>> get_array_module(np.zeros(3)).__name__, get_array_module([1, 2], 1.0).__name__
    ('numpy', 'numpy')
    """
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            cp = _cupy()
            if cp is None:  # a CuPy array exists, so CuPy imports: use it directly
                import cupy as cp
            return cp
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A host copy of ``x`` (no copy when it already is a NumPy array).

    >>> import numpy as np
    >>> a = np.zeros(3)
    >>> to_numpy(a) is a, to_numpy([1, 2]).tolist()
    (True, [1, 2])
    """
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def to_device(x: Any, device: str = "cpu") -> Any:
    """Move ``x`` to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy, current device).

    >>> type(to_device([1.0, 2.0], "cpu")).__name__
    'ndarray'
    >>> to_device([1.0], "tpu")
    Traceback (most recent call last):
    ValueError: unknown device 'tpu' (expected 'cpu' or 'gpu')
    """
    if device == "cpu":
        return to_numpy(x)
    if device == "gpu":
        cp = _cupy()
        if cp is None:
            raise RuntimeError("device 'gpu' requested but CuPy or a CUDA device is not available")
        return cp.asarray(x)
    raise ValueError(f"unknown device {device!r} (expected 'cpu' or 'gpu')")


def ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` or ``cupyx.scipy.ndimage`` to match ``xp``.

    >>> import numpy as np
    >>> ndimage(np).__name__
    'scipy.ndimage'
    """
    if xp is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


@functools.cache
def _usable_cores() -> int:
    # sched_getaffinity costs ~60 us: asked once, not at every FFT
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_FFT_WORKERS: contextvars.ContextVar[int | None] = contextvars.ContextVar("fft_workers", default=None)


@contextlib.contextmanager
def fft_workers(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` threads per CPU FFT (``None``: leave the current count).

    >>> with fft_workers(1):
    ...     fft_threads()
    1
    """
    if count is None:
        yield
        return
    if int(count) < 1:
        raise ValueError(f"fft_workers must be >= 1, got {count}")
    token = _FFT_WORKERS.set(int(count))
    try:
        yield
    finally:
        _FFT_WORKERS.reset(token)


def fft_threads() -> int:
    """Threads of each CPU FFT here: the count of the enclosing :func:`fft_workers`, else every usable core.

    >>> fft_threads() >= 1
    True
    """
    count = _FFT_WORKERS.get()
    return _usable_cores() if count is None else count


def next_fast_len(n: int) -> int:
    """Smallest size >= n that FFTs fast on both pocketfft and cuFFT (5-smooth).

    >>> [next_fast_len(n) for n in (7, 11, 97, 128)]
    [8, 12, 100, 128]
    """
    # 5-smooth sizes are fast for both; scipy's own next_fast_len would allow 7 and 11,
    # which cuFFT handles with slower kernels.
    m = int(n)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def prev_fast_len(n: int) -> int:
    """Largest 5-smooth size <= n (for cropping a window to a fast FFT size).

    >>> [prev_fast_len(n) for n in (7, 11, 97, 128)]
    [6, 10, 96, 128]
    """
    m = int(n)
    while m > 1 and next_fast_len(m) != m:
        m -= 1
    return max(m, 1)


def _fft_module(x: Any) -> tuple[ModuleType, dict]:
    if get_array_module(x) is np:
        return scipy.fft, {"workers": fft_threads()}
    import cupyx.scipy.fft

    return cupyx.scipy.fft, {}


def rfft2(x: Any, s: tuple[int, int] | None = None) -> Any:
    """Real FFT over the last two axes (zero-padded to ``s`` if given).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 6, 7))
    >>> spectrum = rfft2(x)
    >>> spectrum.shape, bool(np.isclose(spectrum[0, 0, 0].real, x[0].sum())), rfft2(x, s=(8, 8)).shape
    ((2, 6, 4), True, (2, 8, 5))
    """
    mod, kw = _fft_module(x)
    return mod.rfft2(x, s=s, axes=(-2, -1), **kw)


def irfft2(x: Any, s: tuple[int, int], overwrite: bool = False) -> Any:
    """Inverse of :func:`rfft2`; ``s`` is the real output shape of the last two axes.

    ``overwrite=True`` lets the FFT use ``x`` as scratch (its contents are then undefined),
    which saves pocketfft a copy of the spectrum: about a quarter of a float32 inverse.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 6, 7))
    >>> bool(np.allclose(irfft2(rfft2(x), s=(6, 7)), x))
    True
    """
    mod, kw = _fft_module(x)
    return mod.irfft2(x, s=s, axes=(-2, -1), overwrite_x=overwrite, **kw)
