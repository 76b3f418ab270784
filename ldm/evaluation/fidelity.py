"""Sample-quality metrics on Inception features, with the estimators of the reference tools
(pytorch-fid for FID, torch-fidelity for KID, IS and precision/recall), in float64.

* FID (Heusel et al. 2017, eq. 6): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of the 2048-d
  pool features' means and covariances (``np.cov``, ddof 1). The trace of the square root is taken
  without scipy as ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``: that matrix is symmetric positive
  semi-definite and similar to ``S1 S2``, so ``eigh`` gives its real eigenvalues.
* KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``, averaged over
  ``subsets`` random subsets of ``subset_size`` samples of each set (100 x 1000 by default, drawn
  without replacement by ``np.random.RandomState(2020)``, as torch-fidelity).
* Inception Score (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` over the 1008 softmax
  classes (logits without the fc bias), in ``splits`` = 10 consecutive parts of the samples after a
  ``RandomState(2020)`` shuffle; mean and (population) standard deviation over the parts.
* Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of
  balls around its samples reaching to their k-th nearest neighbour (k = 3); precision is the
  fraction of generated samples inside the reference manifold, recall the fraction of reference
  samples inside the generated one (distance <= radius counts as inside).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

RNG_SEED = 2020
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
PR_NEIGHBOURS = 3


@dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set: what FID compares and ``--save-stats`` writes."""
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> "GaussianStats":
        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images per set to estimate a covariance, got {len(features)}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition (round-off
    negative eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1 S2)^(1/2))`` as ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``."""
    root = psd_sqrt(sigma1)
    middle = root @ sigma2 @ root
    values = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """The Frechet distance of two Gaussians (FID on Inception statistics), in float64."""
    mu1, mu2 = np.asarray(a.mu, np.float64), np.asarray(b.mu, np.float64)
    s1, s2 = np.asarray(a.sigma, np.float64), np.asarray(b.sigma, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"statistics of different feature sizes: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x.y / d + coef0) ** degree`` for all pairs of rows (d = feature size)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under :func:`polynomial_kernel`: within-set means
    leave out the diagonal (m (m - 1) pairs), the cross term keeps all m^2 pairs."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = RNG_SEED) -> Tuple[float, float, int]:
    """(mean, std, subset size used) of the unbiased MMD^2 over random subsets. When a set has
    fewer than ``subset_size`` samples the subsets take the smaller set's size (torch-fidelity
    refuses instead)."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError("KID needs at least 2 images per set")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        pick1 = f1[rng.choice(len(f1), size, replace=False)]
        pick2 = f2[rng.choice(len(f2), size, replace=False)]
        values.append(unbiased_mmd2(pick1, pick2))
    return float(np.mean(values)), float(np.std(values)), size


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS, shuffle: bool = True,
                    seed: int = RNG_SEED) -> Tuple[float, float]:
    """(mean, std) over ``splits`` parts of ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = len(logits)
    if n < splits:
        raise ValueError(f"the Inception Score needs at least {splits} images ({splits} splits), got {n}")
    if shuffle:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    log_p = logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        log_marginal = part.exp().mean(dim=0).log()
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _kth_neighbour_radii(features: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each sample to its k-th nearest other sample (the k+1-th smallest, itself first)."""
    return torch.cat([_pairwise_distances(rows, features).kthvalue(k + 1, dim=1).values
                      for rows in features.split(block)])


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    inside = [(_pairwise_distances(rows, centres) <= radii).any(dim=1) for rows in points.split(block)]
    return float(torch.cat(inside).double().mean())


def precision_recall(reference: np.ndarray, generated: np.ndarray, k: int = PR_NEIGHBOURS,
                     block: int = 1024) -> Tuple[float, float]:
    """Improved (precision, recall) of ``generated`` against ``reference`` features."""
    real = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(generated), dtype=torch.float64)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} images per set")
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, block), block)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, block), block)
    return precision, recall
