"""Golden files for NumPy/CuPy parity: short, fixed-iteration runs made by the NumPy path.

``python -m tests.golden`` rewrites ``tests/data/golden/*.npz``.  The CPU tests
check that NumPy still reproduces them (so a change of numerics is noticed and the
files are regenerated on purpose); the ``gpu`` tests check that CuPy matches them.
"""

from __future__ import annotations

import pathlib

import numpy as np

from kernels_gpu import estimators
from kernels_gpu.conv import convolve
from kernels_gpu.deconv import deconvolve
from kernels_gpu.similarity import similarity
from tests import levin

GOLDEN = pathlib.Path(__file__).resolve().parent / "data" / "golden"

#: short runs: 2 scales, 2 iterations each, 3 windows of 96 px
SHORT_L0GRAD = {"iterations": 2, "beta_max": 1e3}
#: pan-l0 and dark-channel: 4 scales, 1 iteration each, a short gradient continuation, 10 CG steps
SHORT_PAN = {"iterations": 1, "beta_max": 1e2, "cg_iterations": 10}


def inputs() -> dict[str, np.ndarray]:
    blurred, truth = levin.synthetic(1, 5, sigma=0.01)
    windows = np.stack([blurred[0:96, 0:96], blurred[80:176, 60:156], blurred[150:246, 150:246]])
    return {"windows": windows.astype(np.float32), "truth": truth.astype(np.float32)}


def compute(xp=np) -> dict[str, np.ndarray]:
    """Every golden quantity, computed with the array module ``xp`` and returned on the host."""
    from kernels_gpu.backend import to_numpy

    data = {k: xp.asarray(v) for k, v in inputs().items()}
    l0grad = estimators.get("l0grad", **SHORT_L0GRAD)
    kernels = l0grad(data["windows"], 17)
    pan = estimators.get("pan-l0", **SHORT_PAN)(data["windows"], 17)
    dark = estimators.get("dark-channel", **SHORT_PAN)(data["windows"], 17)
    return {
        "pan_l0_kernels": to_numpy(pan),
        "dark_channel_kernels": to_numpy(dark),
        "l0grad_kernels": to_numpy(kernels),
        "similarity": to_numpy(similarity(kernels, data["truth"])),
        "convolve_same": to_numpy(convolve(data["windows"], data["truth"], "same")),
        "deconvolve": to_numpy(deconvolve(data["windows"], data["truth"])),
    }


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN / "short_runs.npz", **compute(np))
    print(f"wrote {GOLDEN / 'short_runs.npz'}")


if __name__ == "__main__":
    main()
