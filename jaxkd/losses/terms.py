"""Terms, the named parts of a distillation objective (`jaxkd.losses.objective` sums them).

A term reads the student's and the teachers' outputs (logits, and the features at the module
paths it taps), may own trainable parameters (a projector, a learnable temperature) and
non-trainable state (a memory bank), created from shapes by `init`, and gives one value per
example, or one per batch for a term that relates the examples of a batch (`per_example =
False`). An `Objective` weighs its terms (constants or optax schedules) and adds them per
example; the step reduces once:

  objective = Objective.of(ce=(0.1, CrossEntropy()), kd=(0.9, KD(temperature=4.0)))
  total_B, components, loss_state = objective.apply(
      Context(student, teachers, batch, step=step))
  loss = jnp.mean(total_B)

A term reads everything through one `Context` (the outputs, the batch with its labels and
dataset indices, the step, a key, its own parameters and state, the data axis), so a method
that needs a new input adds a field to `Context`, not an argument to every term and step.

A batch-level term's value is the same for every example of the batch, so the mean adds it
once. Under `pmap`/`shard_map` such a term gathers its inputs over the data axis (`gather`)
and gives every device the loss of the global batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp

# Hyper-parameters (constants or schedules) and their checks; re-exported for the methods.
from jaxkd.losses.hyperparams import (  # noqa: F401
    Hyperparam, describe_value, implied_check, is_constant_zero, non_negative, one_of,
    optional, pick, positive, setting, validated, value_at, whole, within)
from jaxkd.losses.numerics import standardize_logits, upcast
from jaxkd.losses.projectors import conv1x1, conv1x1_init

PyTree = Any
MULTI_TEACHER = ('sum', 'ensemble')

@flax.struct.dataclass
class Outputs:
  """What a model gives the terms: logits `[B, C]` and its features by tapped module path;
  `top1`, a teacher's own top-1 class when its logits are rebuilt (from a top-k cache);
  `variables`, the model's (for terms that read its parameters: OFD's BatchNorm margins,
  SDD's classifier) whenever terms tap its features."""

  logits: jax.Array
  features: dict = flax.struct.field(default_factory=dict)
  top1: jax.Array | None = None
  variables: dict | None = None


@flax.struct.dataclass
class Context:
  """What a term reads at one call. The step builds one for the objective (`params` and
  `state` then hold every term's, by term name); `Objective.apply` gives each term a copy
  with its own `params`, `state` and `key`.

  student: the student's `Outputs` (logits, tapped features, variables when tapped).
  teachers: the teachers' `Outputs` (none for a supervised objective).
  batch: the step's batch (`'image'`, `'label'`, `'index'` (dataset rows), ...).
  step: the training step (a traced int32); `key`: a per-step PRNG key, or None.
  axis_name: the data axis under `pmap`/`shard_map` (None under `jit`).
  """

  student: Outputs
  teachers: Sequence[Outputs] = ()
  batch: dict = flax.struct.field(default_factory=dict)
  step: jax.typing.ArrayLike = 0
  key: jax.Array | None = None
  params: PyTree = flax.struct.field(default_factory=dict)
  state: PyTree = flax.struct.field(default_factory=dict)
  axis_name: str | None = flax.struct.field(pytree_node=False, default=None)

  @property
  def labels(self) -> jax.Array | None:
    """The batch's integer labels `[B]`, if it has them."""
    return self.batch.get('label')

  @property
  def indices(self) -> jax.Array | None:
    """The examples' dataset indices `[B]` (`batch['index']`), if the batch has them."""
    return self.batch.get('index')


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """The global batch of a per-device array under `pmap`/`shard_map` (as is under `jit`).

  Its transpose sums the cotangents of every device's copy, so a loss computed identically
  on each device and averaged by the step's `pmean` gets the single-device gradient."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


@dataclasses.dataclass(frozen=True)
class Paper:
  """A method's paper and the settings it was published with: with the term's field
  defaults, what a named config (`jaxkd.recipes.methods`) and the docs' method table are
  built from. A term states its own, beside a comment saying where each number comes from:

    paper = Paper('Hinton et al. 2015, Distilling the Knowledge in a Neural Network',
                  'https://arxiv.org/abs/1503.02531', weight=0.9, ce_weight=0.1)

  citation: a short citation; url: the paper's address.
  weight, ce_weight: the paper's weight of the term and of the cross-entropy beside it.
  epochs: its settings counted in epochs (`{'warmup': 20.0}` for a `warmup_steps` field).
  """

  citation: str = ''
  url: str = ''
  weight: float = 1.0
  ce_weight: float = 1.0
  epochs: dict[str, float] = dataclasses.field(default_factory=dict, hash=False)


# --- the term protocol ---------------------------------------------------------------------------

class Term:
  """A part of an objective. Subclasses are frozen dataclasses of their hyper-parameters.

  Each field's check runs when the term is built: the one it declares
