"""fastgan.apps.metrics on known cases: closed forms of the Fréchet distance, KID's unbiasedness,
precision/recall on hand-computed sets, and the errors on bad input."""
import math

import pytest
import torch

from fastgan.apps import metrics as M


pytestmark = pytest.mark.usefixtures("one_thread")


def _exact_moments(n, mu, sigma, g):
    """n samples whose sample mean is exactly mu and unbiased sample covariance exactly sigma."""
    d = mu.shape[0]
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    x = x - x.mean(0)
    cov = x.T @ x / (n - 1)
    white = x @ torch.linalg.inv(torch.linalg.cholesky(cov)).T  # covariance I
    return white @ torch.linalg.cholesky(sigma).T + mu


def _random_spd(d, g, cond=10.0):
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    evals = torch.logspace(0, math.log10(cond), d, dtype=torch.float64)
    return (q * evals) @ q.T


def test_identical_sets_give_zero():
    x = torch.randn(200, 16)
    assert M.fid_from_features(x, x.clone()) == pytest.approx(0, abs=1e-9)
    assert M.precision_recall(x, x.clone()) == (1.0, 1.0)
    # fewer samples than dimensions: singular covariances, still exactly 0
    y = torch.randn(5, 12)
    assert M.fid_from_features(y, y) == pytest.approx(0, abs=1e-7)


def test_shifted_and_scaled_isotropic_gaussians_closed_form():
    # N(mu1, a^2 I) vs N(mu2, b^2 I): |mu1 - mu2|^2 + D (a - b)^2
    g = torch.Generator().manual_seed(1)
    d, a, b = 6, 0.7, 1.9
    mu1, mu2 = torch.randn(d, dtype=torch.float64, generator=g), torch.randn(d, dtype=torch.float64, generator=g)
    eye = torch.eye(d, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum()) + d * (a - b) ** 2
    assert M.frechet_distance(mu1, a * a * eye, mu2, b * b * eye) == pytest.approx(expected, rel=1e-12)
    x, y = _exact_moments(50, mu1, a * a * eye, g), _exact_moments(70, mu2, b * b * eye, g)
    assert M.fid_from_features(x, y) == pytest.approx(expected, rel=1e-9)


def test_non_commuting_covariances_2d_closed_form():
    # for 2x2 PSD S1, S2: tr((S1 S2)^(1/2)) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    g = torch.Generator().manual_seed(2)
    s1, s2 = _random_spd(2, g, 30.0), _random_spd(2, g, 5.0)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = math.sqrt(float((s1 @ s2).trace()) + 2 * math.sqrt(float(s1.det() * s2.det())))
    mu1, mu2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25])
    expected = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace()) - 2 * tr_sqrt
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(tr_sqrt, rel=1e-12)


def test_trace_sqrt_against_general_eigenvalues_on_random_features():
    # an independent route: the (complex) eigenvalues of the non-symmetric product S1 S2
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 20, generator=g, dtype=torch.float64), torch.randn(250, 20, generator=g,
                                                                                dtype=torch.float64) * 1.5 + 0.3
    (m1, s1), (m2, s2) = M.feature_stats(x), M.feature_stats(y)
    ev = torch.linalg.eigvals(s1 @ s2)
    ref = float(torch.sqrt(ev).real.sum())
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-10)
    fid_ref = float((m1 - m2).square().sum() + s1.trace() + s2.trace()) - 2 * ref
    assert M.fid_from_features(x, y) == pytest.approx(fid_ref, rel=1e-10)


def test_against_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(100, 10, generator=g, dtype=torch.float64), torch.randn(90, 10, generator=g,
                                                                               dtype=torch.float64) * 2
    (m1, s1), (m2, s2) = M.feature_stats(x), M.feature_stats(y)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float((m1 - m2).square().sum() + s1.trace() + s2.trace()) - 2 * float(covmean.trace())
    assert M.fid_from_features(x, y) == pytest.approx(ref, rel=1e-8)


