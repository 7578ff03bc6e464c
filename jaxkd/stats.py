"""Small statistics for seed tables: mean/std and paired tests, no SciPy needed."""
from __future__ import annotations

import itertools
import math

import numpy as np


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
  values = np.asarray(values, np.float64)
  std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return float(values.mean()), std


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz)."""
  tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  result = d
  for m in range(1, 300):
    for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + numerator * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + numerator / c
      c = c if abs(c) > tiny else tiny
      result *= c * d
    if abs(c * d - 1.0) < 1e-15:
      break
  return result


def betainc(a: float, b: float, x: float) -> float:
  """The regularised incomplete beta function I_x(a, b)."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) +
               b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: int) -> float:
  """P(T > t) for Student's t distribution with `df` degrees of freedom."""
  tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
  return tail if t >= 0 else 1.0 - tail


def paired_test(treatment, control) -> dict:
  """One-sided paired tests of mean(treatment - control) > 0 across seeds.

  Returns the mean difference, the paired t statistic with its p-value, and the exact
  sign-flip permutation p-value (2^n sign patterns; no normality assumption).
  """
  diff = np.asarray(treatment, np.float64) - np.asarray(control, np.float64)
  n = len(diff)
  result = {'n': n, 'mean_difference': float(diff.mean()) if n else float('nan')}
  if n < 2:
    return {**result, 't': float('nan'), 'p_value': float('nan'),
            'p_value_sign_flip': float('nan')}
  std = diff.std(ddof=1)
  t = float(diff.mean() / (std / math.sqrt(n))) if std > 0 else math.copysign(math.inf, diff.mean())
  p = t_sf(t, n - 1) if math.isfinite(t) else (0.0 if t > 0 else 1.0)
  observed = diff.mean()
  flips = [np.mean(diff * np.array(signs))
           for signs in itertools.product((1.0, -1.0), repeat=n)]
  p_flip = float(np.mean([f >= observed - 1e-12 for f in flips]))
  return {**result, 't': t, 'p_value': p, 'p_value_sign_flip': p_flip}