(`hyperparams.setting`), else the one its name implies (`hyperparams.implied_check`).

  Class attributes (or properties) say what a term is, reads and owns:
    family: its kind ('classic', 'logit', 'feature', 'relation', 'contrastive',
      'multiscale'); a base class gives one.
    paper: its `Paper` (citation, address, and the settings a named config is built from).
    student_taps, teacher_taps: module paths whose outputs it reads ('' = logits only).
    per_example: False for a term that relates the examples of a batch (one value per batch).
    batch_statistics: True for a per-example term whose projector normalises with the batch's
      statistics (train-mode BatchNorm): every example's value depends on the whole batch, so
      a NaN in one example reaches them all.
    needs_teacher, needs_labels: which inputs it reads; needs_index: the examples' dataset
      indices (`batch['index']`, e.g. for a memory bank).
    owns_params, owns_state: whether `init` creates trainable parameters / state.
    from_run: settings a recipe fills from the run when the spec leaves them out (e.g.
      `num_data`, the training split's size; `label_smoothing`, the run's).
  """

  name = ''  # its key in `jaxkd.losses.LOSSES`
  family = ''
  paper: Paper = Paper()
  from_run: tuple[str, ...] = ()
  student_taps: tuple[str, ...] = ()
  teacher_taps: tuple[str, ...] = ()
  per_example = True
  batch_statistics = False
  needs_teacher = True
  needs_labels = False
  needs_index = False
  owns_params = False
  owns_state = False

  def __post_init__(self):
    for field in dataclasses.fields(self):
      check = field.metadata.get('check') or implied_check(field.name)
      if check is not None:
        check(f'{self.name} {field.name}', getattr(self, field.name))

  def init(self, key: jax.Array, student: Outputs,
           teachers: Sequence[Outputs]) -> tuple[PyTree, PyTree]:
    """`(params, state)` from shapes: `student`/`teachers` hold `jax.ShapeDtypeStruct`s."""
    del key, student, teachers
    return {}, {}

  def hyperparams(self, step, params: PyTree = None) -> dict[str, jax.Array]:
    """Current values worth logging (a scheduled or learned temperature), float32 scalars;
    `params` are the term's own (None when the caller has none to give)."""
    del step, params
    return {}

  def describe(self) -> dict:
    """What the term is, as JSON (stored with checkpoints; a resume compares it)."""
    fields = {f.name: describe_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
    return {'loss': self.name, **fields}

  def __call__(self, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array], PyTree]:
    """`(value [B] or scalar, parts {prefix: [B]}, new_state)` from the term's context."""
    raise NotImplementedError


class OneTap:
  """For a term with fields `student_tap` and `teacher_tap` (one module path each): the taps
  it reads. Put it before `Term` in the bases."""

  @property
  def student_taps(self) -> tuple[str, ...]:
    return (self.student_tap,)

  @property
  def teacher_taps(self) -> tuple[str, ...]:
    return (self.teacher_tap,)


@dataclasses.dataclass(frozen=True)
class LogitTerm(Term):
  """A term over student and teacher logits, one value per example, with the options every
  logit term has: `temperature` (constant or schedule), several teachers (`multi_teacher`
  'sum' of per-teacher losses or 'ensemble' of their softened distributions is the KD term's;
  the others sum with `teacher_weights`), and logit standardisation (Sun et al. 2024).

  `teacher_weights` and `standardize` are keyword-only, so a subclass's own fields keep their
  positions."""

  teacher_weights: tuple[float, ...] | None = dataclasses.field(default=None, kw_only=True)
  standardize: bool = dataclasses.field(default=False, kw_only=True)

  family = 'logit'

  def per_teacher(self, student_logits: jax.Array, teacher_logits: jax.Array,
                  labels: jax.Array | None, temperature: jax.Array) -> jax.Array:
    raise NotImplementedError

  @property
  def _temperature(self) -> Hyperparam | None:
    return getattr(self, 'temperature', None)

  def hyperparams(self, step, params=None) -> dict[str, jax.Array]:
    del params
    t = self._temperature
    return {} if t is None else {'temperature': value_at(t, step)}

  def _prepare(self, logits: jax.Array) -> jax.Array:
    logits = upcast(logits)
    return standardize_logits(logits) if self.standardize else logits

  def temperature_value(self, step, params) -> jax.Array | None:
    """The temperature at `step` (a learned one reads the term's `params`)."""
    del params
    t = self._temperature
    return None if t is None else value_at(t, step)

  def __call__(self, ctx):
    """Each teacher's loss, combined with `teacher_weights`; a batch-level term (`per_example
    = False`) sees the global batch's logits."""
    temperature = self.temperature_value(ctx.step, ctx.params)
    axis_name = None if self.per_example else ctx.axis_name
    prepare = lambda logits: gather(self._prepare(logits), axis_name)  # noqa: E731
    student_logits = prepare(ctx.student.logits)
    per_teacher = [self.per_teacher(student_logits, prepare(teacher.logits), ctx.labels,
                                    temperature) for teacher in ctx.teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)


