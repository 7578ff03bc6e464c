"""Scale decoupled distillation (Wei et al. 2024): KD on the logits of multi-scale pooled cells."""
from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxkd import paths
from jaxkd.losses.methods.kd import kd_loss
from jaxkd.losses.numerics import check_static_non_negative, check_static_temperature, upcast
from jaxkd.losses.pooling import adaptive_avg_pool
from jaxkd.losses.terms import OneTap, Paper, Term, combine_teachers


# The authors' default scales (``--M [1,2,4]``): global cell first, then 2x2, then 4x4.
_SDD_SCALES = (1, 2, 4)


# The authors' SPP pools the map to this grid first and every scale from it.
_SPP_GRID = 4


def _check_scales(scales) -> tuple[int, ...]:
  scales = tuple(scales)
  if (not scales or len(set(scales)) != len(scales) or not all(
      isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in scales)):
    raise ValueError(
        f'scales must be a non-empty sequence of distinct positive Python ints, got '
        f'{scales!r}; the authors use {_SDD_SCALES}.')
  return scales


def multiscale_pooled_features(
    features: jax.typing.ArrayLike,
    *,
    scales: Sequence[int] = _SDD_SCALES,
) -> jax.Array:
  r"""SDD's multi-scale pooled features: every cell of an ``s x s`` grid, for each scale.

  .. math::
    g^{(S)} = P_{S}(f),\qquad
    g^{(s)} = P_{s}\!\left(g^{(S)}\right),\qquad S = \max(4,\ \max_k s_k)

  with ``P_s`` adaptive average pooling to ``s x s`` (as ``nn.AdaptiveAvgPool2d``). The
  cells are concatenated scale by scale in the order of ``scales``, each grid row-major
  (``i * s + j``), giving ``N = sum_k s_k**2`` cells: with the authors' ``(1, 2, 4)``, cell
  0 is the global average, cells 1-4 the 2x2 grid, cells 5-20 the 4x4 grid. Applying the
  model's classifier (the final linear layer) to each cell gives the local logits of
  :func:`sdd_loss`; the cell with scale 1 must come first there.

  As in the authors' SPP module, the map is pooled to a 4x4 grid first and every scale
  from that grid, whichever of their scale sets (``[1,2,4]``, ``[1,2]``, ``[1]``) is used;
  scales above 4 (not in their code) take the 4x4's role. With whole factors (CIFAR's 8x8
  maps) every cell is a plain block mean and the global cell is the usual global average
  pool; with ImageNet's 7x7 maps the 4x4 windows overlap, so the cells differ from pooling
  the 7x7 map directly and the global cell is the mean of the 16 cells, not of the 49
  positions.

  Args:
    features: ``[B, H, W, C]`` final feature map (NHWC, before the global pooling; any
      float dtype, computed in >= float32).
    scales: grid sizes, distinct positive ints; the authors' ``(1, 2, 4)``.

  Returns:
    ``[B, N, C]`` float32 (float64 for float64 inputs) pooled cell features.

  References:
    Wei et al., `Scale Decoupled Distillation <https://arxiv.org/abs/2403.13512>`_,
    CVPR 2024.
  """
  scales = _check_scales(scales)
  features = upcast(features)
  if features.ndim != 4:
    raise ValueError(f'features must be [batch, height, width, channels] (NHWC), got shape '
                     f'{features.shape}.')
  finest = max(_SPP_GRID, *scales)
  base = adaptive_avg_pool(features, finest, finest)
  cells = []
  for scale in scales:
    pooled = adaptive_avg_pool(base, scale, scale)
    cells.append(pooled.reshape(pooled.shape[0], scale * scale, pooled.shape[-1]))
  return jnp.concatenate(cells, axis=1)


