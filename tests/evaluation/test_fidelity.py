"""FID, KID, IS and precision/recall against independent float64 references and hand-computed cases."""
import numpy as np
import pytest

from ldm.evaluation.fidelity import (
    GaussianStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    psd_sqrt,
    unbiased_mmd2,
)


def _random_stats(rng, dim, samples):
    features = rng.normal(size=(samples, dim)) @ rng.normal(size=(dim, dim)) + rng.normal(size=dim)
    return GaussianStats.of(features)


def _reference_frechet(a, b):
    """tr sqrt(S1 S2) from the eigenvalues of the non-symmetric product S1 S2 (real and >= 0 for
    positive semi-definite S1, S2): another route than the implementation's symmetric form."""
    eigenvalues = np.linalg.eigvals(a.sigma @ b.sigma)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = a.mu - b.mu
    return diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt


@pytest.mark.parametrize("dim", [8, 64])
def test_frechet_distance_matches_an_independent_float64_reference(dim):
    rng = np.random.default_rng(dim)
    a, b = _random_stats(rng, dim, 4 * dim), _random_stats(rng, dim, 4 * dim)
    assert frechet_distance(a, b) == pytest.approx(_reference_frechet(a, b), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    a = GaussianStats(np.array([0.0, 1.0]), np.diag([4.0, 9.0]))
    b = GaussianStats(np.array([3.0, 1.0]), np.diag([1.0, 1.0]))
    # |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2 = 9 + (2 - 1)^2 + (3 - 1)^2
    assert frechet_distance(a, b) == pytest.approx(14.0, rel=1e-12)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_rank_deficient():
    stats = _random_stats(np.random.default_rng(0), 32, 5)   # covariance of rank 4
    assert abs(frechet_distance(stats, stats)) < 1e-7 * np.trace(stats.sigma)


def test_psd_sqrt_squares_back():
    stats = _random_stats(np.random.default_rng(1), 16, 64)
    root = psd_sqrt(stats.sigma)
    np.testing.assert_allclose(root @ root, stats.sigma, rtol=1e-9, atol=1e-9)


def test_unbiased_mmd_of_a_one_dimensional_case_by_hand():
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    # kernel (x y + 1)^3: within x (off-diagonal) 1 + 1, within y 343 + 343, cross 1 + 1 + 27 + 64
    assert unbiased_mmd2(x, y) == pytest.approx((2 + 686) / 2 - 2 * 93 / 4)


def test_kid_subsets_of_the_whole_sets_all_give_the_same_value():
    x, y = np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]])
    mean, std, size = kernel_inception_distance(x, y, subsets=5, subset_size=1000)
    assert (mean, std, size) == (pytest.approx(297.5), pytest.approx(0.0), 2)


def test_kid_of_identical_distributions_is_near_zero_and_of_shifted_ones_positive():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same, _, _ = kernel_inception_distance(x, y, subsets=10, subset_size=100)
    shifted, _, _ = kernel_inception_distance(x, y + 1.0, subsets=10, subset_size=100)
    assert abs(same) < 0.1 < 1.0 < shifted


def test_inception_score_by_hand():
    # split 1: p = (1/2, 1/2) and (1, 0); marginal (3/4, 1/4); KLs ln(4/3) / 2 and ln(4/3)
    # split 2: two confident, different classes: KLs ln 2 and ln 2
    logits = np.array([[0.0, 0.0], [0.0, -1e4], [0.0, -1e4], [-1e4, 0.0]])
    mean, std = inception_score(logits, splits=2, shuffle=False)
    scores = [(4 / 3) ** 0.75, 2.0]
    assert (mean, std) == (pytest.approx(np.mean(scores)), pytest.approx(np.std(scores)))


def test_inception_score_is_one_when_every_image_gets_the_same_prediction():
    logits = np.tile(np.random.default_rng(0).normal(size=(1, 5)), (10, 1))
    assert inception_score(logits, splits=10)[0] == pytest.approx(1.0)


def test_inception_score_needs_an_image_per_split():
    with pytest.raises(ValueError, match="at least 10 images"):
        inception_score(np.zeros((9, 3)))


def test_precision_and_recall_by_hand():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])  # radii at k = 1: 1, 1, 1, 1, 7
    fake = np.array([[0.5], [5.0], [20.0]])                # radii at k = 1: 4.5, 4.5, 15
    # 0.5 is within 1 of 0; 5 is within 7 of 10; 20 is 10 from 10 (> 7): precision 2/3.
    # Every real point is near a fake one except 10, which 20's radius 15 reaches: recall 1.
    precision, recall = precision_recall(real, fake, k=1)
    assert (precision, recall) == (pytest.approx(2 / 3), 1.0)


def test_a_point_exactly_on_a_radius_counts_as_inside():
    real = np.array([[0.0], [2.0]])   # radii 2, 2 at k = 1
    assert precision_recall(real, np.array([[4.0], [9.0]]), k=1)[0] == 0.5


def test_precision_recall_blocks_do_not_change_the_result():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(50, 4)), rng.normal(size=(40, 4)) + 0.5
    assert precision_recall(real, fake, block=7) == precision_recall(real, fake, block=1024)