def combine_teachers(weights: tuple[float, ...] | None,
                     per_teacher: Sequence[jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`(sum_i w_i * loss_i, {'teacher<i>': loss_i})` over the teachers (parts only for several),
  with normalised `weights` (equal when None)."""
  count = len(per_teacher)
  if weights is None:
    weights = (1.0 / count,) * count
  if len(weights) != count:
    raise ValueError(f'teacher_weights has {len(weights)} entries but {count} teacher_logits '
                     'were given; pass one weight per teacher.')
  value = sum(w * part for w, part in zip(weights, per_teacher))
  return value, ({f'teacher{i}': part for i, part in enumerate(per_teacher)} if count > 1 else {})


# --- shared shapes of terms (each method subclasses one) -----------------------------------------

@dataclasses.dataclass(frozen=True)
class RelationTerm(OneTap, Term):
  """A batch-level term over one student tap and one teacher tap (flattened per example),
  computed on the global batch under every parallel mode (the features are gathered over the
  data axis)."""

  student_tap: str = 'pool2'
  teacher_tap: str = 'pool2'
  teacher_weights: tuple[float, ...] | None = None

  family = 'relation'
  per_example = False

  def relation(self, student: jax.Array, teacher: jax.Array) -> jax.Array:
    raise NotImplementedError

  def __call__(self, ctx):
    features = gather(ctx.student.features[self.student_tap].astype(jnp.float32), ctx.axis_name)
    per_teacher = [self.relation(features, gather(
        t.features[self.teacher_tap].astype(jnp.float32), ctx.axis_name)) for t in ctx.teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)


@dataclasses.dataclass(frozen=True)
class PairedMaps(Term):
  """Pairs `student_taps[i]` with `teacher_taps[i]`; NHWC maps; several teachers summed with
  `teacher_weights`. Trainable projectors live in the term's parameters beside the student's,
  never inside them."""

  student_taps: tuple[str, ...] = ('pool1', 'pool2')
  teacher_taps: tuple[str, ...] = ('pool1', 'pool2')
  teacher_weights: tuple[float, ...] | None = None

  family = 'feature'

  def __post_init__(self):
    super().__post_init__()
    if len(self.student_taps) != len(self.teacher_taps) or not self.student_taps:
      raise ValueError(f'{self.name} pairs student_taps with teacher_taps one to one, got '
                       f'{list(self.student_taps)} and {list(self.teacher_taps)}.')

  def maps(self, outputs, taps) -> list[jax.Array]:
    found = [outputs.features[tap].astype(jnp.float32) for tap in taps]
    for tap, x in zip(taps, found):
      if x.ndim != 4:
        raise ValueError(f'{self.name} reads NHWC feature maps; the output at {tap!r} has shape '
                         f'{x.shape}. Tap a convolutional stage.')
    return found

  def pair_loss(self, student: list, teacher: list, params, teacher_outputs, axis_name):
    raise NotImplementedError

  def __call__(self, ctx):
    ours = self.maps(ctx.student, self.student_taps)
    per_teacher = [self.pair_loss(ours, self.maps(t, self.teacher_taps), ctx.params, t,
                                  ctx.axis_name) for t in ctx.teachers]
    return (*combine_teachers(self.teacher_weights, per_teacher), ctx.state)


@dataclasses.dataclass(frozen=True)
class ProjectedMaps(PairedMaps):
  """A map term whose student maps go through a trainable 1x1 convolution onto the teacher's
  channels; one projector per tap pair. Spatial sizes are the term's to match (or not: a
  Gram or FSP matrix compares maps of any size)."""

  owns_params = True

  def init(self, key, student, teachers):
    if not teachers:
      raise ValueError(f'{self.name} needs a teacher to size its projectors.')
    params = {}
    for i, (s_tap, t_tap) in enumerate(zip(self.student_taps, self.teacher_taps)):
      c_in = student.features[s_tap].shape[-1]
      c_out = teachers[0].features[t_tap].shape[-1]
      params[f'pair{i}'] = self.init_pair(jax.random.fold_in(key, i), c_in, c_out)
    return params, {}

  def init_pair(self, key, c_in: int, c_out: int) -> dict:
    return conv1x1_init(key, c_in, c_out)

  def projected(self, student, params) -> list[jax.Array]:
    """Each student map through its pair's 1x1 convolution (no pooling)."""
    return [conv1x1(s, params[f'pair{i}']) for i, s in enumerate(student)]


def conv_batch_norm_init(key, c_in: int, c_out: int) -> dict:
  """A bias-free 1x1 convolution followed by a BatchNorm (scale 1, bias 0): the projector
  of OFD's connector and ICKD's embedding (`projectors.conv1x1_batch_norm`)."""
  return {'conv': conv1x1_init(key, c_in, c_out, bias=False),
          'bn_scale': jnp.ones((c_out,), jnp.float32),
          'bn_bias': jnp.zeros((c_out,), jnp.float32)}
