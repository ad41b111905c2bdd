"""Camera-shake blur kernels from random trajectories (Boracchi & Foi 2012).

The camera path is a 2-D random walk with constant speed: a centripetal pull back
towards the start, a Gaussian shake and, rarely, a "big shake" that nearly reverses
the direction (G. Boracchi, A. Foi, "Modeling the Performance of Image Restoration
From Motion Blur", IEEE TIP 21(8), 2012; the generator DeblurGAN ports in
``motion_blur/generate_trajectory.py``, Kupyn et al., CVPR 2018).  A kernel is the
time density of that path: every sample is splatted bilinearly onto the grid.

Two deliberate departures from DeblurGAN:

* the kernel is normalised to **sum 1** (DeblurGAN min-max normalises it), and
* the path is **rescaled to the requested kernel size** instead of being drawn at
  the pixel scale of a fixed 64-px canvas, so an 11-px and a 55-px kernel are both
  real strokes across their array rather than a clipped path or a tiny blob.

Kernels are drawn on the host with NumPy (random numbers stay on the CPU, as the
rest of the package expects); move them with :func:`kernels_gpu.backend.to_device`.
Coordinates: the real part of a trajectory is the column (x), the imaginary part
the row (y).  The kernel is in convolution orientation: a camera displacement
``p`` moves image content by ``p``, so the kernel is the density of ``p`` itself.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .kernels import center, normalize

__all__ = [
    "DEFAULT_SIZES",
    "EXPL_CHOICES",
    "EXPOSURES",
    "TrajectoryParams",
    "camera_shake_kernel",
    "camera_shake_kernels",
    "random_trajectory",
    "trajectory_to_kernel",
]

#: Anxiety values DeblurGAN's ``blur_image`` samples from when none is given.
EXPL_CHOICES: tuple[float, ...] = (0.01, 0.009, 0.008, 0.007, 0.005, 0.003, 0.002, 0.001)
#: Exposure fractions of the published generator (kernels of the path's first 0.1 %, 10 %, 50 %, 100 %).
EXPOSURES: tuple[float, ...] = (1 / 1000, 1 / 10, 1 / 2, 1.0)
#: Default inclusive range of odd kernel sizes for :func:`camera_shake_kernels`.
DEFAULT_SIZES: tuple[int, int] = (11, 55)

# Largest distance (in kernel pixels) between consecutive splatted samples; beyond it
# a strongly magnified path would render as a dotted line, so it is resampled.
_MAX_SPACING = 0.5

SeedLike = int | np.random.SeedSequence | np.random.Generator


@dataclass(frozen=True)
class TrajectoryParams:
    """Parameters of the random camera path and of its rendering as a kernel.

    Parameters
    ----------
    canvas : int
        Side of the square frame (px) the raw trajectory is centred in, as in the
        published code; it must hold a straight path of length ``max_len``.
    iterations : int
        Samples along the path (time steps).
    max_len : float
        Total path length in canvas pixels (every step has length ``max_len / (iterations - 1)``).
    expl : float or None
        Anxiety: scales the shake and the chance of big shakes.  ``None`` draws it
        per trajectory from ``expl_choices``; ``0`` gives a straight line.
    expl_choices : tuple of float
        Values ``expl`` is drawn from when it is ``None``.
    centripetal_max, prob_big_shake_max, gaussian_shake_max : float
        Per-trajectory coefficients are ``U(0, 1)`` times these bounds.
    exposure : float
        Fraction of the path (from its start) that the shutter sees, in ``(0, 1]``.
        Default 1, the full exposure: the shorter published fractions (:data:`EXPOSURES`)
        mostly yield near-delta or near-linear kernels, which teach a region selector
        little about camera shake.
    margin : float
        Distance (px) kept free between the rendered path and the kernel's border;
        1 keeps a one-pixel zero frame.

    >>> params = TrajectoryParams(expl=0)  # no shake: a straight path
    >>> params.iterations, params.max_len, params.exposure
    (2000, 60.0, 1.0)
    >>> TrajectoryParams(canvas=32)
    Traceback (most recent call last):
    ValueError: canvas (32) must be at least max_len + 1 (61.0) px
    """

    canvas: int = 64
    iterations: int = 2000
    max_len: float = 60.0
    expl: float | None = None
    expl_choices: tuple[float, ...] = EXPL_CHOICES
    centripetal_max: float = 0.7
    prob_big_shake_max: float = 0.2
    gaussian_shake_max: float = 10.0
    exposure: float = 1.0
    margin: float = 1.0

    def __post_init__(self) -> None:
        if self.iterations < 2:
            raise ValueError(f"iterations must be >= 2 (a path needs two samples), got {self.iterations}")
        if not self.max_len > 0:
            raise ValueError(f"max_len must be > 0, got {self.max_len}")
        if self.canvas < 1 or self.max_len > self.canvas - 1:
            raise ValueError(f"canvas ({self.canvas}) must be at least max_len + 1 ({self.max_len + 1}) px")
        if self.expl is not None and not 0 <= self.expl <= 1:
            raise ValueError(f"expl must be in [0, 1] or None, got {self.expl}")
        if self.expl is None:
            if len(self.expl_choices) == 0:
                raise ValueError("expl_choices must not be empty when expl is None")
            if not all(0 <= e <= 1 for e in self.expl_choices):
                raise ValueError(f"expl_choices must all lie in [0, 1], got {self.expl_choices}")
        for name in ("centripetal_max", "gaussian_shake_max"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.prob_big_shake_max <= 1:
            raise ValueError(f"prob_big_shake_max must be in [0, 1], got {self.prob_big_shake_max}")
        if not 0 < self.exposure <= 1:
            raise ValueError(f"exposure must be in (0, 1], got {self.exposure}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


def random_trajectory(rng: np.random.Generator, params: TrajectoryParams | None = None) -> np.ndarray:
    """Draw one camera path of the Boracchi-Foi random-walk model.

    Parameters
    ----------
    rng : numpy.random.Generator
    params : TrajectoryParams, optional

    Returns
    -------
    (iterations,) complex128
        Positions in canvas pixels (real = x, imaginary = y), bounding box centred on
        the canvas; consecutive samples are ``max_len / (iterations - 1)`` apart.

    >>> import numpy as np
    >>> path = random_trajectory(np.random.default_rng(0))
    >>> path.shape, round(float(np.abs(np.diff(path)).sum()), 6)  # 2000 samples, 60 px long
    ((2000,), 60.0)
    >>> box = complex(path.real.max() + path.real.min(), path.imag.max() + path.imag.min()) / 2
    >>> round(box.real, 6), round(box.imag, 6)  # centred on the 64 px canvas
    (31.5, 31.5)
    """
    p = params or TrajectoryParams()
    n = p.iterations - 1
    step = p.max_len / n
    centripetal, prob_big, gaussian, angle = rng.random(4) * (
        p.centripetal_max,
        p.prob_big_shake_max,
        p.gaussian_shake_max,
        2 * math.pi,
    )
    expl = p.expl if p.expl is not None else float(rng.choice(p.expl_choices))
    # All randomness is drawn up front, vectorised; the walk itself is sequential
    # (the centripetal term needs the current position), so it runs on Python complex
    # scalars, which are much faster than NumPy scalars in a loop.
    big = (rng.random(n) < prob_big * expl).tolist()
    # A big shake adds 2v rotated by pi +- 0.5 rad: a near reversal of the direction.
    turn = np.exp(1j * (math.pi + rng.random(n) - 0.5)).tolist()
    noise = rng.standard_normal((n, 2))
    shake = (expl * gaussian * step * (noise[:, 0] + 1j * noise[:, 1])).tolist()
    pull = expl * centripetal * step

    x = np.empty(p.iterations, dtype=np.complex128)
    position = 0j
    # DeblurGAN starts at speed ``expl`` (which only lets the first step's shake turn
    # the direction more); start at the constant speed every later step is held to.
    v = cmath.exp(1j * angle) * step
    x[0] = position
    for t in range(n):
        new_v = v + shake[t] - pull * position
        if big[t]:
            new_v += 2 * v * turn[t]
        speed = abs(new_v)
        # constant speed makes the path length exactly max_len; a zero velocity
        # (measure-zero event) keeps the previous direction instead of dividing by 0
        v = new_v * (step / speed) if speed > 0 else v
        position += v
        x[t + 1] = position
    mid = complex(x.real.max() + x.real.min(), x.imag.max() + x.imag.min()) / 2
    return x - mid + (p.canvas - 1) / 2 * (1 + 1j)


def _max_deviation(z: np.ndarray) -> float:
    """Largest per-axis distance of the samples from their mean (Chebyshev radius about the mean)."""
    d = z - z.mean()
    return float(max(np.abs(d.real).max(), np.abs(d.imag).max()))


def trajectory_to_kernel(
    trajectory: np.ndarray, size: int, *, exposure: float = 1.0, margin: float = 1.0
) -> np.ndarray:
    """Render a trajectory as a sum-normalised, centred kernel of side ``size``.

    The exposed samples (the first ``ceil(exposure * N)``) are splatted with bilinear
    (triangle) weights.  One isotropic scale maps the path into the array: the *full*
    path's largest per-axis distance from its mean becomes ``size // 2 - margin``
    pixels, so shorter exposures give proportionally smaller kernels, as the
    published generator's cumulative kernels on one canvas do (the scale shrinks
    further only if the exposed part would not fit).  The exposed samples' mean is
    placed on the middle pixel; bilinear splatting preserves the mean, so the
    kernel's centroid lands there with no mass cut off.

    Parameters
    ----------
    trajectory : (N,) complex
        Path samples, equally spaced in time; units are arbitrary (only the shape counts).
    size : int
        Odd side of the kernel, >= 3 and > ``2 * margin``.
    exposure : float
        Fraction of the path seen, in ``(0, 1]``.
    margin : float
        Free distance (px) between the path and the border.

    Returns
    -------
    (size, size) float32
        Non-negative, sum 1, centroid within 0.5 px of ``(size // 2, size // 2)``.

    >>> import numpy as np
    >>> kernel = trajectory_to_kernel(np.arange(5), 7)  # a horizontal path: a line in the middle row
    >>> kernel.dtype, [round(float(v), 3) for v in kernel[3]], float(kernel.sum() - kernel[3].sum())
    (dtype('float32'), [0.0, 0.167, 0.222, 0.222, 0.222, 0.167, 0.0], 0.0)
    """
    size = _check_size(size)
    if not 0 < exposure <= 1:
        raise ValueError(f"exposure must be in (0, 1], got {exposure}")
    radius = size // 2 - margin
    if not radius > 0:
        raise ValueError(f"size {size} leaves no room for a path inside a margin of {margin} px")
    z = np.asarray(trajectory, dtype=np.complex128).ravel()
    if z.size == 0 or not np.isfinite(z).all():
        raise ValueError("trajectory must be a non-empty array of finite samples")
    shown = z[: max(1, math.ceil(exposure * z.size))]

    deviation = max(_max_deviation(z), _max_deviation(shown))
    # a path that never moves renders as a delta; any finite scale does
    scale = radius / deviation if deviation > 0 else 1.0
    if shown.size > 1:
        spacing = float(np.abs(np.diff(shown)).max()) * scale
        factor = math.ceil(spacing / _MAX_SPACING)
        if factor > 1:
            # linear resampling keeps equal time weights, so the stroke stays continuous
            t = np.arange(shown.size)
            fine = np.linspace(0, shown.size - 1, (shown.size - 1) * factor + 1)
            shown = np.interp(fine, t, shown.real) + 1j * np.interp(fine, t, shown.imag)

    mid = size // 2
    pos = (shown - shown.mean()) * scale + mid * (1 + 1j)
    kernel = _splat(pos.real, pos.imag, size)
    # The splat is already centred up to rounding; center() guarantees it, and the
    # second normalisation restores sum 1 should a shift ever drop a sliver of mass.
    kernel = normalize(center(normalize(kernel)))
    return kernel.astype(np.float32)


def _splat(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (triangle) splat of unit-weight points, (size, size) float64; mass off the grid is dropped."""
    # Snap to a 1e-9 px grid: a sample that sits on a pixel centre up to rounding would
    # otherwise leave ~1e-17 slivers on its neighbours (false support, even on the margin).
    x, y = np.round(x, 9), np.round(y, 9)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros(size * size, dtype=np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            # rounding can put a sample a hair past the last pixel, with ~0 weight there
            ok = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
            out += np.bincount(yy[ok] * size + xx[ok], weights=(wy * wx)[ok], minlength=size * size)
    return out.reshape(size, size)


def _check_size(size: int) -> int:
    """Return ``size`` as an int, or raise unless it is an odd integer >= 3."""
    if isinstance(size, bool) or np.ndim(size) != 0 or int(size) != size or size < 3 or size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 3, got {size!r}")
    return int(size)


def camera_shake_kernel(rng: np.random.Generator, size: int, params: TrajectoryParams | None = None) -> np.ndarray:
    """Draw one camera-shake kernel.

    Parameters
    ----------
    rng : numpy.random.Generator
    size : int
        Odd side, >= 3.
    params : TrajectoryParams, optional

    Returns
    -------
    (size, size) float32
        Non-negative, sum 1, centred on its centroid.

    >>> import numpy as np
    >>> from kernels_gpu.kernels import centroid
    >>> kernel = camera_shake_kernel(np.random.default_rng(0), 15)
    >>> kernel.shape, round(float(kernel.sum()), 5), bool((kernel >= 0).all())
    ((15, 15), 1.0, True)
    >>> [round(float(c)) for c in centroid(kernel)]  # centred
    [7, 7]
    """
    p = params or TrajectoryParams()
    size = _check_size(size)
    return trajectory_to_kernel(random_trajectory(rng, p), size, exposure=p.exposure, margin=p.margin)


def camera_shake_kernels(
    count: int,
    sizes: int | tuple[int, int] = DEFAULT_SIZES,
    seed: SeedLike = 0,
    params: TrajectoryParams | None = None,
) -> list[np.ndarray]:
    """Draw ``count`` camera-shake kernels, reproducibly.

    Kernel ``i`` uses its own child stream of ``seed`` (``SeedSequence.spawn``), so
    the same seed gives byte-identical kernels and the first ``k`` kernels do not
    depend on ``count``.  A Generator passed as ``seed`` is spawned from (and
    advanced), so repeated calls with it give fresh kernels.

    Parameters
    ----------
    count : int
        Number of kernels, >= 0.
    sizes : int or (int, int)
        One odd size for all kernels, or an inclusive ``(min, max)`` range of odd
        sizes; each kernel's size is drawn uniformly from the odd sizes in it.
    seed : int, numpy.random.SeedSequence or numpy.random.Generator
    params : TrajectoryParams, optional

    Returns
    -------
    list of (size_i, size_i) float32

    >>> import numpy as np
    >>> kernels = camera_shake_kernels(4, (11, 21), seed=0)
    >>> [k.shape[0] for k in kernels]  # odd sizes drawn from 11-21
    [19, 17, 17, 21]
    >>> all(np.array_equal(a, b) for a, b in zip(kernels, camera_shake_kernels(2, (11, 21), seed=0)))
    True
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    lo, hi = _size_range(sizes)
    p = params or TrajectoryParams()
    if isinstance(seed, np.random.Generator):
        streams = seed.spawn(count)
    else:
        root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        streams = [np.random.default_rng(s) for s in root.spawn(count)]
    kernels = []
    for rng in streams:
        size = lo + 2 * int(rng.integers(0, (hi - lo) // 2 + 1))
        kernels.append(camera_shake_kernel(rng, size, p))
    return kernels


def _size_range(sizes: int | Sequence[int]) -> tuple[int, int]:
    """Validate ``sizes`` and return it as an inclusive ``(min, max)`` of odd sizes."""
    if np.ndim(sizes) == 0:
        lo = hi = _check_size(sizes)  # type: ignore[arg-type]
        return lo, hi
    if len(sizes) != 2:
        raise ValueError(f"sizes must be an odd int or a (min, max) pair of odd ints, got {sizes!r}")
    lo, hi = _check_size(sizes[0]), _check_size(sizes[1])
    if lo > hi:
        raise ValueError(f"sizes range must have min <= max, got {sizes!r}")
    return lo, hi
