"""Power-law fits: recovery of known parameters inside the bootstrap interval, extrapolation, errors."""

import numpy as np
import pytest

from flexavatar_jax.studies import fits

GRID = np.array([1, 2, 4, 8, 16, 32, 64, 128], np.float64)


def _samples(e, a, alpha, noise, seed, identities=32):
    """Per point [seeds, identities] values: the law plus per-identity noise (2 seeds up to N=32)."""
    rng = np.random.default_rng(seed)
    return [fits.power_law(n, e, a, alpha) + rng.normal(0.0, noise, (2 if n <= 32 else 1, identities)) for n in GRID]


@pytest.mark.parametrize("e,a,alpha", [(0.02, 0.05, 0.6), (3.0, -2.5, 0.4), (0.1, 0.3, 1.2)])
def test_fit_recovers_known_parameters_inside_its_interval(e, a, alpha):
    result = fits.bootstrap_fit(GRID, _samples(e, a, alpha, noise=0.05 * abs(a), seed=3), num_resamples=400)
    assert result["failed_resamples"] == 0
    assert result["alpha_ci"][0] <= alpha <= result["alpha_ci"][1], result
    assert result["e_ci"][0] <= e <= result["e_ci"][1], result
    # The intervals are informative, not the whole parameter range.
    assert result["alpha_ci"][1] - result["alpha_ci"][0] < 0.5 * alpha + 0.2


def test_exact_data_is_fitted_exactly():
    fit = fits.fit_power_law(GRID, fits.power_law(GRID, 0.5, 2.0, 0.7))
    np.testing.assert_allclose([fit.e, fit.a, fit.alpha], [0.5, 2.0, 0.7], rtol=1e-5, atol=1e-7)
    assert fit.rmse < 1e-8


def test_extrapolation_predicts_the_held_out_largest_point():
    samples = _samples(0.02, 0.05, 0.6, noise=0.001, seed=5)
    check = fits.extrapolation_check(GRID, samples, num_resamples=200)
    assert check["held_out_n"] == 128
    assert check["measured_inside_ci"], check
    assert abs(check["error"]) < 0.002


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 3 distinct N"):
        fits.fit_power_law([1, 1, 2], [1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="finite"):
        fits.fit_power_law([1, 2, 4], [1.0, np.nan, 0.5])
    with pytest.raises(ValueError, match="same held-out identities"):
        fits.bootstrap_fit(GRID[:3], [np.zeros((1, 4)), np.zeros((1, 4)), np.zeros((1, 5))])
