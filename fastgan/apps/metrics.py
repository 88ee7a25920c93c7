"""Sample-quality metrics on feature vectors: Fréchet distance (the FID formula), KID and
precision/recall. Everything is computed in float64.

Inputs are feature matrices ``[N, D]`` (one row per image) from any extractor; which extractor
made them decides what the numbers can be compared with (``fastgan.apps.features``): values from
fastgan's shapes feature net are *not* comparable with Inception-FID values in papers.

- Fréchet distance between the Gaussians N(mu1, S1) and N(mu2, S2) fitted to the two sets:
  ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``.
  ``tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of S1 S2, which are those
  of the symmetric positive semi-definite matrix ``S1^(1/2) S2 S1^(1/2)`` (AB and BA have the same
  non-zero eigenvalues): two symmetric eigendecompositions, no general (non-symmetric) square root,
  exact for singular covariances (fewer samples than dimensions) too. Eigenvalues that rounding
  pushed below zero are clamped to zero.
- KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial
  kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets of both sets.
- Precision/recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around its
  points with radius the distance to the point's k-th nearest neighbour in the same set; precision
  is the fraction of generated samples inside the real manifold, recall the fraction of real
  samples inside the generated one.
"""
from __future__ import annotations

import math

import torch

from ..train.config import EVAL_METRICS as METRICS  # one table: TrainConfig checks --eval-metrics against it


class MetricError(ValueError):
    """Features that a metric cannot use (shape, non-finite values, too few samples)."""


def as_features(x, name: str = "features", min_n: int = 1) -> torch.Tensor:
    """``x`` as a float64 CPU tensor ``[N, D]``, or a ``MetricError`` naming the problem."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:
            raise MetricError(f"{name}: not an array of numbers ({type(exc).__name__}: {exc})") from None
    if x.dim() != 2:
        raise MetricError(f"{name}: expected a matrix [N, D] (one feature vector per row), got shape {list(x.shape)}")
    if x.is_complex():
        raise MetricError(f"{name}: complex features are not supported")
    if x.shape[1] < 1:
        raise MetricError(f"{name}: feature vectors have no components (shape {list(x.shape)})")
    if x.shape[0] < min_n:
        raise MetricError(f"{name}: {x.shape[0]} samples; this metric needs at least {min_n}")
    x = x.detach().to("cpu", torch.float64)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).sum())
        raise MetricError(f"{name}: {bad} of {x.shape[0]} feature vectors contain NaN or Inf")
    return x


def _same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"the two feature sets have different dimensions ({a.shape[1]} and {b.shape[1]})")


# ----------------------------------------------------------------------------- Fréchet distance

def feature_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], covariance [D, D]) of ``features`` [N, D], float64; the covariance is the
    unbiased one, ``sum_i (x_i - mu)(x_i - mu)^T / (N - 1)``, so N >= 2."""
    x = as_features(features, min_n=2)
    mu = x.mean(0)
    xc = x - mu
    return mu, (xc.T @ xc) / (x.shape[0] - 1)


def sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """The symmetric positive semi-definite square root of a symmetric PSD matrix ``a``:
    ``V diag(sqrt(max(l, 0))) V^T`` from ``a = V diag(l) V^T`` (a is symmetrised first)."""
    a = a.to(torch.float64)
    evals, evecs = torch.linalg.eigh((a + a.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def trace_sqrt_product(s1: torch.Tensor, s2: torch.Tensor) -> float:
    """``tr((S1 S2)^(1/2))`` for symmetric PSD S1, S2: the sum of the square roots of the
    eigenvalues of ``S1^(1/2) S2 S1^(1/2)`` (those of S1 S2)."""
    r = sqrtm_psd(s1)
    m = r @ s2.to(torch.float64) @ r
    return float(torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum())


def _check_gaussian(mu, sigma, name):
    mu, sigma = torch.as_tensor(mu, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64)
    if mu.dim() != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(f"{name}: expected a mean [D] and a covariance [D, D], got {list(mu.shape)} and "
                          f"{list(sigma.shape)}")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise MetricError(f"{name}: the mean or covariance contains NaN or Inf")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2):
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (>= 0; tiny negative rounding is
    returned as 0)."""
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise MetricError(f"the two Gaussians have different dimensions ({mu1.shape[0]} and {mu2.shape[0]})")
    d2 = float((mu1 - mu2).square().sum()) + float(sigma1.trace() + sigma2.trace()) \
        - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(d2, 0.0)


def fid_from_features(real, fake) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (each N >= 2)."""
    real, fake = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    _same_dim(real, fake)
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


# ----------------------------------------------------------------------------- KID

def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``k(x, y) = (x.y / D + 1)^3`` for all rows of x [N, D] and y [M, D] -> [N, M]."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimate of MMD^2 between the distributions of x [m, D] and y [n, D]:
    ``sum_{i!=j} k(x_i,x_j) / (m(m-1)) + sum_{i!=j} k(y_i,y_j) / (n(n-1)) - 2 sum_{i,j} k(x_i,y_j) / (mn)``."""
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise MetricError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid_from_features(real, fake, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float | None]:
    """KID: (mean, standard deviation) of ``mmd2_unbiased`` over ``subsets`` random subsets of
    ``min(subset_size, N_real, N_fake)`` rows of each set (drawn without replacement within a subset,
    from a generator seeded with ``seed``). The mean is an unbiased estimate of MMD^2 (it can be
    slightly negative for equal distributions); the std is that of a single subset's estimate. When
    both sets are no larger than the subset size every subset is the whole of both sets: the one
    estimate is returned with std None."""
    real, fake = as_features(real, "real features", 2), as_features(fake, "generated features", 2)
    _same_dim(real, fake)
    if subsets < 1 or subset_size < 2:
        raise MetricError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m == real.shape[0] == fake.shape[0]:  # every subset would be both whole sets: one estimate, no spread
        return mmd2_unbiased(real, fake), None
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([mmd2_unbiased(real[torch.randperm(real.shape[0], generator=g)[:m]],
                                         fake[torch.randperm(fake.shape[0], generator=g)[:m]])
                           for _ in range(subsets)], dtype=torch.float64)
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


# ----------------------------------------------------------------------------- precision / recall

def _pairwise_dist(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048):
    """Yield (row offset, euclidean distances [rows, len(b)]) in chunks of a's rows."""
    for i in range(0, a.shape[0], chunk):
        yield i, torch.cdist(a[i:i + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """For each row of x, the distance to its k-th nearest neighbour among the other rows."""
    if x.shape[0] <= k:
        raise MetricError(f"k-NN radii with k={k} need more than {k} samples, got {x.shape[0]}")
    radii = torch.empty(x.shape[0], dtype=torch.float64)
    for i, d in _pairwise_dist(x, x):
        # the k+1 smallest distances of each row include the point itself (0)
        radii[i:i + d.shape[0]] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """The fraction of ``queries`` within radius ``radii[j]`` of some ``manifold[j]``."""
    inside = torch.zeros(queries.shape[0], dtype=torch.bool)
    for i, d in _pairwise_dist(queries, manifold):
        inside[i:i + d.shape[0]] = (d <= radii).any(1)
    return float(inside.double().mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """(precision, recall) with k-NN manifolds (Kynkäänniemi et al. 2019): precision = the fraction
    of generated samples inside the union of balls ``B(r_i, NN_k(r_i))`` around the real samples;
    recall = the fraction of real samples inside the same construction around the generated ones.
    Each set needs more than k samples."""
    if not isinstance(k, int) or k < 1:
        raise MetricError(f"k must be a positive integer, got {k!r}")
    real, fake = as_features(real, "real features", k + 1), as_features(fake, "generated features", k + 1)
    _same_dim(real, fake)
    return _coverage(real, knn_radii(real, k), fake), _coverage(fake, knn_radii(fake, k), real)


# ----------------------------------------------------------------------------- all at once

def parse_metrics(spec: str | list | tuple) -> tuple[str, ...]:
    """``"fid,kid,pr"`` (or a list) -> the tuple of metric names; an unknown name is a MetricError."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [s for s in names if s not in METRICS]
    if unknown or not names:
        raise MetricError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}" if unknown
                          else "no metrics given")
    return tuple(dict.fromkeys(names))


def compute_metrics(real, fake, metrics=METRICS, kid_subsets: int = 100, kid_subset_size: int = 1000,
                    pr_k: int = 3, seed: int = 0) -> dict:
    """The chosen metrics between two feature sets, as a flat dict: ``fid``; ``kid``, ``kid_std``;
    ``precision``, ``recall``."""
    out = {}
    for name in parse_metrics(metrics):
        if name == "fid":
            out["fid"] = fid_from_features(real, fake)
        elif name == "kid":
            out["kid"], out["kid_std"] = kid_from_features(real, fake, kid_subsets, kid_subset_size, seed)
        else:
            out["precision"], out["recall"] = precision_recall(real, fake, pr_k)
    return {k: (v if v is not None and math.isfinite(v) else None) for k, v in out.items()}
