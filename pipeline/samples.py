"""Built-in sample data: blurred images made on the fly from scikit-image's bundled pictures.

``builtin:NAME`` on the command line means: take scikit-image's sample picture
NAME (shipped inside the package, no download), blur it as a camera would with a
seeded camera-shake kernel, add Gaussian noise, and use that as the input.  The
true kernel is known, so commands can report how close their estimate is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels_gpu.trajectory import camera_shake_kernel

from .files import InputError

__all__ = ["PREFIX", "SAMPLES", "Sample", "is_builtin", "load_builtin", "sharp_sample"]

PREFIX = "builtin:"

#: name -> loader of scikit-image's bundled pictures (no download): natural, man-made, text, faces.
#: (``clock`` is left out: scikit-image ships it motion-blurred.)
SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    name: (lambda name=name: getattr(_skdata(), name)())
    for name in (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "page",
        "text",
        "coins",
        "brick",
        "grass",
        "gravel",
        "moon",
        "retina",
        "immunohistochemistry",
        "cell",
    )
}
SAMPLES["motorcycle_left"] = lambda: _skdata().stereo_motorcycle()[0]
SAMPLES["motorcycle_right"] = lambda: _skdata().stereo_motorcycle()[1]


def _skdata():
    import skimage.data

    return skimage.data


@dataclass(frozen=True)
class Sample:
    """A built-in blurred image with its ground truth."""

    name: str
    blurred: np.ndarray  # (H, W) float32 in [0, 1]
    sharp: np.ndarray  # (H, W) float32 in [0, 1]
    kernel: np.ndarray  # (k, k) float32, sum 1


def is_builtin(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def sharp_sample(name: str) -> np.ndarray:
    """scikit-image's sample ``name`` as ``(H, W) float32`` grey in [0, 1]."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float32

    if name not in SAMPLES:
        raise InputError(f"{PREFIX}{name}: unknown built-in sample (choose from {', '.join(sorted(SAMPLES))})")
    pixels = SAMPLES[name]()
    if pixels.ndim == 3:
        pixels = rgb2gray(pixels[..., :3])
    return img_as_float32(pixels).astype(np.float32)


def load_builtin(spec: str, size: int = 256, kernel_size: int = 21, noise_sigma: float = 0.01, seed: int = 0) -> Sample:
    """The built-in blurred sample ``builtin:NAME`` (deterministic for the same arguments).

    Made as ``synth`` makes its images: the sharp picture is resized so its short side is
    ``size + kernel_size - 1`` and centre-cropped (:func:`~pipeline.synth.fit_picture`), blurred
    with 'valid' convolution (no artificial border: a camera sees beyond the frame), then noise
    of ``noise_sigma`` is added and the result clipped to [0, 1]
    (:func:`~pipeline.synth.blur_like_camera`).
    """
    from .synth import blur_like_camera, fit_picture

    name = spec[len(PREFIX) :] if is_builtin(spec) else spec
    picture = fit_picture(sharp_sample(name), size + kernel_size - 1, True, spec)
    rng = np.random.default_rng(seed)
    kernel = camera_shake_kernel(rng, kernel_size)
    blurred = blur_like_camera(picture, kernel, size, noise_sigma, rng)
    r = kernel_size // 2
    return Sample(name, blurred, picture[r : r + size, r : r + size].copy(), kernel)
