"""The estimator registry: every blind kernel estimator by name, version and parameters.

An estimator's **id** is ``name@version-<hash>`` where the hash covers the
parameters, so changing any parameter (or bumping the version when the code's
behaviour changes) gives a new id, and rows labelled by different settings never
mix.  ``get("l0grad")`` returns the registered defaults; ``get("l0grad",
gamma=50)`` a variant with its own id.

Each estimator also estimates jointly: ``est.joint(windows, kernel_size)`` fits one
kernel to several windows of one image (latent images per window, the kernel step's
normal equations averaged over the windows).  The id is the same: joint estimation
is another use of the same numerics, not another labelling.

>>> from kernels_gpu import estimators
>>> est = estimators.get("l0grad", iterations=2)
>>> est.name, est.id.startswith("l0grad@1-"), "pan-l0" in estimators.available()
('l0grad', True, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import backend
from . import dark_channel, l0grad, pan_l0

__all__ = ["Estimator", "available", "get", "register"]


@dataclass(frozen=True)
class Estimator:
    """A registered estimator bound to one set of parameters.

    Attributes
    ----------
    name : registry name, e.g. ``"l0grad"``
    version : bumped whenever the code's output changes for the same parameters
    params : frozen dataclass of parameters
    run : ``run(windows (B, H, W), kernel_size, params) -> (B, k, k) float32``
    summary : one line for ``goodregions estimators``
    run_joint : ``run_joint(windows (K, H, W), kernel_size, params) -> (k, k) float32``, one kernel for all

    >>> from kernels_gpu import estimators
    >>> est = estimators.get("l0grad", gamma=30)
    >>> est.name, est.params.gamma, est.id == estimators.get("l0grad").id
    ('l0grad', 30, False)
    """

    name: str
    version: str
    params: Any
    run: Callable[[Any, int, Any], Any]
    summary: str = ""
    run_joint: Callable[[Any, int, Any], Any] | None = None

    @property
    def id(self) -> str:
        """``name@version-hash8``: stable across processes, changes with any parameter.

        >>> from kernels_gpu import estimators
        >>> est = estimators.get("l0grad")
        >>> est.id.startswith("l0grad@1-"), len(est.id.split("-")[-1]), est.id == estimators.get("l0grad").id
        (True, 8, True)
        """
        blob = json.dumps(dataclasses.asdict(self.params), sort_keys=True, default=repr)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        return f"{self.name}@{self.version}-{digest}"

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (id, name, version, parameters).

        >>> from kernels_gpu import estimators
        >>> description = estimators.get("l0grad").describe()
        >>> sorted(description), description["params"]["iterations"]
        (['id', 'name', 'params', 'version'], 5)
        """
        return {"id": self.id, "name": self.name, "version": self.version, "params": dataclasses.asdict(self.params)}

    def __call__(self, windows: Any, kernel_size: int, *, fft_workers: int | None = None) -> Any:
        """Estimate one kernel per window; see :func:`l0grad.estimate` for the contract.

        ``fft_workers`` : threads of the CPU FFTs (``scipy.fft``) during this call; default
        every core this process may use (:func:`kernels_gpu.backend.fft_workers`).

        >>> import numpy as np
        >>> from kernels_gpu import estimators
        >>> windows = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
        >>> estimators.get("l0grad", iterations=2)(windows, 9, fft_workers=1).shape
        (2, 9, 9)
        """
        _check(windows, kernel_size, "(B, H, W)")
        with backend.fft_workers(fft_workers):
            return self.run(windows, kernel_size, self.params)

    def joint(self, windows: Any, kernel_size: int, *, fft_workers: int | None = None) -> Any:
        """One kernel shared by the windows ``(K, H, W)`` of one image: ``(kernel_size, kernel_size)`` float32.

        Every window keeps its own latent image; the kernel step sums (averages) the
        windows' normal equations, so ``K`` copies of one window give that window's kernel
        and ``K`` different windows give the kernel that explains them all.  Same device as
        ``windows``; same contract as :meth:`__call__` otherwise.

        >>> import numpy as np
        >>> from kernels_gpu import estimators
        >>> windows = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
        >>> estimators.get("l0grad", iterations=2).joint(windows, 9).shape
        (9, 9)
        """
        if self.run_joint is None:
            raise ValueError(f"estimator {self.name!r} has no joint estimation")
        _check(windows, kernel_size, "(K, H, W)")
        with backend.fft_workers(fft_workers):
            return self.run_joint(windows, kernel_size, self.params)


def _check(windows: Any, kernel_size: int, layout: str) -> None:
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be odd and >= 3, got {kernel_size}")
    if windows.ndim != 3:
        raise ValueError(f"windows must be {layout}, got shape {tuple(windows.shape)}")
    if min(windows.shape[-2:]) < kernel_size:
        raise ValueError(f"kernel size {kernel_size} is larger than the window {windows.shape[-2]}x{windows.shape[-1]}")


_REGISTRY: dict[str, tuple[str, type, Callable, str, Callable | None]] = {}


def register(
    name: str, version: str, params_type: type, run: Callable, summary: str = "", run_joint: Callable | None = None
) -> None:
    """Add an estimator (its parameters' dataclass gives the defaults; ``run_joint`` its joint estimation).

    >>> from kernels_gpu.estimators import l0grad
    >>> register("l0grad", "1", l0grad.L0GradParams, l0grad.estimate)
    Traceback (most recent call last):
    ValueError: estimator 'l0grad' is already registered
    """
    if name in _REGISTRY:
        raise ValueError(f"estimator {name!r} is already registered")
    _REGISTRY[name] = (version, params_type, run, summary, run_joint)


def available() -> list[str]:
    """Registered estimator names, sorted.

    >>> available()
    ['dark-channel', 'l0grad', 'pan-l0']
    """
    return sorted(_REGISTRY)


def get(name: str, **overrides: Any) -> Estimator:
    """The estimator ``name`` with default parameters, optionally overridden.

    >>> get("pan-l0", iterations=1).params.iterations
    1
    >>> get("nope")
    Traceback (most recent call last):
    KeyError: "unknown estimator 'nope' (registered: dark-channel, l0grad, pan-l0)"
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown estimator {name!r} (registered: {', '.join(available())})")
    version, params_type, run, summary, run_joint = _REGISTRY[name]
    return Estimator(name, version, params_type(**overrides), run, summary, run_joint)


register(
    "l0grad",
    "1",
    l0grad.L0GradParams,
    l0grad.estimate,
    "L0 gradient prior, coarse-to-fine, closed-form Fourier kernel step (Anger, Facciolo & Delbracio, IPOL 2019)",
    l0grad.estimate_joint,
)

# version 2 of pan-l0 and dark-channel: the kernel is carried between scales by MATLAB's bicubic
# imresize and the latent step pads to the reference's FFT grid (opt_fft_size), as Pan's code does
register(
    "pan-l0",
    "2",
    pan_l0.PanL0Params,
    pan_l0.estimate,
    "L0 intensity + gradient prior, coarse-to-fine, CG kernel step (Pan, Hu, Su & Yang, CVPR 2014)",
    pan_l0.estimate_joint,
)

register(
    "dark-channel",
    "2",
    dark_channel.DarkChannelParams,
    dark_channel.estimate,
    "Dark channel prior (35x35) + L0 gradient, coarse-to-fine, CG kernel step (Pan, Sun, Pfister & Yang, CVPR 2016)",
    dark_channel.estimate_joint,
)
