"""Small statistics for seed tables: mean/std and one-sided paired tests."""
from __future__ import annotations

import itertools
import math

import numpy as np


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return float(values.mean()), std


def paired_test(treatment, control) -> dict:
  """One-sided paired tests of mean(treatment - control) > 0 across seeds.

  Returns the mean difference, the paired t statistic with its p-value (SciPy's `ttest_rel`),
  and the exact sign-flip permutation p-value (2^n sign patterns; no normality assumption).
  """
  treatment, control = np.asarray(treatment, np.float64), np.asarray(control, np.float64)
  diff = treatment - control
  n = len(diff)
  result = {'n': n, 'mean_difference': float(diff.mean()) if n else float('nan')}
  if n < 2:
    return {**result, 't': float('nan'), 'p_value': float('nan'),
            'p_value_sign_flip': float('nan')}
  if diff.std(ddof=1) > 0:
    import scipy.stats  # here: importing it takes seconds, and only the tables need it
    test = scipy.stats.ttest_rel(treatment, control, alternative='greater')
    t, p = float(test.statistic), float(test.pvalue)
  elif diff.mean() == 0:  # identical results: no evidence either way (SciPy gives nan)
    t, p = float('nan'), 1.0
  else:  # constant differences (SciPy warns): as far as the data can show
    t = math.copysign(math.inf, diff.mean())
    p = 0.0 if t > 0 else 1.0
  # Not scipy.stats.permutation_test: its tie tolerance is relative to the observed mean, and
  # misses sign patterns that tie with it only up to rounding (accuracies are multiples of 1e-4).
  observed = diff.mean()
  flips = [np.mean(diff * np.array(signs))
           for signs in itertools.product((1.0, -1.0), repeat=n)]
  p_flip = float(np.mean([f >= observed - 1e-12 for f in flips]))
  return {**result, 't': t, 'p_value': p, 'p_value_sign_flip': p_flip}


def holm(p_values) -> list[float]:
  """Holm's step-down adjustment of `p_values` for their number (family-wise error rate).

  With the m p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted
  p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)); reject where the adjusted p <= alpha.
  Holm 1979, "A simple sequentially rejective multiple test procedure". NaNs (tests that
  could not run) stay NaN and do not count in m. (SciPy's `false_discovery_control` is
  Benjamini-Hochberg, which controls another error rate.)
  """
  p = np.asarray(p_values, np.float64)
  adjusted = np.full(p.shape, np.nan)
  present = np.flatnonzero(~np.isnan(p))
  m = len(present)
  running = 0.0
  for rank, index in enumerate(present[np.argsort(p[present], kind='stable')]):
    running = max(running, min(1.0, (m - rank) * p[index]))
    adjusted[index] = running
  return adjusted.tolist()