def test_mmd2_matches_explicit_sums():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 3, dtype=torch.float64, generator=g), torch.randn(4, 3, dtype=torch.float64, generator=g)

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    sxx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    syy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    sxy = sum(k(x[i], y[j]) for i in range(6) for j in range(4)) / 24
    assert M.mmd2_unbiased(x, y) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-12)


def test_kid_is_unbiased_and_detects_a_shift():
    # equal distributions: the mean over many independent draws is 0 within its standard error
    # (the biased V-statistic, diagonal included, would sit ~0.6 above 0 here)
    g = torch.Generator().manual_seed(6)
    draws = torch.tensor([M.mmd2_unbiased(torch.randn(20, 8, dtype=torch.float64, generator=g),
                                          torch.randn(20, 8, dtype=torch.float64, generator=g))
                          for _ in range(400)])
    stderr = float(draws.std()) / math.sqrt(len(draws))
    assert abs(float(draws.mean())) < 4 * stderr, (float(draws.mean()), stderr)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, same_std = M.kid_from_features(x, y, subsets=20, subset_size=100)
    shifted, _ = M.kid_from_features(x, y + 0.5, subsets=20, subset_size=100)
    assert abs(same) < 3 * same_std and shifted > 10 * same_std > 0
    assert M.kid_from_features(x, y, subsets=20, subset_size=100) == (same, same_std)  # seeded
    whole = M.kid_from_features(x[:50], y[:50], subsets=20, subset_size=100)  # each subset = both whole sets
    assert whole == (M.mmd2_unbiased(x[:50].double(), y[:50].double()), None)


def test_precision_recall_hand_computed():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = torch.tensor([[0.5], [10.0], [20.0], [30.0], [40.0]])
    # real radii (k=1) are 1: only 0.5 is inside -> precision 1/5; the fake ball around 0.5 has
    # radius 9.5 and holds every real point -> recall 1
    assert M.precision_recall(real, fake, k=1) == (pytest.approx(0.2), pytest.approx(1.0))
    assert M.precision_recall(fake, real, k=1) == (pytest.approx(1.0), pytest.approx(0.2))
    far = torch.randn(50, 4) + 100
    assert M.precision_recall(torch.randn(50, 4), far) == (0.0, 0.0)


def test_compute_metrics_and_names():
    x, y = torch.randn(40, 5), torch.randn(40, 5)
    out = M.compute_metrics(x, y, "fid,kid,pr", kid_subsets=5, kid_subset_size=20)
    assert set(out) == {"fid", "kid", "kid_std", "precision", "recall"}
    assert set(M.compute_metrics(x, y, ["kid"], kid_subsets=2, kid_subset_size=10)) == {"kid", "kid_std"}
    with pytest.raises(M.MetricError, match="unknown metrics"):
        M.parse_metrics("fid,is")


@pytest.mark.parametrize("call, msg", [
    (lambda: M.fid_from_features(torch.randn(10), torch.randn(10, 2)), "expected a matrix"),
    (lambda: M.fid_from_features(torch.randn(1, 3), torch.randn(10, 3)), "at least 2"),
    (lambda: M.fid_from_features(torch.randn(10, 3), torch.randn(10, 4)), "different dimensions"),
    (lambda: M.fid_from_features(torch.tensor([[1.0, float("nan")], [0, 1]]), torch.randn(5, 2)), "NaN or Inf"),
    (lambda: M.kid_from_features(torch.randn(1, 3), torch.randn(10, 3)), "at least 2"),
    (lambda: M.mmd2_unbiased(torch.randn(1, 3).double(), torch.randn(5, 3).double()), "at least 2"),
    (lambda: M.precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3), "at least 4"),
    (lambda: M.precision_recall(torch.randn(5, 2), torch.randn(10, 2), k=0), "positive integer"),
    (lambda: M.frechet_distance(torch.zeros(2), torch.eye(3), torch.zeros(2), torch.eye(2)), "covariance"),
])
def test_bad_input_is_a_clear_error(call, msg):
    with pytest.raises(M.MetricError, match=msg):
        call()
