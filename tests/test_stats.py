"""Seed statistics (jaxkd.tables.stats) against textbook values."""
import numpy as np
import pytest

from jaxkd.tables import stats


def _differences_with_t(t, n):
  """n paired differences (control 0) whose paired t statistic is `t`."""
  spread = np.arange(n) - (n - 1) / 2
  spread /= spread.std(ddof=1)  # sample std 1, so t = sqrt(n) * mean
  return spread + t / np.sqrt(n), np.zeros(n)


@pytest.mark.parametrize('t, df, p', [
    # Critical values from standard t tables: P(T > t) for df degrees of freedom.
    (2.132, 4, 0.05), (2.776, 4, 0.025), (2.228, 10, 0.025), (3.169, 10, 0.005),
    (-2.132, 4, 0.95),
    (1.0, 1, 0.25),  # Cauchy: 1/2 - atan(1)/pi
    (0.0, 7, 0.5),
])
def test_paired_t_matches_tables(t, df, p):
  result = stats.paired_test(*_differences_with_t(t, df + 1))
  assert result['t'] == pytest.approx(t)
  assert result['p_value'] == pytest.approx(p, abs=2e-4)


def test_paired_test():
  result = stats.paired_test([0.90, 0.91, 0.92, 0.90, 0.915], [0.89, 0.905, 0.91, 0.899, 0.90])
  diff = np.array([0.01, 0.005, 0.01, 0.001, 0.015])
  t = diff.mean() / (diff.std(ddof=1) / np.sqrt(5))
  assert t == pytest.approx(3.4226138716)
  assert result['n'] == 5
  assert result['t'] == pytest.approx(t)
  assert result['mean_difference'] == pytest.approx(diff.mean())
  # P(T_4 > 3.4226) = 0.013358000412 (I_x(2, 1/2)/2 at x = 4 / (4 + t^2), in closed form).
  x = 4 / (4 + t * t)
  assert result['p_value'] == pytest.approx((1 - np.sqrt(1 - x) * (1 + x / 2)) / 2, rel=1e-12)
  assert result['p_value_sign_flip'] == pytest.approx(1 / 32)  # all five differences > 0
  assert stats.mean_std([1.0, 3.0]) == pytest.approx((2.0, np.sqrt(2)))


def test_sign_flip_ties():
  # Differences 1, 0, 1, 0: only the 4 of 16 patterns keeping both ones positive reach 1/2.
  assert stats.paired_test([1, 2, 3, 4], [0, 2, 2, 4])['p_value_sign_flip'] == 0.25
  # Differences -1, 5, -4, -1 points (sum -1): 8 patterns with +5 and 3 with -5 (sums 1, -1,
  # -1) reach -1: 11/16. Two of the ties are exact only up to floating-point rounding.
  result = stats.paired_test([0.85, 0.91, 0.81, 0.81], [0.86, 0.86, 0.85, 0.82])
  assert result['p_value_sign_flip'] == 11 / 16


def test_paired_test_edge_cases():
  for treatment, control in (([], []), ([1.0], [0.0])):
    result = stats.paired_test(treatment, control)
    assert result['n'] == len(treatment)
    assert np.isnan([result['t'], result['p_value'], result['p_value_sign_flip']]).all()
  better = stats.paired_test([1.0, 2.0, 3.0], [0.5, 1.5, 2.5])  # constant difference
  assert (better['t'], better['p_value'], better['p_value_sign_flip']) == (np.inf, 0.0, 1 / 8)
  worse = stats.paired_test([0.5, 1.5, 2.5], [1.0, 2.0, 3.0])
  assert (worse['t'], worse['p_value'], worse['p_value_sign_flip']) == (-np.inf, 1.0, 1.0)
  same = stats.paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])  # identical: nothing shown
  assert np.isnan(same['t']) and (same['p_value'], same['p_value_sign_flip']) == (1.0, 1.0)


def test_holm_matches_hand_computed_values():
  # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max 0.06
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
  # capped at 1, and monotone: 0.5 x 2 = 1.0, then 0.6 x 1 = 0.6 -> 1.0
  assert stats.holm([0.6, 0.5]) == [1.0, 1.0]
  # a test that could not run (nan) stays nan and is not counted: m = 2
  adjusted = stats.holm([0.02, float('nan'), 0.01])
  assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02)
  assert adjusted[2] == pytest.approx(0.02)
  assert stats.holm([0.03]) == [0.03] and stats.holm([]) == []


def test_holm_is_not_benjamini_hochberg():
  """SciPy's false_discovery_control is BH, which adjusts less: not a substitute."""
  import scipy.stats
  p = [0.01, 0.02, 0.03]
  assert stats.holm(p) == pytest.approx([0.03, 0.04, 0.04])
  assert scipy.stats.false_discovery_control(p) == pytest.approx([0.03, 0.03, 0.03])
