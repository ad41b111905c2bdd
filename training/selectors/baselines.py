"""The baseline window scorers: the ways of choosing a region that the CNN is compared with.

Every scorer takes one grey image ``(H, W)`` in [0, 1], the window corners of
:func:`pipeline.windows.grid` ``(n, 2)`` (``y, x``, window-id order) and the
window side ``size``, and returns one float64 score per window, higher meaning
better; :func:`training.selectors.rank_by_scores` turns scores into a ranking.
Each scorer works on the whole image once (gradients, filters, box sums through
an integral image) and then reads every window off in O(1), so the cost does not
grow with the number of windows or their overlap.

Sources ("[ours]" marks a choice the source does not make for us):

- ``fergus``: Fergus et al., "Removing camera shake from a single photograph",
  SIGGRAPH 2006, let the user pick a patch rich in structure and free of
  saturated pixels.  Automated here as the largest gradient variance among
  windows with few clipped pixels.
- ``xu-jia``: Xu & Jia, "Two-phase kernel estimation for robust motion
  deblurring", ECCV 2010: the usefulness-of-edges map, windows scored by the
  gradient magnitude of their useful edges.
- ``hu-yang``: Hu & Yang, "Good regions to deblur", ECCV 2012 / IJCV 2015 style:
  a Gabor filter-bank and edge-statistics feature per window with a
  logistic-regression classifier (their CRF pairwise term is left out).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import fft as sp_fft
from scipy.ndimage import gaussian_filter
from scipy.optimize import minimize
from scipy.special import expit
from skimage.filters import gabor_kernel

__all__ = [
    "GABOR_FREQUENCIES",
    "GABOR_ORIENTATIONS",
    "STRONG_EDGE",
    "XU_JIA_EPS",
    "LogisticRegression",
    "fergus_scores",
    "gabor_feature_names",
    "gabor_features",
    "hu_yang_scores",
    "neighbourhood_sums",
    "usefulness_map",
    "window_sums",
    "xu_jia_scores",
]

log = logging.getLogger(__name__)

#: Xu & Jia's constant 0.5 in the denominator of r is in 8-bit units (images in
#: [0, 255]); our images are in [0, 1], so the same constant is 0.5 / 255.
XU_JIA_EPS = 0.5 / 255

#: Gabor bank [ours; Hu & Yang's exact bank is unverified]: three octave-spaced
#: frequencies in cycles per pixel (periods of 20, 10 and 5 px), the scales at
#: which edges of a motion-blurred image still carry energy; finer bands hold
#: mostly noise once an image is blurred.
GABOR_FREQUENCIES = (0.05, 0.1, 0.2)
#: Four orientations, radians: 0, 45, 90 and 135 degrees.
GABOR_ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: Gradient magnitude (forward differences of the image smoothed by a Gaussian of
#: 1 px, [0, 1] image units) above which a pixel counts as a strong edge in the
#: Hu & Yang features [ours]: between the 65th and 80th percentile on Levin et
#: al.'s blurred images (synthetic with noise 0.01, and real), well above the
#: noise, which the smoothing brings down to about 0.0025.
STRONG_EDGE = 0.02


# ---------------------------------------------------------------- shared helpers


def _check(image: Any, corners: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image as float64 ``(H, W)`` and the corners as int64 ``(n, 2)``, all windows in bounds."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a grey image (H, W), got shape {image.shape}")
    corners = np.asarray(corners)
    if corners.ndim != 2 or corners.shape[1] != 2 or len(corners) == 0:
        raise ValueError(f"expected window corners of shape (n, 2) with n >= 1, got {corners.shape}")
    corners = corners.astype(np.int64)
    size = int(size)
    if size < 2:
        raise ValueError(f"window size must be >= 2 px, got {size}")
    H, W = image.shape
    if corners.min() < 0 or (corners[:, 0] + size).max() > H or (corners[:, 1] + size).max() > W:
        raise ValueError(f"some {size}-px windows fall outside the {H}x{W} image")
    return image, corners


def _forward_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward differences ``(H, W)`` each, zero on the last column / row (no pixel beyond the border)."""
    gx = np.zeros_like(image)
    gy = np.zeros_like(image)
    gx[:, :-1] = np.diff(image, axis=1)
    gy[:-1, :] = np.diff(image, axis=0)
    return gx, gy


