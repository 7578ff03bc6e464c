"""Neural selectivity transfer (Huang & Wang 2017): squared MMD between the channels'
spatial activation patterns."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxkd.losses.numerics import PRECISION, normalize
from jaxkd.losses.pooling import pooled_pair
from jaxkd.losses.terms import PairedMaps, Paper


def nst_loss(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
) -> jax.Array:
  r"""Neural selectivity transfer: squared MMD between the channels' spatial patterns.

  .. math::
    \ell_b = \frac{1}{C_t^2} \sum_{i,j} k(t_i, t_j) + \frac{1}{C_s^2} \sum_{i,j} k(s_i, s_j)
      - \frac{2}{C_s C_t} \sum_{i,j} k(s_i, t_j),\qquad k(x, y) = (x^\top y)^2

  where ``s_i`` (``t_j``) is channel ``i`` (``j``) of example ``b``'s student (teacher)
  feature map, flattened over space and L2-normalised (``F.normalize``): each channel's
  pattern of where it fires is a sample, and the loss is the squared maximum mean
  discrepancy between the two sets of samples under the polynomial kernel of degree 2
  with ``c = 0`` (one of the paper's kernels, the one RepDistiller's ``NSTLoss`` uses).
  The channel counts may differ. RepDistiller takes the mean of each kernel matrix over
  the whole batch, so its value is the batch mean of this loss; it detaches the
  teacher-only term, which carries no gradient to the student anyway. RepDistiller
  weighs it by 50 on each of the intermediate feature maps and sums over them. When the
  spatial sizes differ, the larger map is average-pooled to the smaller first, as
  RepDistiller does (it assumes square maps and uses adaptive pooling); here each
  spatial axis is pooled separately and must differ by a whole factor. 0 for identical
  features.

  Args:
    student_features: ``[B, H, W, C_s]`` student features (NHWC; any float dtype,
      computed in >= float32).
    teacher_features: ``[B, H', W', C_t]`` teacher features, ``H'`` and ``H`` whole
      multiples of each other (likewise ``W``). Gradients flow into them too; wrap them
      in ``jax.lax.stop_gradient`` if the teacher must not be trained.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Huang & Wang, `Like What You Like: Knowledge Distill via Neuron Selectivity Transfer
    <https://arxiv.org/abs/1707.01219>`_, 2017.
  """
  student, teacher = pooled_pair(student_features, teacher_features, 'student_features',
                                  'teacher_features')
  student = normalize(student, axis=1)
  teacher = normalize(teacher, axis=1)

  def kernel_mean(a, b):
    products = jnp.einsum('bsi,bsj->bij', a, b, precision=PRECISION)
    return jnp.mean(products * products, axis=(1, 2))

  return (kernel_mean(teacher, teacher) + kernel_mean(student, student) -
          2.0 * kernel_mean(student, teacher))


@dataclasses.dataclass(frozen=True)
class NST(PairedMaps):
  """Neural selectivity transfer (Huang & Wang 2017, `nst_loss`): squared MMD with a
  degree-2 polynomial kernel between the channels' normalised spatial activations, summed
  over the tap pairs. No parameters; channel counts may differ."""

  name = 'nst'
  # RepDistiller: weight 50, the intermediate maps.
  paper = Paper('Huang & Wang 2017, Like What You Like: Knowledge Distill via Neuron Selectivity '
                'Transfer',
                'https://arxiv.org/abs/1707.01219', weight=50.0, ce_weight=1.0)

  def pair_loss(self, student, teacher, params, teacher_outputs, axis_name):
    return sum(nst_loss(s, t) for s, t in zip(student, teacher))