def sdd_loss(
    student_local_logits: jax.typing.ArrayLike,
    teacher_local_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    temperature: jax.typing.ArrayLike,
    complementary_weight: jax.typing.ArrayLike,
) -> jax.Array:
  r"""SD-KD: KD on every multi-scale cell, complementary cells weighted up, per example.

  .. math::
    \ell_b = \frac{1}{N} \sum_{n=0}^{N-1} w_{b,n}\, T^2\,
      \mathrm{KL}\!\left(\mathrm{softmax}(z^t_{b,n} / T)\ \middle\|\
      \mathrm{softmax}(z^s_{b,n} / T)\right),\quad
    w_{b,n} = \begin{cases}
      \beta & [\hat y^t_{b,n} = y_b] \ne [\hat y^t_{b,0} = y_b] \\
      1 & \text{otherwise}
    \end{cases}

  with ``z_{b,n}`` the logits of cell ``n`` (cell 0 the global one), ``\hat y^t_{b,n}`` the
  teacher's arg-max class in cell ``n`` and ``\beta`` the ``complementary_weight``. A cell is
  *consistent* when the teacher's local prediction is right exactly when its global one is
  (both right or both wrong; the global cell always is) and *complementary* otherwise
  (global right and local wrong, or global wrong and local right); the paper writes
  ``L_SDD = D_con + beta D_com``. This is ``sdd_kd_loss`` of the authors' ``KD.py``, which
  hard-codes ``beta = 2`` (also in their SD-DKD and SD-NKD, on CIFAR-100, CUB-200 and
  ImageNet) and divides the weighted sum over all cells and examples by ``N * B``: the
  batch mean of this loss. Their defaults (mdistiller's KD config, unchanged in their SD-KD
  configs) are ``T = 4``, weight 0.9 on this loss and 0.1 on cross-entropy, scales
  ``(1, 2, 4)`` (``--M [1,2,4]``, ``N = 21``). With only the global cell (``N = 1``) this is
  :func:`jaxkd.losses.kd_loss`, which they use for ``--M [1]``. Like their code (which
  zeroes NaN entries), classes the teacher gives probability 0 contribute 0.

  Args:
    student_local_logits: ``[B, N, K]`` student logits of the ``N`` cells of
      :func:`multiscale_pooled_features` (the classifier applied to each cell; any float
      dtype, computed in >= float32), cell 0 the global one.
    teacher_local_logits: ``[B, N, K]`` teacher logits of the same cells. Gradients flow
      into them through the KL (not through the arg-max); wrap them in
      ``jax.lax.stop_gradient`` if the teacher must not be trained.
    labels: ``[B]`` integer ground-truth classes.
    temperature: softmax temperature ``T > 0`` (Python float or scalar array).
    complementary_weight: ``beta >= 0``, the weight of complementary cells; the authors' 2.

  Returns:
    ``[B]`` float32 (float64 for float64 inputs) loss per example.

  References:
    Wei et al., `Scale Decoupled Distillation <https://arxiv.org/abs/2403.13512>`_,
    CVPR 2024.
  """
  check_static_temperature(temperature)
  check_static_non_negative(complementary_weight, 'complementary_weight')
  student_local_logits = upcast(student_local_logits)
  teacher_local_logits = upcast(teacher_local_logits)
  labels = jnp.asarray(labels)
  if student_local_logits.shape != teacher_local_logits.shape:
    raise ValueError(
        f'student_local_logits shape {student_local_logits.shape} and teacher_local_logits '
        f'shape {teacher_local_logits.shape} differ; both must be [batch, cells, classes].')
  if student_local_logits.ndim != 3:
    raise ValueError(
        f'student_local_logits must be [batch, cells, classes], got shape '
        f'{student_local_logits.shape}.')
  if labels.shape != student_local_logits.shape[:1]:
    raise ValueError(
        f'labels shape {labels.shape} must be {student_local_logits.shape[:1]}: one class '
        'index per example.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integer class indices, got dtype {labels.dtype}.')
  per_cell = kd_loss(student_local_logits, teacher_local_logits, temperature=temperature)
  correct = jnp.argmax(teacher_local_logits, axis=-1) == labels[:, None]
  complementary = correct != correct[:, :1]
  weight = jnp.where(complementary, jnp.asarray(complementary_weight, per_cell.dtype), 1.0)
  return jnp.mean(weight * per_cell, axis=-1)


def _classify(outputs, tap: str, head: str, scales, who: str) -> jax.Array:
  """The model's linear classifier (`head/kernel`, `head/bias`) on every cell: `[B, N, K]`."""
  cells = multiscale_pooled_features(outputs.features[tap].astype(jnp.float32), scales=scales)
  flat = paths.flatten((outputs.variables or {}).get('params', {}))
  kernel, bias = flat.get(f'{head}/kernel'), flat.get(f'{head}/bias')
  if kernel is None or kernel.shape[0] != cells.shape[-1]:
    raise ValueError(
        f'sdd applies the {who}\'s classifier {head!r} to pooled cells of {tap!r} '
        f'({cells.shape[-1]} channels), but its kernel is '
        f'{None if kernel is None else kernel.shape}: SDD needs a model whose classifier '
        'reads the global average of that map (ResNet/WRN: the last stage).')
  return jnp.einsum('bnc,ck->bnk', cells, kernel.astype(jnp.float32)) + bias


@dataclasses.dataclass(frozen=True)
class SDD(OneTap, Term):
  """Scale decoupled distillation (Wei et al. 2024, `sdd_loss`): the last stage's map pooled
  into cells at `scales` (1, 2, 4: the global average, a 2x2 and a 4x4 grid), each cell
  classified by the model's own classifier (`head`; the student's trained through it), KD at
  `temperature` on every cell, cells where the teacher's local prediction disagrees in
  correctness with its global one weighted by `complementary_weight`. Needs a classifier on
  the global average of the tapped map (ResNet, WRN), labels and a live teacher."""

  student_tap: str = 'stage3'
  teacher_tap: str = 'stage3'
  temperature: float = 4.0
  complementary_weight: float = 2.0
  scales: tuple[int, ...] = (1, 2, 4)
  head: str = 'head'
  teacher_weights: tuple[float, ...] | None = None

  name = 'sdd'
  family = 'multiscale'
  # SD-KD with mdistiller's KD settings: T 4, weight 0.9, CE 0.1, scales 1, 2, 4,
  # complementary cells x 2.
  paper = Paper('Wei et al. 2024, Scale Decoupled Distillation', 'https://arxiv.org/abs/2403.13512',
                weight=0.9, ce_weight=0.1)
  needs_labels = True

  def __post_init__(self):
    super().__post_init__()
    if not self.scales or self.scales[0] != 1:
      raise ValueError(f'sdd scales must start with 1 (the global cell), got {self.scales}.')

  def hyperparams(self, step, params=None):
    del step, params
    return {'temperature': jnp.asarray(self.temperature, jnp.float32)}

  def __call__(self, ctx):
    local = _classify(ctx.student, self.student_tap, self.head, self.scales, 'student')
    per_teacher = [sdd_loss(local, _classify(t, self.teacher_tap, self.head, self.scales,
                                             'teacher'), ctx.labels,
                            temperature=self.temperature,
                            complementary_weight=self.complementary_weight) for t in ctx.teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)