def _integral(field: np.ndarray) -> np.ndarray:
    """Summed-area table ``(H + 1, W + 1)`` with a zero first row and column, float64."""
    table = np.zeros((field.shape[0] + 1, field.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(field, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
    return table


def window_sums(field: Any, corners: Any, size: int | tuple[int, int]) -> np.ndarray:
    """Sum of ``field`` over each window, through one integral image.

    Parameters
    ----------
    field : (H, W) float
    corners : (n, 2) int, top-left corners ``(y, x)``
    size : int or (h, w)
        Window side, or its height and width.

    Returns
    -------
    (n,) float64 : ``field[y:y+h, x:x+w].sum()`` for each corner.
    """
    h, w = (size, size) if np.isscalar(size) else size
    table = _integral(np.asarray(field, dtype=np.float64))
    y, x = np.asarray(corners, dtype=np.int64).T
    return table[y + h, x + w] - table[y, x + w] - table[y + h, x] + table[y, x]


def neighbourhood_sums(field: Any, h: int) -> np.ndarray:
    """Sum of ``field`` over the ``h x h`` neighbourhood centred on every pixel (zeros outside the image).

    Parameters
    ----------
    field : (H, W) float
    h : odd int >= 1

    Returns
    -------
    (H, W) float64
    """
    if h < 1 or h % 2 == 0:
        raise ValueError(f"the neighbourhood side must be odd and >= 1, got {h}")
    field = np.asarray(field, dtype=np.float64)
    H, W = field.shape
    table = _integral(np.pad(field, h // 2))
    return table[h : h + H, h : h + W] - table[:H, h : h + W] - table[h : h + H, :W] + table[:H, :W]


# ------------------------------------------------------------------------ fergus


def fergus_scores(
    image: Any,
    corners: Any,
    size: int,
    saturation: float = 0.98,
    tolerance: float = 0.01,
    dark: bool = True,
) -> np.ndarray:
    """Fergus et al. 2006, automated: gradient variance of each window, clipped windows rejected.

    Fergus et al. ("Removing camera shake from a single photograph", SIGGRAPH
    2006) ask the user for a patch rich in structure and free of saturated
    pixels; their code has no automatic selector.  Our automation [ours]: a
    window's score is the variance of its horizontal plus the variance of its
    vertical forward differences, both taken between pixels of the window only.
    A window is rejected (score ``-inf``) when more than ``tolerance`` of its
    pixels are clipped: ``>= saturation`` (bright) and, with ``dark``, also
    ``<= 1 - saturation`` (dark), because a pixel clipped at either end breaks
    the linear blur model the kernel estimate relies on.  If every window is
    rejected the plain variances are returned, so a window is still chosen.

    Parameters
    ----------
    image : (H, W) float, in [0, 1]
    corners : (n, 2) int, window corners ``(y, x)`` from ``pipeline.windows.grid``
    size : int, window side (>= 2)
    saturation : float
        Bright clipping level, in (0.5, 1] [ours: 0.98, i.e. 250 / 255].
    tolerance : float
        Largest accepted fraction of clipped pixels in a window [ours: 0.01].
    dark : bool
        Also count pixels ``<= 1 - saturation`` as clipped [ours: yes].

    Returns
    -------
    (n,) float64
    """
    image, corners = _check(image, corners, size)
    if not 0.5 < saturation <= 1:
        raise ValueError(f"saturation must lie in (0.5, 1], got {saturation}")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance must lie in [0, 1], got {tolerance}")
    dx = np.diff(image, axis=1)  # (H, W - 1): pairs of horizontally adjacent pixels
    dy = np.diff(image, axis=0)  # (H - 1, W)
    scores = np.zeros(len(corners))
    for diff, shape in ((dx, (size, size - 1)), (dy, (size - 1, size))):
        count = shape[0] * shape[1]
        mean = window_sums(diff, corners, shape) / count
        scores += np.maximum(window_sums(diff * diff, corners, shape) / count - mean * mean, 0.0)
    clipped = image >= saturation
    if dark:
        clipped |= image <= 1 - saturation
    rejected = window_sums(clipped, corners, size) / (size * size) > tolerance
    if rejected.all():
        log.info("fergus: every window has more than %.3g clipped pixels; ranking by variance alone", tolerance)
        return scores
    scores[rejected] = -np.inf
    return scores


# ------------------------------------------------------------------------ xu-jia


def usefulness_map(image: Any, h: int = 5, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Xu & Jia 2010's usefulness of edges, r, and the gradient magnitude it weighs.

    ``r(x) = ‖Σ_{y∈N_h(x)} ∇B(y)‖ / (Σ_{y∈N_h(x)} ‖∇B(y)‖ + ε)`` over the
    ``h x h`` neighbourhood ``N_h(x)`` (zeros beyond the border), with ``B`` the
    blurred image smoothed by a Gaussian of ``sigma`` px and ``∇`` forward
    differences.  Xu & Jia's ``ε = 0.5`` is in [0, 255] units; our images are
    in [0, 1], so ``ε = 0.5 / 255`` (:data:`XU_JIA_EPS`).  ``r`` is near 1 where
    the gradients of a neighbourhood agree in direction (a straight edge wider
    than the neighbourhood) and small where they cancel (thin lines, fine
    texture, noise), which mislead kernel estimation.

    Parameters
    ----------
    image : (H, W) float, in [0, 1]
    h : odd int, neighbourhood side (Xu & Jia: 5; unverified)
    sigma : float
        Gaussian pre-smoothing in px [ours: 1.0; Xu & Jia smooth B first, the
        width is unverified]; 0 turns it off.

    Returns
    -------
    r : (H, W) float64, in [0, 1)
    magnitude : (H, W) float64, ``‖∇B‖``
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"expected a grey image (H, W), got shape {image.shape}")
    smooth = gaussian_filter(image, sigma, mode="nearest") if sigma > 0 else image
    gx, gy = _forward_gradient(smooth)
    magnitude = np.hypot(gx, gy)
    coherent = np.hypot(neighbourhood_sums(gx, h), neighbourhood_sums(gy, h))
    return coherent / (neighbourhood_sums(magnitude, h) + XU_JIA_EPS), magnitude


def xu_jia_scores(
    image: Any, corners: Any, size: int, h: int = 5, sigma: float = 1.0, tau_r: float = 0.6
) -> np.ndarray:
    """Xu & Jia 2010: each window's total gradient magnitude on useful edges.

    Xu & Jia ("Two-phase kernel estimation for robust motion deblurring", ECCV
    2010) mask ``M = H(r - τ_r)`` of :func:`usefulness_map` to keep only edges
    useful for kernel estimation; they pick ``τ_r`` adaptively per iteration and
    select no region.  As a region selector [ours] a window scores
    ``Σ_{x∈window} ‖∇B(x)‖ · [r(x) > τ_r]``: strong edges count more, edges that
    the usefulness map rejects count nothing.

    Parameters
    ----------
    image : (H, W) float, in [0, 1]
    corners : (n, 2) int, window corners ``(y, x)``
    size : int, window side
    h : odd int, neighbourhood side of r
    sigma : float, Gaussian pre-smoothing of the image in px
    tau_r : float
        Usefulness threshold [ours: 0.6].  It sits above what i.i.d. noise gives
        after the smoothing (median r about 0.3, 90th percentile about 0.55 with
        ``h = 5, sigma = 1``) and below a right-angle corner of two equal edges
        (``√2 / 2 ≈ 0.71``), so straight edges and corners count and fine
        isotropic texture does not.

    Returns
    -------
    (n,) float64, >= 0
    """
    image, corners = _check(image, corners, size)
    r, magnitude = usefulness_map(image, h=h, sigma=sigma)
    return window_sums(magnitude * (r > tau_r), corners, size)


# ----------------------------------------------------------------------- hu-yang


def _gabor_bank() -> list[np.ndarray]:
    """The complex Gabor kernels, frequency-major; the real parts made zero-mean so flat regions give zero."""
    bank = []
    for frequency in GABOR_FREQUENCIES:
        for theta in GABOR_ORIENTATIONS:
            kernel = gabor_kernel(frequency, theta=theta).astype(np.complex128)
            bank.append(kernel - kernel.real.mean())
    return bank


def _gabor_magnitudes(image: np.ndarray) -> list[np.ndarray]:
    """Magnitude ``(H, W)`` of the response of each kernel of the bank to the symmetric-padded image.

    One FFT of the padded image serves all kernels.  The FFT is at least as large as
    the padded image, so the circular wrap-around only touches the first
    ``2 * half`` rows and columns, which the 'valid' crop drops.
    """
    bank = _gabor_bank()
    half = max(max(kernel.shape) for kernel in bank) // 2
    padded = np.pad(image, half, mode="symmetric")
    shape = tuple(sp_fft.next_fast_len(n) for n in padded.shape)
    spectrum = sp_fft.fft2(padded, shape)
    H, W = image.shape
    magnitudes = []
    for kernel in bank:
        # centre every kernel in a (2 half + 1)^2 frame so all share the same 'valid' crop
        ky, kx = kernel.shape[0] // 2, kernel.shape[1] // 2
        framed = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.complex128)
        framed[half - ky : half + ky + 1, half - kx : half + kx + 1] = kernel
        response = sp_fft.ifft2(spectrum * sp_fft.fft2(framed, shape))
        magnitudes.append(np.abs(response[2 * half : 2 * half + H, 2 * half : 2 * half + W]))
    return magnitudes


def gabor_feature_names() -> list[str]:
    """Names of the ``F = 29`` columns of :func:`gabor_features`, in order."""
    names = []
    for frequency in GABOR_FREQUENCIES:
        for theta in GABOR_ORIENTATIONS:
            tag = f"gabor_f{frequency:g}_o{round(np.degrees(theta))}"
            names += [f"{tag}_mean", f"{tag}_std"]
    return [*names, "gradient_mean", "gradient_std", "strong_edge_fraction", "intensity_std", "clipped_fraction"]


def _mean_std(field: np.ndarray, corners: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    count = size * size
    mean = window_sums(field, corners, size) / count
    var = window_sums(field * field, corners, size) / count - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def gabor_features(image: Any, corners: Any, size: int) -> np.ndarray:
    """Hu & Yang style features of every window: Gabor-bank statistics and edge statistics.

    Each of the 12 Gabor kernels of :data:`GABOR_FREQUENCIES` x
    :data:`GABOR_ORIENTATIONS` (``skimage.filters.gabor_kernel``, bandwidth 1,
    complex, real part made zero-mean) filters the whole image once (FFT
    convolution of the symmetric-padded image); a window gets the mean and the
    standard deviation of the response magnitude inside it (24 features).  Then
    five edge/structure statistics: mean and standard deviation of the
    gradient magnitude (forward differences of the image smoothed by a Gaussian
    of 1 px [ours]), the fraction of pixels whose gradient
    exceeds :data:`STRONG_EDGE`, the intensity standard deviation, and the
    fraction of clipped pixels (``>= 0.98`` or ``<= 0.02``).  Hu & Yang's exact
    features are unverified; these follow their
    description (Gabor responses at several orientations and scales, plus edge
    statistics), not their code.

    Parameters
    ----------
    image : (H, W) float, in [0, 1]
    corners : (n, 2) int, window corners ``(y, x)``
    size : int, window side

    Returns
    -------
    (n, 29) float64, columns named by :func:`gabor_feature_names`.
    """
    image, corners = _check(image, corners, size)
    columns = []
    for response in _gabor_magnitudes(image):
        columns += _mean_std(response, corners, size)
    # edge statistics on a lightly smoothed image, so that sensor noise does not pass for edges
    gx, gy = _forward_gradient(gaussian_filter(image, 1.0, mode="nearest"))
    magnitude = np.hypot(gx, gy)
    columns += _mean_std(magnitude, corners, size)
    columns.append(window_sums(magnitude > STRONG_EDGE, corners, size) / size**2)
    columns.append(_mean_std(image, corners, size)[1])
    columns.append(window_sums((image >= 0.98) | (image <= 0.02), corners, size) / size**2)
    return np.stack(columns, axis=1)


class LogisticRegression:
    """L2-regularised logistic regression on standardised features, fitted with L-BFGS.

    The Hu & Yang classifier, simplified [ours]: Hu & Yang use the classifier as
    the unary term of a CRF over candidate regions, with a pairwise term that
    smooths labels between neighbouring regions; we keep the unary classifier
    only and rank windows by its logit.  The objective is the sample-weighted
    mean log-loss plus ``alpha / 2 · ‖w‖²`` (the intercept is not penalised),
    minimised by ``scipy.optimize.minimize(method="L-BFGS-B")`` with the analytic
    gradient.  Features are standardised with the mean and standard deviation of
    the training set, which the model stores.

    Parameters
    ----------
    alpha : float, L2 weight on the standardised coefficients [ours: 1e-3]
    max_iter : int, L-BFGS iteration limit
    """

    def __init__(self, alpha: float = 1e-3, max_iter: int = 1000) -> None:
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.max_iter = int(max_iter)
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        self.n_iter_: int = 0

    @staticmethod
    def objective(
        theta: np.ndarray, X: np.ndarray, y: np.ndarray, weight: np.ndarray, alpha: float
    ) -> tuple[float, np.ndarray]:
        """Loss and gradient at ``theta = [w (F), b]`` for standardised ``X (n, F)``, targets ``y (n,)`` in [0, 1].

        ``weight (n,)`` sums to 1.  Loss: ``Σ weight · (log(1 + e^z) - y z) + alpha/2 ‖w‖²``, ``z = X w + b``.
        """
        w, b = theta[:-1], theta[-1]
        z = X @ w + b
        # log(1 + e^z) computed without overflow
        loss = float(weight @ (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))) - y * z)) + 0.5 * alpha * float(w @ w)
        residual = weight * (expit(z) - y)
        return loss, np.append(X.T @ residual + alpha * w, residual.sum())

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> LogisticRegression:
        """Fit to features ``X (n, F)`` and labels ``y (n,)`` (0/1, or soft targets in [0, 1]).

        ``sample_weight (n,)`` >= 0, e.g. to balance the classes; uniform by default.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (len(X),) or len(X) == 0:
            raise ValueError(f"expected X (n, F) and y (n,), got {X.shape} and {y.shape}")
        if not (np.isfinite(X).all() and ((y >= 0) & (y <= 1)).all()):
            raise ValueError("features must be finite and labels must lie in [0, 1]")
        weight = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != y.shape or (weight < 0).any() or weight.sum() <= 0:
            raise ValueError("sample_weight must be (n,), non-negative, with a positive sum")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 1e-12, std, 1.0)  # constant features stay constant (0) instead of blowing up
        Xs = (X - self.mean_) / self.scale_
        result = minimize(
            self.objective,
            np.zeros(X.shape[1] + 1),
            args=(Xs, y, weight / weight.sum(), self.alpha),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter, "gtol": 1e-8},
        )
        if not result.success:
            log.warning("logistic regression: L-BFGS stopped early (%s)", result.message)
        self.coef_, self.intercept_ = result.x[:-1], float(result.x[-1])
        self.n_iter_ = int(result.nit)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``(n,)`` float64 of features ``X (n, F)``; higher means a better window."""
        if self.coef_ is None or self.mean_ is None or self.scale_ is None:
            raise RuntimeError("the model is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.coef_):
            raise ValueError(f"expected features (n, {len(self.coef_)}), got {X.shape}")
        return ((X - self.mean_) / self.scale_) @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probability ``(n,)`` that each window is good."""
        return expit(self.decision_function(X))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description of the fitted model."""
        if self.coef_ is None or self.mean_ is None or self.scale_ is None:
            raise RuntimeError("the model is not fitted")
        return {
            "kind": "logistic-regression",
            "alpha": self.alpha,
            "max_iter": self.max_iter,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticRegression:
        """The model that :meth:`to_dict` described."""
        if data.get("kind") != "logistic-regression":
            raise ValueError(f"not a logistic-regression model: kind={data.get('kind')!r}")
        model = cls(alpha=data["alpha"], max_iter=data["max_iter"])
        model.mean_ = np.asarray(data["mean"], dtype=np.float64)
        model.scale_ = np.asarray(data["scale"], dtype=np.float64)
        model.coef_ = np.asarray(data["coef"], dtype=np.float64)
        model.intercept_ = float(data["intercept"])
        if not len(model.mean_) == len(model.scale_) == len(model.coef_):
            raise ValueError("mean, scale and coef must have one entry per feature")
        return model


def hu_yang_scores(image: Any, corners: Any, size: int, model: LogisticRegression) -> np.ndarray:
    """Hu & Yang style: the fitted classifier's logit on :func:`gabor_features` of each window, ``(n,)``."""
    return model.decision_function(gabor_features(image, corners, size))
