"""Tests of jaxkd.losses.methods.sp against independent NumPy float64 references."""
import numpy as np

from jaxkd.losses import sp_loss
from relation_refs import jit


def test_sp_hand_made():
  # Orthogonal student rows: normalised G_s = I. Teacher rows all equal: every entry 1/sqrt(2).
  student = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
  teacher = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
  h = 1 / np.sqrt(2)
  want = (2 * (1 - h)**2 + 2 * h**2) / 4
  np.testing.assert_allclose(jit(sp_loss)(student, teacher), want, rtol=1e-6)
