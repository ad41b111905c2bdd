"""Tolerances for comparing float results computed in different ways (batch or alone, NumPy or CuPy).

float32 has a unit roundoff of 6e-8; an FFT of n points loses about log2(n) of it, and an
iterative solver (deconvolution, the estimators' inner loops) repeats that many times, so two
float32 paths that differ only in SIMD width, thread count or batch composition agree to about
1e-5 relative, not to the last bit. ``float32`` leaves a decade above that; ``float64`` is for
direct (non-iterative) float64 computations.
"""

TOLERANCE: dict[str, dict[str, float]] = {
    "float32": {"rtol": 1e-4, "atol": 1e-5},
    "float64": {"rtol": 1e-10, "atol": 1e-12},
}
